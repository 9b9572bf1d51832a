//! `metadata.json`: what was made, how, and what it cost, written next to the video.
//!
//! It makes a video reproducible (the request with every default filled in, the seed, the
//! pipeline) and explains its cost (time and recorded GPU memory per stage), without the
//! supervisor's database. The file is written to a temporary name and renamed, so a reader
//! never sees half of it.
//!
//! The records it is made of ([`StageRecord`], [`StageMetrics`], [`Startup`]) and its
//! milliseconds ([`ms`]) live here, below the job and the pipelines that fill them in, so
//! that this module depends on neither.

use std::path::Path;
use std::time::{Duration, Instant};

use arbiter::pipeline::Stage;
use serde::{Deserialize, Serialize};

/// The file's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub job_id: String,
    pub attempt: u32,
    pub pipeline: String,
    /// The request as the worker ran it (its one shape, `arbiter::job::Request`), with the
    /// sizes the pipeline resolved.
    pub request: arbiter::job::Request,
    /// The libtorch device the model ran on (`cpu`, `cuda:0`).
    pub device: String,
    /// The leased GPU (empty when the supervisor named none).
    pub gpu_uuid: String,
    pub lease_bytes: u64,
    pub stages: Vec<StageRecord>,
    /// What each stage of a staged pipeline loaded, where, how fast, and what the caching
    /// allocator peaked at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipeline_stages: Vec<StageMetrics>,
    /// The request's placement overrides.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub placements: std::collections::BTreeMap<String, String>,
    /// The media as found and as normalized (format, rate, channels, padding).
    #[serde(default)]
    pub inputs: serde_json::Value,
    /// From the start of `arbiter-video run` (the claim included) to the end of the mux.
    pub total_ms: f64,
    pub video_file: String,
    pub video_bytes: u64,
    pub worker_pid: u32,
    pub worker_version: String,
    /// From the start of the process's job (claim included) to a ready CUDA context: the
    /// worker's fixed cost before any model work, to hold against a bare context start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_ms: Option<f64>,
    /// Of which creating the CUDA context (the first tensor on the device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_context_ms: Option<f64>,
    /// From the spawn (the supervisor's stamp, see `arbiter::spawn`) to the start of
    /// `arbiter-video run`: exec, linking libtorch, the runtime. Absent when no spawner
    /// stamped the process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_ms: Option<f64>,
    /// From the spawn to the start of the first denoising step's stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_ms: Option<f64>,
    /// `first_step_ms` less the weight loads and model compute of the stages before it: what
    /// a process per job costs before its first step beyond the model's own work (exec,
    /// libtorch, CUDA context, claim, inputs, TorchScript parsing). The figure to hold
    /// against a bare CUDA context start. (The built-in `tiny` model records no per-stage
    /// work, so for it nothing is subtracted.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_step_overhead_ms: Option<f64>,
    /// The worker was pre-started: a standby (`arbiter-video standby`) that had started,
    /// linked libtorch and read its pipeline's TorchScript before the job was handed to it.
    /// Its `spawn_ms` and `first_step_ms` are then timed from the handoff.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prestarted: bool,
    /// A pre-started worker's time from the handoff (the supervisor's stamp) to its claim
    /// answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff_to_claim_ms: Option<f64>,
    /// A pre-started worker's reading of its pipeline's TorchScript, before the job (so in
    /// none of the job's times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preload_ms: Option<f64>,
}

/// What a pre-started worker did for its job before it (see [`Metadata::prestarted`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prestart {
    pub handoff_to_claim_ms: f64,
    pub preload_ms: f64,
}

/// One stage: how long it took and what it held on the GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    /// When the stage started, from the start of the job in this process.
    #[serde(default)]
    pub started_ms: f64,
    pub ms: f64,
    /// What the stage holds by the manifest's estimate.
    pub estimated_bytes: u64,
    /// What the worker recorded in the simulated GPU's process table: the estimate on a
    /// simulated GPU, 0 on a real one (where NVML measures instead).
    pub recorded_bytes: u64,
}

/// What it took this process to be ready for model work on a GPU.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// From `started` to a ready CUDA context.
    pub ready_ms: f64,
    /// Creating the context (the first tensor on the device, synchronized).
    pub context_ms: f64,
}

/// One stage as it ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StageMetrics {
    pub stage: String,
    pub component: String,
    /// Where the component ran (`auto` resolved); `skipped` when the stage did not need it.
    pub placement: String,
    /// 0 when the component was already loaded or not needed.
    pub load_ms: f64,
    pub load_bytes: u64,
    pub load_gb_per_s: f64,
    /// Where the weights came from: `pool` (the supervisor's host weight pool) or `file`
    /// (absent when the stage loaded nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_source: Option<String>,
    /// Registering the pool's pages with the driver, part of `load_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register_ms: Option<f64>,
    pub compute_ms: f64,
    /// The component's first call in this process, when this stage made it (synchronized,
    /// part of `compute_ms`): kernel loading and library set-up that a fresh process pays
    /// and a resident component does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_call_ms: Option<f64>,
    /// Weights of every loaded component on the device during the stage.
    pub device_weight_bytes: u64,
    /// The caching allocator's peaks during the stage (0 without a GPU).
    pub peak_allocated_bytes: u64,
    pub peak_reserved_bytes: u64,
    /// Reserved after the stage freed what it could.
    pub reserved_after_bytes: u64,
    /// This process's GPU memory by NVML at the end of the stage, before it freed its
    /// components (absent without NVML).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvml_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiles: Option<usize>,
    /// Under a compute gate: how often the stage paused for interactive work, and for how
    /// long in all (what yielding cost this job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yield_pauses: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub yield_paused_ms: Option<f64>,
    /// Components still loaded when the stage ended (what later stages need, and
    /// `resident` ones).
    #[serde(default)]
    pub held_after: Vec<String>,
}

/// A duration as the file records it: milliseconds to two decimals.
pub fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e5).round() / 100.0
}

/// Milliseconds from `since` to now, as the file records them.
pub fn millis(since: Instant) -> f64 {
    ms_between(since, Instant::now())
}

/// Milliseconds from `from` to `to`, to two decimals, as the metadata records them.
pub fn ms_between(from: Instant, to: Instant) -> f64 {
    ms(to.saturating_duration_since(from))
}

/// Why the metadata could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct MetadataError {
    pub path: String,
    pub source: std::io::Error,
}

impl Metadata {
    /// The job's part of the record; the run's part comes with [`Metadata::with_run`] and
    /// the output's with [`Metadata::finish`].
    pub fn of(
        job: &crate::worker::Job,
        manifest: &arbiter::pipeline::Manifest,
        shape: &arbiter::pipeline::Shape,
        device: String,
    ) -> Metadata {
        Metadata {
            job_id: job.id.clone(),
            attempt: job.attempt,
            pipeline: manifest.name.clone(),
            request: arbiter::job::Request {
                shape: *shape,
                ..job.request.clone()
            },
            device,
            gpu_uuid: job.gpu_uuid.clone(),
            lease_bytes: job.lease_bytes,
            stages: Vec::new(),
            pipeline_stages: Vec::new(),
            placements: job
                .request
                .placement
                .iter()
                .map(|(c, p)| (c.clone(), p.name().to_string()))
                .collect(),
            inputs: serde_json::Value::Null,
            total_ms: 0.0,
            video_file: String::new(),
            video_bytes: 0,
            worker_pid: std::process::id(),
            worker_version: env!("CARGO_PKG_VERSION").into(),
            startup_ms: None,
            cuda_context_ms: None,
            spawn_ms: None,
            first_step_ms: None,
            first_step_overhead_ms: None,
            prestarted: false,
            handoff_to_claim_ms: None,
            preload_ms: None,
        }
    }

    /// A pre-started worker's figures (see [`Prestart`]).
    pub fn with_prestart(mut self, prestart: Option<Prestart>) -> Metadata {
        if let Some(p) = prestart {
            self.prestarted = true;
            self.handoff_to_claim_ms = Some(p.handoff_to_claim_ms);
            self.preload_ms = Some(p.preload_ms);
        }
        self
    }

    pub fn with_run(
        mut self,
        stages: Vec<StageRecord>,
        pipeline_stages: Vec<StageMetrics>,
        inputs: serde_json::Value,
    ) -> Metadata {
        self.stages = stages;
        self.pipeline_stages = pipeline_stages;
        self.inputs = inputs;
        self
    }

    /// The worker's startup figures (see [`Startup`]).
    pub fn with_startup(mut self, startup: Option<Startup>) -> Metadata {
        if let Some(s) = startup {
            self.startup_ms = Some(s.ready_ms);
            self.cuda_context_ms = Some(s.context_ms);
        }
        self
    }

    /// How long before the job's start the process was spawned (see `arbiter::spawn`).
    pub fn with_spawn(mut self, before_start: Option<Duration>) -> Metadata {
        self.spawn_ms = before_start.map(ms);
        self
    }

    /// The first step's timing, once the stages are in (see `first_step_overhead_ms`).
    fn first_step(&mut self) {
        let Some(spawn_ms) = self.spawn_ms else {
            return;
        };
        let Some(denoise) = self.stages.iter().find(|s| s.name == Stage::Denoise.name()) else {
            return;
        };
        let first = spawn_ms + denoise.started_ms;
        let model_work: f64 = self
            .pipeline_stages
            .iter()
            .take_while(|s| s.stage != Stage::Denoise.name())
            .map(|s| s.load_ms + s.compute_ms)
            .sum();
        self.first_step_ms = Some(first);
        self.first_step_overhead_ms = Some(first - model_work);
    }

    pub fn finish(mut self, total_ms: f64, video_file: &str, video_bytes: u64) -> Metadata {
        self.first_step();
        self.total_ms = total_ms;
        self.video_file = video_file.into();
        self.video_bytes = video_bytes;
        self
    }

    /// Writes the metadata as pretty JSON to `path`, atomically.
    pub fn write(&self, path: &Path) -> Result<(), MetadataError> {
        let error = |source| MetadataError {
            path: path.display().to_string(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| error(e.into()))?;
        text.push('\n');
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, text).map_err(error)?;
        std::fs::rename(&partial, path).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            job_id: "j1".into(),
            attempt: 2,
            pipeline: "tiny".into(),
            request: arbiter::job::Request {
                prompt: "a cat".into(),
                shape: arbiter::pipeline::Shape {
                    width: 128,
                    height: 128,
                    frames: 17,
                    fps: 8,
                    steps: 4,
                },
                seed: u64::MAX,
                pipeline: "tiny".into(),
                ..Default::default()
            },
            device: "cpu".into(),
            gpu_uuid: String::new(),
            lease_bytes: 1 << 30,
            stages: vec![StageRecord {
                name: "text".into(),
                started_ms: 0.5,
                ms: 1.5,
                estimated_bytes: 600 << 20,
                recorded_bytes: 600 << 20,
            }],
            pipeline_stages: Vec::new(),
            placements: Default::default(),
            inputs: serde_json::json!({"audio": null}),
            total_ms: 10.0,
            video_file: "video.mp4".into(),
            video_bytes: 1234,
            worker_pid: 42,
            startup_ms: Some(180.0),
            cuda_context_ms: Some(150.0),
            spawn_ms: Some(40.0),
            first_step_ms: Some(300.0),
            first_step_overhead_ms: Some(200.0),
            worker_version: "0.1.0".into(),
            prestarted: true,
            handoff_to_claim_ms: Some(3.5),
            preload_ms: Some(120.0),
        }
    }

    #[test]
    fn metadata_round_trips_through_its_file() {
        let metadata = sample();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        metadata.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(serde_json::from_str::<Metadata>(&text).unwrap(), metadata);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_first_step_overhead_leaves_out_the_model_work_before_it() {
        let stage = |name: &str, started_ms: f64, ms: f64| StageRecord {
            name: name.into(),
            started_ms,
            ms,
            estimated_bytes: 0,
            recorded_bytes: 0,
        };
        let metrics = |stage: &str, load_ms: f64, compute_ms: f64| StageMetrics {
            stage: stage.into(),
            load_ms,
            compute_ms,
            ..StageMetrics::default()
        };
        let mut metadata = sample();
        metadata.first_step_ms = None;
        metadata.first_step_overhead_ms = None;
        metadata.stages = vec![
            stage("text", 5.0, 100.0),
            stage("audio", 105.0, 20.0),
            stage("denoise", 125.0, 900.0),
        ];
        metadata.pipeline_stages = vec![
            metrics("text", 40.0, 50.0),
            metrics("audio", 5.0, 10.0),
            // The first step's own stage is model work after the mark: not subtracted.
            metrics("denoise", 300.0, 600.0),
        ];
        let timed = metadata
            .clone()
            .with_spawn(Some(std::time::Duration::from_millis(30)))
            .finish(1.0, "v", 1);
        assert_eq!(timed.spawn_ms, Some(30.0));
        assert_eq!(timed.first_step_ms, Some(155.0));
        assert_eq!(timed.first_step_overhead_ms, Some(50.0));

        // Without a spawn stamp there is nothing to time from.
        let unstamped = metadata.with_spawn(None).finish(1.0, "v", 1);
        assert_eq!(
            (unstamped.first_step_ms, unstamped.first_step_overhead_ms),
            (None, None)
        );
    }
}
