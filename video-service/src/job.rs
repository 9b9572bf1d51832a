//! One video job, from the token in the environment to the process's exit code.
//!
//! Claim the job; check the request against the pipeline and check that ffmpeg and the
//! audio are there *before* any model work; run the stages, each recording what it holds
//! on the GPU and reporting to the supervisor (whose reply may cancel the job); mux; write
//! the metadata; say Complete. Any error after the claim is reported with Fail.
//!
//! The model runs on the process's main thread (libtorch work is blocking); the gRPC calls
//! run on a one-thread tokio runtime beside it, which also keeps the connection alive
//! between calls. The exit code is the supervisor's first word on how the job ended, so
//! each outcome has its own ([`Outcome::exit_code`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tch::Device;
use tokio::runtime::Runtime;

use arbiter::pipeline::{Manifest, Shape, StageKind};
use arbiter_torch::load::LoadOptions;

use crate::gpu_memory::ProcessMemory;
use crate::input::audio::{Audio, AudioError, AudioSpec, load_audio};
use crate::input::image::{Image, ImageError, load_image};
use crate::metadata::{Metadata, MetadataError, StageRecord};
use crate::mux::{self, MuxError, Video};
use crate::pipeline::Frames;
use crate::pipeline::cache::EmbeddingCache;
use crate::pipeline::staged::{self, Request, Session, Settings, StageMetrics, StagedError};
use crate::pipeline::tiny::{self, TinyError};
use crate::pipeline::{self, PipelineError, Resolved};
use crate::progress::{Progress, Stage, Stop};
use crate::residency::{Estimates, RecordError, Residency};
use crate::worker::{AssignmentError, Job, Supervisor, WorkerError};

/// The video's file name in the output directory.
pub const VIDEO_FILE: &str = "video.mp4";
/// The metadata's file name in the output directory.
pub const METADATA_FILE: &str = "metadata.json";

/// How a worker process ended, and the exit code that says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The video and its metadata are written and the supervisor took Complete: exit 0.
    Completed,
    /// The job failed after the claim; the supervisor was told why with Fail (if it could
    /// still be reached): exit 1.
    Failed,
    /// The supervisor could not be reached or refused the token; nothing ran: exit 2.
    Unclaimed,
    /// A report's reply said the job was cancelled; the worker stopped without calling
    /// Complete or Fail: exit 3.
    Cancelled,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Completed => 0,
            Outcome::Failed => 1,
            Outcome::Unclaimed => 2,
            Outcome::Cancelled => 3,
        }
    }
}

/// Why a claimed job did not produce its video.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the supervisor's assignment cannot be run: {0}")]
    Assignment(#[from] AssignmentError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot create the output directory {path}: {source}")]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(TinyError),
    /// Boxed: the staged pipeline's errors carry a lot of context.
    #[error(transparent)]
    Staged(Box<StagedError>),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("pipeline {0} has no image stage, so it cannot take a reference image: leave it out")]
    NoImageStage(String),
    #[error(transparent)]
    Mux(#[from] MuxError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("lost the supervisor in the middle of the job: {0}")]
    Supervisor(WorkerError),
    #[error("the job was cancelled")]
    Cancelled,
}

impl From<Stop> for JobError {
    fn from(stop: Stop) -> JobError {
        match stop {
            Stop::Cancelled => JobError::Cancelled,
            Stop::Supervisor(error) => JobError::Supervisor(error),
            Stop::Record(error) => JobError::Record(error),
        }
    }
}

impl From<StagedError> for JobError {
    fn from(error: StagedError) -> JobError {
        match error {
            StagedError::Stopped(stop) => stop.into(),
            other => JobError::Staged(Box::new(other)),
        }
    }
}

impl From<TinyError> for JobError {
    fn from(error: TinyError) -> JobError {
        match error {
            TinyError::Stopped(stop) => stop.into(),
            other => JobError::Model(other),
        }
    }
}

/// Runs the job that `token` stands for, with the supervisor at `socket`.
pub fn run(socket: &Path, token: String) -> Outcome {
    let started = Instant::now();
    let spawned = arbiter::spawn::since_spawn();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("arbiter-video-rpc")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return Outcome::Unclaimed;
        }
    };
    let (supervisor, assignment) = match runtime.block_on(Supervisor::claim(socket, token)) {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::error!(%error, "cannot claim the job; exiting without running it");
            return Outcome::Unclaimed;
        }
    };
    let span = tracing::info_span!("job", id = %assignment.job_id, attempt = assignment.attempt);
    let _entered = span.enter();
    tracing::info!(pipeline = %assignment.pipeline, "claimed");

    match execute(&runtime, &supervisor, assignment, started, spawned) {
        Ok(done) => match runtime.block_on(supervisor.complete(&done.video, &done.metadata)) {
            Ok(()) => {
                tracing::info!(video = %done.video.display(), "completed");
                Outcome::Completed
            }
            Err(error) => {
                tracing::error!(%error, "the video is written, but the supervisor did not take Complete");
                Outcome::Failed
            }
        },
        Err(JobError::Cancelled) => {
            tracing::info!("cancelled by the supervisor; stopping");
            Outcome::Cancelled
        }
        Err(error) => {
            let message = error.to_string();
            tracing::error!(error = %message, "job failed");
            if let Err(error) = runtime.block_on(supervisor.fail(&message)) {
                tracing::error!(%error, "cannot tell the supervisor that the job failed");
            }
            Outcome::Failed
        }
    }
}

/// Where a finished job's files are.
struct Done {
    video: PathBuf,
    metadata: PathBuf,
}

fn execute(
    runtime: &Runtime,
    supervisor: &Supervisor,
    assignment: arbiter::pb::worker::v1::Assignment,
    started: Instant,
    spawned: Option<Duration>,
) -> Result<Done, JobError> {
    let job = Job::try_from(assignment)?;
    let Resolved { manifest, shape } = pipeline::resolve(&job)?;
    manifest
        .check_placements(&job.placements)
        .map_err(|violation| PipelineError::Request {
            pipeline: manifest.name.clone(),
            violation,
        })?;
    // Everything that can be checked without the model is checked before it runs.
    let ffmpeg = find_ffmpeg(&job)?;
    std::fs::create_dir_all(&job.output_dir).map_err(|source| JobError::OutputDir {
        path: job.output_dir.clone(),
        source,
    })?;
    let inputs = Inputs::prepare(&job, &manifest, &shape)?;
    let device = arbiter_torch::device::preferred();
    let startup = start_device(device, started);
    let mut reporter = Reporter {
        runtime,
        supervisor,
        estimates: Estimates::new(&manifest, &shape, job.lease_bytes, &job.placements),
        residency: Residency::from_env(),
        started,
        current: None,
        stages: Vec::new(),
    };
    // One job per worker process: the session (resident components) ends with it.
    let mut session = Session::default();
    let (frames, pipeline_stages) = render(
        &mut session,
        &job,
        &manifest,
        &shape,
        &inputs,
        device,
        &mut reporter,
    )?;

    reporter.begin(Stage::Mux, 1)?;
    let (video, video_file, video_bytes) = write_output(
        ffmpeg.as_deref(),
        &job,
        &frames,
        shape.fps,
        inputs.soundtrack.as_deref(),
    )?;
    let stages = reporter.finish()?;

    let metadata = job.output_dir.join(METADATA_FILE);
    Metadata::of(&job, &manifest, &shape, device_name(device))
        .with_startup(startup)
        .with_spawn(spawned)
        .with_run(stages, pipeline_stages, inputs.record())
        .finish(millis(started), &video_file, video_bytes)
        .write(&metadata)?;
    Ok(Done { video, metadata })
}

/// The frames-only output's directory, inside the output directory.
pub const FRAMES_DIR: &str = "frames";

/// ffmpeg, or `None` where it is missing and the job may write frames instead.
pub fn find_ffmpeg(job: &Job) -> Result<Option<PathBuf>, JobError> {
    match mux::ffmpeg() {
        Ok(path) => Ok(Some(path)),
        Err(error) if job.frames_without_ffmpeg => {
            tracing::warn!(%error, "writing the frames as PNG files instead of an MP4");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

/// Writes the video: an MP4 with the soundtrack when there is an ffmpeg, else the frames as
/// `frames/000001.png`, ... Returns the path, its name in the metadata, and its bytes.
pub fn write_output(
    ffmpeg: Option<&Path>,
    job: &Job,
    frames: &Frames,
    fps: u32,
    soundtrack: Option<&Path>,
) -> Result<(PathBuf, String, u64), JobError> {
    if let Some(ffmpeg) = ffmpeg {
        let path = job.output_dir.join(VIDEO_FILE);
        let bytes = mux::encode(
            ffmpeg,
            &Video {
                frames,
                fps,
                audio: soundtrack,
            },
            &path,
        )?;
        return Ok((path, VIDEO_FILE.to_string(), bytes));
    }
    let dir = job.output_dir.join(FRAMES_DIR);
    let error = |source| JobError::OutputDir {
        path: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(error)?;
    let mut total = 0;
    for (index, pixels) in frames.rgb.chunks(frames.frame_len()).enumerate() {
        let path = dir.join(format!("{:06}.png", index + 1));
        image::save_buffer(
            &path,
            pixels,
            frames.width,
            frames.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| error(std::io::Error::other(e)))?;
        total += std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    }
    Ok((dir, format!("{FRAMES_DIR}/"), total))
}

/// What it took this process to be ready for model work on a GPU.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// From `started` to a ready CUDA context.
    pub ready_ms: f64,
    /// Creating the context (the first tensor on the device, synchronized).
    pub context_ms: f64,
}

/// Creates the CUDA context now rather than inside the first stage's load, and times it,
/// so that the worker's fixed cost can be read apart from model work. `None` on a CPU.
pub fn start_device(device: Device, started: Instant) -> Option<Startup> {
    if !device.is_cuda() {
        return None;
    }
    let context = Instant::now();
    match tch::Tensor::f_zeros([1], (tch::Kind::Float, device)) {
        Ok(_) => {
            tch::Cuda::synchronize(crate::pipeline::component::device_index(device));
            Some(Startup {
                ready_ms: millis(started),
                context_ms: millis(context),
            })
        }
        Err(error) => {
            tracing::warn!(%error, "cannot create the CUDA context up front");
            None
        }
    }
}

/// Runs the job's pipeline on `device`: the staged pipeline for a manifest with stages,
/// else the built-in model. Shared by `run` (under the supervisor) and `generate` (local).
pub fn render(
    session: &mut Session,
    job: &Job,
    manifest: &Manifest,
    shape: &Shape,
    inputs: &Inputs,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<(Frames, Vec<StageMetrics>), JobError> {
    tracing::info!(
        device = %device_name(device),
        width = shape.width,
        height = shape.height,
        frames = shape.frames,
        fps = shape.fps,
        steps = shape.steps,
        seed = job.seed,
        lease_bytes = job.lease_bytes,
        "running"
    );
    match job.pipeline_dir.as_deref() {
        Some(dir) if !manifest.stages.is_empty() => {
            let settings = Settings {
                device,
                // 16 readers: never slower than 8 on the H100 host, up to 12% faster.
                load: LoadOptions {
                    threads: 16,
                    ..LoadOptions::default()
                },
                cache: job.embedding_cache.as_ref().and_then(|(dir, cap)| {
                    EmbeddingCache::open(dir, *cap)
                        .inspect_err(|error| {
                            tracing::warn!(%error, "no embedding cache for this job");
                        })
                        .ok()
                }),
                nvml: device.is_cuda().then(|| ProcessMemory::open(&job.gpu_uuid)),
            };
            let request = Request {
                prompt: &job.prompt,
                negative_prompt: &job.negative_prompt,
                shape: *shape,
                seed: job.seed,
                audio: inputs.audio.as_ref(),
                image: inputs.image.as_ref(),
                placements: &job.placements,
                lease_bytes: job.lease_bytes,
            };
            let output = staged::run_in(session, manifest, dir, &settings, &request, progress)?;
            Ok((output.frames, output.stages))
        }
        _ => Ok((
            tiny::generate(&job.prompt, shape, job.seed, device, progress)?,
            Vec::new(),
        )),
    }
}

/// The request's media, decoded and normalized before any model work, so that a bad file
/// fails the job before the GPU is touched.
pub struct Inputs {
    pub audio: Option<Audio>,
    pub image: Option<Image>,
    /// What the MP4's audio track is made from.
    pub soundtrack: Option<PathBuf>,
}

impl Inputs {
    pub fn prepare(job: &Job, manifest: &Manifest, shape: &Shape) -> Result<Inputs, JobError> {
        let Some(model) = manifest
            .model
            .as_ref()
            .filter(|_| !manifest.stages.is_empty())
        else {
            // The built-in model takes neither; the soundtrack is muxed as it is.
            if let Some(audio) = job.audio.as_deref().filter(|a| !a.is_file()) {
                return Err(MuxError::NoAudio(audio.to_path_buf()).into());
            }
            if job.reference_image.is_some() {
                tracing::warn!(pipeline = %manifest.name, "this pipeline takes no reference image; ignoring it");
            }
            return Ok(Inputs {
                audio: None,
                image: None,
                soundtrack: job.audio.clone(),
            });
        };
        let duration = f64::from(shape.frames) / f64::from(shape.fps);
        let audio = job
            .audio
            .as_deref()
            .map(|path| {
                load_audio(
                    path,
                    AudioSpec {
                        sample_rate: model.audio_sample_rate,
                        channels: model.audio_channels,
                    },
                    duration,
                )
            })
            .transpose()?;
        let soundtrack = match &audio {
            Some(audio) => {
                let path = job.output_dir.join("audio.wav");
                audio.write_wav(&path)?;
                Some(path)
            }
            None => None,
        };
        let image = match job.reference_image.as_deref() {
            None => None,
            Some(path) => {
                if !manifest.stages.iter().any(|s| s.stage == StageKind::Image) {
                    return Err(JobError::NoImageStage(manifest.name.clone()));
                }
                Some(load_image(path, shape.width, shape.height)?)
            }
        };
        Ok(Inputs {
            audio,
            image,
            soundtrack,
        })
    }

    /// What came in and what was done to it, for the metadata.
    pub fn record(&self) -> serde_json::Value {
        serde_json::json!({
            "audio": self.audio.as_ref().map(|a| &a.source),
            "image": self.image.as_ref().map(|i| &i.source),
        })
    }
}

/// The stage a [`Reporter`] is in.
#[derive(Clone, Copy)]
struct Current {
    stage: Stage,
    since: Instant,
    total_steps: u32,
    estimated_bytes: u64,
    recorded_bytes: u64,
}

/// The job's side of [`Progress`]: each stage records what it holds and is timed, and every
/// call is a report to the supervisor, whose reply may cancel the job.
struct Reporter<'a> {
    runtime: &'a Runtime,
    supervisor: &'a Supervisor,
    estimates: Estimates,
    residency: Residency,
    /// The start of the job in this process, which stages are timed from.
    started: Instant,
    /// The stage running now.
    current: Option<Current>,
    stages: Vec<StageRecord>,
}

impl Reporter<'_> {
    fn report(&self, stage: Stage, step: u32, total_steps: u32) -> Result<(), Stop> {
        let vram = self.residency.reported();
        let cancel =
            self.runtime.block_on(
                self.supervisor
                    .report(stage.name(), step, total_steps, vram),
            )?;
        if cancel {
            return Err(Stop::Cancelled);
        }
        Ok(())
    }

    fn close_stage(&mut self) {
        if let Some(current) = self.current.take() {
            let ms = millis(current.since);
            tracing::info!(stage = %current.stage, ms, "stage done");
            self.stages.push(StageRecord {
                name: current.stage.name().into(),
                started_ms: ms_between(self.started, current.since),
                ms,
                estimated_bytes: current.estimated_bytes,
                recorded_bytes: current.recorded_bytes,
            });
        }
    }

    /// Ends the last stage and records that nothing is held any more.
    fn finish(mut self) -> Result<Vec<StageRecord>, RecordError> {
        self.close_stage();
        self.residency.release()?;
        Ok(std::mem::take(&mut self.stages))
    }
}

impl Progress for Reporter<'_> {
    fn begin(&mut self, stage: Stage, total_steps: u32) -> Result<(), Stop> {
        self.close_stage();
        let estimated_bytes = self.estimates.of(stage);
        self.residency.hold(estimated_bytes)?;
        self.current = Some(Current {
            stage,
            since: Instant::now(),
            total_steps,
            estimated_bytes,
            recorded_bytes: self.residency.reported(),
        });
        tracing::info!(%stage, total_steps, estimated_bytes, "stage starts");
        self.report(stage, 0, total_steps)
    }

    fn step(&mut self, step: u32) -> Result<(), Stop> {
        let Some(Current {
            stage, total_steps, ..
        }) = self.current
        else {
            return Ok(());
        };
        tracing::debug!(%stage, step, total_steps, "step");
        self.report(stage, step, total_steps)
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

pub fn millis(since: Instant) -> f64 {
    ms_between(since, Instant::now())
}

/// Milliseconds from `from` to `to`, to two decimals, as the metadata records them.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    crate::metadata::ms(to.saturating_duration_since(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_has_its_own_exit_code() {
        let codes = [
            Outcome::Completed,
            Outcome::Failed,
            Outcome::Unclaimed,
            Outcome::Cancelled,
        ]
        .map(Outcome::exit_code);
        assert_eq!(codes, [0, 1, 2, 3]);
    }

    #[test]
    fn a_stop_inside_the_model_ends_the_job_the_same_way() {
        assert!(matches!(
            JobError::from(TinyError::Stopped(Stop::Cancelled)),
            JobError::Cancelled
        ));
        assert_eq!(device_name(Device::Cuda(0)), "cuda:0");
    }
}
