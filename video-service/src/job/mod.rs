//! One video job, from the token in the environment to the process's exit code.
//!
//! Claim the job; check the request against the pipeline and check that ffmpeg and the
//! audio are there *before* any model work; run the stages, each recording what it holds
//! on the GPU and reporting to the supervisor (whose reply may cancel the job); mux; write
//! the metadata; say Complete. Any error after the claim is reported with Fail.
//!
//! [`run`] takes those steps in order, one module each: `claim` (the runtime and the
//! claim), [`prepare`] (every check that needs no model, then the device), [`render`] (the
//! pipeline, with `report` turning its progress into reports), [`output`] (the video and
//! the metadata) and [`outcome`] (the last word to the supervisor, and the exit code).
//! [`error`], [`inputs`] and [`device`] serve them; `generate` ([`crate::local`]) runs the
//! same steps without a supervisor.

mod claim;
pub mod device;
pub mod error;
pub mod inputs;
pub mod outcome;
pub mod output;
pub mod prepare;
pub mod render;
mod report;

use std::path::Path;
use std::time::{Duration, Instant};

use arbiter::pb::worker::v1::Assignment;
use arbiter::pipeline::Stage;
use tokio::runtime::Runtime;

use crate::metadata::{Prestart, ms};
use crate::pipeline::preloaded::Preloaded;
use crate::pipeline::staged::Session;
use crate::progress::Progress;
use crate::residency::Estimates;
use crate::worker::{Job, Supervisor};
use device::DeviceStart;
use error::JobError;
use outcome::{Done, Outcome};
use output::{write_metadata, write_output};
use prepare::prepare;
use render::render;
use report::Reporter;

/// Runs the job that `token` stands for, with the supervisor at `socket`.
pub fn run(socket: &Path, token: String) -> Outcome {
    let started = Instant::now();
    run_from(socket, token, Start::spawned(started))
}

/// Runs the job handed to a standby worker (`crate::standby`): as [`run`], but with its
/// pipeline's code already read (`preloaded`, which took `preload_ms`) and its CUDA context
/// starting on a thread of its own from now, beside the claim and the inputs.
pub fn run_prestarted(
    socket: &Path,
    token: String,
    preloaded: Preloaded,
    preload_ms: f64,
) -> Outcome {
    let started = Instant::now();
    let start = Start {
        device: DeviceStart::early(started),
        preloaded: Some((preloaded, preload_ms)),
        ..Start::spawned(started)
    };
    run_from(socket, token, start)
}

/// How the process came to its job: when the job started here, how long after its spawn
/// (or handoff), how its device is started, and what was read ahead.
struct Start {
    started: Instant,
    spawned: Option<Duration>,
    device: DeviceStart,
    preloaded: Option<(Preloaded, f64)>,
}

impl Start {
    /// A worker spawned for its job, which starts now.
    fn spawned(started: Instant) -> Start {
        Start {
            started,
            spawned: arbiter::spawn::since_spawn(),
            device: DeviceStart::Now,
            preloaded: None,
        }
    }
}

fn run_from(socket: &Path, token: String, start: Start) -> Outcome {
    let Some(runtime) = claim::runtime() else {
        return Outcome::Unclaimed;
    };
    let Some((supervisor, assignment)) = claim::claim(&runtime, socket, token) else {
        return Outcome::Unclaimed;
    };
    let span = tracing::info_span!("job", id = %assignment.job_id, attempt = assignment.attempt);
    let _entered = span.enter();
    tracing::info!(pipeline = %assignment.pipeline, prestarted = start.preloaded.is_some(), "claimed");

    let result = execute(&runtime, &supervisor, assignment, start);
    outcome::end(&runtime, &supervisor, result)
}

/// The claimed job, from its assignment to its files.
fn execute(
    runtime: &Runtime,
    supervisor: &Supervisor,
    assignment: Assignment,
    start: Start,
) -> Result<Done, JobError> {
    let Start {
        started,
        spawned,
        device,
        preloaded,
    } = start;
    let claimed = started.elapsed();
    let job = Job::try_from(assignment)?;
    let mut prepared = prepare(&job, started, spawned, device)?;
    let estimates = Estimates::new(
        &prepared.manifest,
        &prepared.shape,
        job.lease_bytes,
        &job.request.placement,
    );
    let mut reporter = Reporter::new(runtime, supervisor, estimates, started);
    // One job per worker process: the session (resident components) ends with it.
    let mut session = match preloaded {
        Some((preloaded, preload_ms)) => {
            prepared.prestart = Some(Prestart {
                handoff_to_claim_ms: ms(spawned.unwrap_or_default() + claimed),
                preload_ms,
            });
            Session::with_preloaded(preloaded)
        }
        None => Session::default(),
    };
    let (frames, pipeline_stages) = render(&mut session, &job, &prepared, &mut reporter)?;

    reporter.begin(Stage::Mux, 1)?;
    let video = write_output(&job, &prepared, &frames)?;
    let stages = reporter.finish()?;

    let metadata = write_metadata(&job, &prepared, stages, pipeline_stages, &video)?;
    Ok(Done {
        video: video.path,
        metadata,
    })
}
