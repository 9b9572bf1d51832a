//! `metadata.json`: what was made, how, and what it cost, written next to the video.
//!
//! It makes a video reproducible (the request with every default filled in, the seed, the
//! pipeline) and explains its cost (time and recorded GPU memory per stage), without the
//! supervisor's database. The file is written to a temporary name and renamed, so a reader
//! never sees half of it.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The file's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    pub job_id: String,
    pub attempt: u32,
    pub pipeline: String,
    pub request: RequestRecord,
    /// The libtorch device the model ran on (`cpu`, `cuda:0`).
    pub device: String,
    /// The leased GPU (empty when the supervisor named none).
    pub gpu_uuid: String,
    pub lease_bytes: u64,
    pub stages: Vec<StageRecord>,
    /// What each stage of a staged pipeline loaded, where, how fast, and what the caching
    /// allocator peaked at.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipeline_stages: Vec<crate::pipeline::staged::StageMetrics>,
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
}

/// The request as the worker ran it: defaults filled in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    pub steps: u32,
    pub seed: u64,
    /// The soundtrack's path, if the video has one.
    pub audio: Option<String>,
}

/// One stage: how long it took and what it held on the GPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub ms: f64,
    /// What the stage holds by the manifest's estimate.
    pub estimated_bytes: u64,
    /// What the worker recorded in the simulated GPU's process table: the estimate on a
    /// simulated GPU, 0 on a real one (where NVML measures instead).
    pub recorded_bytes: u64,
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
            request: RequestRecord {
                prompt: job.prompt.clone(),
                negative_prompt: job.negative_prompt.clone(),
                width: shape.width,
                height: shape.height,
                frames: shape.frames,
                fps: shape.fps,
                steps: shape.steps,
                seed: job.seed,
                audio: job.audio.as_ref().map(|a| a.display().to_string()),
            },
            device,
            gpu_uuid: job.gpu_uuid.clone(),
            lease_bytes: job.lease_bytes,
            stages: Vec::new(),
            pipeline_stages: Vec::new(),
            placements: job
                .placements
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
        }
    }

    pub fn with_run(
        mut self,
        stages: Vec<StageRecord>,
        pipeline_stages: Vec<crate::pipeline::staged::StageMetrics>,
        inputs: serde_json::Value,
    ) -> Metadata {
        self.stages = stages;
        self.pipeline_stages = pipeline_stages;
        self.inputs = inputs;
        self
    }

    /// The worker's startup figures (see [`Startup`](crate::job::Startup)).
    pub fn with_startup(mut self, startup: Option<crate::job::Startup>) -> Metadata {
        if let Some(s) = startup {
            self.startup_ms = Some(s.ready_ms);
            self.cuda_context_ms = Some(s.context_ms);
        }
        self
    }

    pub fn finish(mut self, total_ms: f64, video_file: &str, video_bytes: u64) -> Metadata {
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

    #[test]
    fn metadata_round_trips_through_its_file() {
        let metadata = Metadata {
            job_id: "j1".into(),
            attempt: 2,
            pipeline: "tiny".into(),
            request: RequestRecord {
                prompt: "a cat".into(),
                negative_prompt: String::new(),
                width: 128,
                height: 128,
                frames: 17,
                fps: 8,
                steps: 4,
                seed: u64::MAX,
                audio: None,
            },
            device: "cpu".into(),
            gpu_uuid: String::new(),
            lease_bytes: 1 << 30,
            stages: vec![StageRecord {
                name: "text".into(),
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
            worker_version: "0.1.0".into(),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metadata.json");
        metadata.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(serde_json::from_str::<Metadata>(&text).unwrap(), metadata);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
