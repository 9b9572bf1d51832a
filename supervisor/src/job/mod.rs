//! Video jobs: one leased worker process per request.
//!
//! A job is validated ([`spec`]) and persisted ([`store`]) before its id is returned; from
//! then on it is never lost. [`run`] takes it through its life: a lease sized from its
//! pipeline's manifest ([`catalog`]), a worker spawned in its own process group
//! ([`spawn`]), progress, then the worker's exit, and only once NVML shows its memory back
//! ([`verify`]) is the lease returned. [`jobs`] is the hub the gRPC services call.
//! [`standby`] keeps a worker per staged pipeline started ahead of its next job.
//!
//! Only this module spawns processes.

pub mod catalog;
mod error;
pub mod jobs;
pub mod prewarm;
pub mod request;
pub mod run;
pub mod spawn;
pub mod spec;
pub mod standby;
pub mod store;
pub mod verify;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::lease::Priority;

/// Where a job is in its life. Final states are Succeeded, Failed and Cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Queued,
    Starting,
    Running,
    Releasing,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

pub use error::JobError;
pub use request::{JobRequest, Media};

/// A validated request, as persisted: the request in its one shape (media always files by
/// now: inline payloads are saved into the job's directory) and what the supervisor decided
/// for it. Stored flat, as records always were.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobSpec {
    #[serde(flatten)]
    pub request: arbiter::job::Request,
    pub priority: Priority,
    pub timeout: Duration,
    /// Memory the lease asks for: the manifest's peak for this shape plus its margin.
    pub lease_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Progress {
    pub stage: String,
    pub step: u32,
    pub total_steps: u32,
    pub vram_bytes: u64,
    pub peak_vram_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct JobResult {
    pub video_path: PathBuf,
    pub video_bytes: u64,
    pub metadata_path: PathBuf,
    pub metadata_bytes: u64,
    pub queued: Duration,
    pub worker: Duration,
    pub memory_return: Duration,
    pub used_before: u64,
    pub used_peak: u64,
    pub used_after: u64,
}

/// Everything known about a job; the unit of persistence.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    pub attempt: u32,
    pub progress: Progress,
    pub result: Option<JobResult>,
    pub error: String,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub lease_id: String,
    pub gpu_uuid: String,
    /// The worker's pid, which is also its process group, while it may be alive: what a
    /// restarted supervisor kills before re-queueing.
    pub worker_pid: Option<u32>,
    /// The job's own directory: inputs saved from inline payloads, the worker's log, output.
    pub dir: PathBuf,
    /// The identity that submitted it (`uid:1000`, `token:ci`): only it, or an operator,
    /// may see or cancel it. Empty in records written before identities: operators only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Whether its (last) worker was a standby, started before the job and handed it
    /// ([`standby`]), rather than spawned for it. Absent in older records: spawned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prestarted: bool,
}

impl JobRecord {
    /// A job just accepted: queued, first attempt, nothing run yet.
    pub fn new(id: String, spec: JobSpec, dir: PathBuf) -> JobRecord {
        JobRecord {
            id,
            spec,
            state: JobState::Queued,
            attempt: 1,
            progress: Progress::default(),
            result: None,
            error: String::new(),
            created_at: SystemTime::now(),
            started_at: None,
            finished_at: None,
            lease_id: String::new(),
            gpu_uuid: String::new(),
            worker_pid: None,
            dir,
            owner: String::new(),
            prestarted: false,
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("worker.log")
    }

    pub fn output_dir(&self) -> PathBuf {
        self.dir.join("output")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_written_before_the_request_had_one_shape_still_loads() {
        // Written by the supervisor of 2026-12-06 (JobSpec with its fields spelled out).
        let old = include_str!("testdata/record-2026-12.json");
        let record: JobRecord = serde_json::from_str(old).expect("the old record loads");
        let request = &record.spec.request;
        assert_eq!(request.prompt, "a lighthouse at dusk");
        assert_eq!(
            (
                request.shape.width,
                request.shape.height,
                request.shape.frames,
                request.shape.fps,
                request.shape.steps
            ),
            (256, 192, 17, 24, 8)
        );
        assert_eq!(request.seed, 42);
        assert_eq!(request.placement.len(), 1);
        assert_eq!(record.spec.priority, Priority::Interactive);
        assert_eq!(record.state, JobState::Succeeded);
        assert!(!record.prestarted, "an old record's worker was spawned");
        // And what is written now reads back the same, in the same flat form.
        let again = serde_json::to_value(&record).unwrap();
        let before: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(again, before, "the stored form is unchanged");
    }
}
