//! `arbiter-video generate`: one job run in this process, without a supervisor, for trying
//! a pipeline and for benchmarks on a machine of one's own.
//!
//! It takes the same request as a job, runs the same code (`job::render`), and writes the
//! same files: `video.mp4` (when ffmpeg is on PATH) and `metadata.json`. Without ffmpeg
//! it writes the frames as PNG files in `frames/` instead (documented frames-only output),
//! so a GPU host without ffmpeg can still run and measure a pipeline. Nothing here holds a
//! lease: on a shared GPU, submit the job to the supervisor instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arbiter::pipeline::{Manifest, Placements, Shape};

use crate::job::{self, Inputs, JobError, METADATA_FILE};
use crate::metadata::{Metadata, StageRecord};
use crate::pipeline::staged::Session;
use crate::pipeline::{self, Resolved};
use crate::progress::{Progress, Stage, Stop};
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
                prompt: String::new(),
                negative_prompt: String::new(),
                audio: None,
                reference_image: None,
                width: 0,
                height: 0,
                frames: 0,
                fps: 0,
                steps: 0,
                seed: 0,
                pipeline: name,
                pipeline_dir: dir,
                output_dir,
                lease_bytes: 0,
                gpu_uuid: String::new(),
                placements: Placements::new(),
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
        let Resolved { manifest, shape } = pipeline::resolve(job)?;
        manifest
            .check_placements(&job.placements)
            .map_err(|violation| pipeline::PipelineError::Request {
                pipeline: manifest.name.clone(),
                violation,
            })?;
        let ffmpeg = job::find_ffmpeg(job)?;
        std::fs::create_dir_all(&job.output_dir).map_err(|source| JobError::OutputDir {
            path: job.output_dir.clone(),
            source,
        })?;
        let inputs = Inputs::prepare(job, &manifest, &shape)?;
        let device = arbiter_torch::device::preferred();
        let startup = job::start_device(device, started);
        let mut console = Console::new(started);
        let (frames, pipeline_stages) = job::render(
            &mut self.session,
            job,
            &manifest,
            &shape,
            &inputs,
            device,
            &mut console,
        )?;
        console.begin(Stage::Mux, 1)?;
        let (video, video_file, video_bytes) = job::write_output(
            ffmpeg.as_deref(),
            job,
            &frames,
            shape.fps,
            inputs.soundtrack.as_deref(),
        )?;
        let stages = console.finish();
        let metadata = job.output_dir.join(METADATA_FILE);
        let seconds = started.elapsed().as_secs_f64();
        Metadata::of(job, &manifest, &shape, job::device_name(device))
            .with_startup(startup)
            .with_spawn(spawned)
            .with_run(stages, pipeline_stages, inputs.record())
            .finish(job::millis(started), &video_file, video_bytes)
            .write(&metadata)?;
        Ok(Written {
            video,
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
            let ms = job::millis(since);
            tracing::info!(%stage, ms, "stage done");
            self.stages.push(StageRecord {
                name: stage.name().into(),
                started_ms: job::ms_between(self.started, since),
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
