//! `arbiter-video generate`: one job run in this process, without a supervisor, for trying
//! a pipeline and for benchmarks on a machine of one's own.
//!
//! It takes the same request as a job, runs the same steps (`job::prepare`, `job::render`,
//! `job::output`), and writes the same files: `video.mp4` (when ffmpeg is on PATH) and
//! `metadata.json`. Without ffmpeg it writes the frames as PNG files in `frames/` instead
//! (documented frames-only output), so a GPU host without ffmpeg can still run and measure
//! a pipeline. Nothing here holds a
//! lease: on a shared GPU, submit the job to the supervisor instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arbiter::pipeline::{Manifest, Shape, Stage};

use crate::job::device::DeviceStart;
use crate::job::error::JobError;
use crate::job::output::{write_metadata, write_output};
use crate::job::prepare::prepare;
use crate::job::render::render;
use crate::metadata::{StageRecord, millis, ms_between};
use crate::pipeline;
use crate::pipeline::staged::Session;
use crate::progress::{Progress, Stop};
use crate::worker::Job;

/// What `generate` was asked for, as a worker job.
pub struct Local {
    pub job: Job,
    /// Resident components, kept from one run to the next (`generate --repeat`).
    pub session: Session,
    /// Whether the next run is the process's first, the one a spawn stamp times.
    first_run: bool,
}

/// Where the output went.
pub struct Written {
    /// The MP4, or the frames directory without ffmpeg.
    pub video: PathBuf,
    pub metadata: PathBuf,
    pub seconds: f64,
}

impl Local {
    /// A job for `pipeline` (a directory, or `tiny`) writing into `output_dir`.
    pub fn new(pipeline: &Path, output_dir: PathBuf) -> Result<Local, JobError> {
        let (name, dir) = if pipeline.as_os_str() == arbiter::pipeline::TINY && !pipeline.exists() {
            (arbiter::pipeline::TINY.to_string(), None)
        } else {
            let manifest = Manifest::load(pipeline).map_err(pipeline::PipelineError::from)?;
            (manifest.name, Some(pipeline.to_path_buf()))
        };
        Ok(Local {
            job: Job {
                id: "local".into(),
                attempt: 1,
                request: arbiter::job::Request {
                    pipeline: name,
                    ..Default::default()
                },
                pipeline_dir: dir,
                output_dir,
                lease_bytes: 0,
                gpu_uuid: String::new(),
                embedding_cache: None,
                frames_without_ffmpeg: true,
            },
            session: Session::default(),
            first_run: true,
        })
    }

    /// Runs the job and writes its files.
    pub fn run(&mut self) -> Result<Written, JobError> {
        let started = Instant::now();
        let spawned = if std::mem::take(&mut self.first_run) {
            arbiter::spawn::since_spawn()
        } else {
            None
        };
        let job = &self.job;
        let prepared = prepare(job, started, spawned, DeviceStart::Now)?;
        let mut console = Console::new(started);
        let (frames, pipeline_stages) = render(&mut self.session, job, &prepared, &mut console)?;
        console.begin(Stage::Mux, 1)?;
        let video = write_output(job, &prepared, &frames)?;
        let stages = console.finish();
        let seconds = started.elapsed().as_secs_f64();
        let metadata = write_metadata(job, &prepared, stages, pipeline_stages, &video)?;
        Ok(Written {
            video: video.path,
            metadata,
            seconds,
        })
    }

    /// The request's sizes as the pipeline fills them in.
    pub fn shape(&self) -> Result<Shape, JobError> {
        Ok(pipeline::resolve(&self.job)?.shape)
    }
}

/// Progress as log lines, with each stage timed for the metadata.
struct Console {
    /// The start of the run, which stages are timed from.
    started: Instant,
    current: Option<(Stage, Instant, u32)>,
    stages: Vec<StageRecord>,
}

impl Console {
    fn new(started: Instant) -> Console {
        Console {
            started,
            current: None,
            stages: Vec::new(),
        }
    }

    fn close(&mut self) {
        if let Some((stage, since, _)) = self.current.take() {
            let ms = millis(since);
            tracing::info!(%stage, ms, "stage done");
            self.stages.push(StageRecord {
                name: stage.name().into(),
                started_ms: ms_between(self.started, since),
                ms,
                estimated_bytes: 0,
                recorded_bytes: 0,
            });
        }
    }

    fn finish(mut self) -> Vec<StageRecord> {
        self.close();
        self.stages
    }
}

impl Progress for Console {
    fn begin(&mut self, stage: Stage, total: u32) -> Result<(), Stop> {
        self.close();
        tracing::info!(%stage, total, "stage starts");
        self.current = Some((stage, Instant::now(), total));
        Ok(())
    }

    fn step(&mut self, step: u32) -> Result<(), Stop> {
        if let Some((stage, _, total)) = self.current {
            tracing::info!(%stage, step, total, "step");
        }
        Ok(())
    }
}
