//! Video jobs' metrics: jobs by state (a gauge read at each scrape), and for each job that
//! ended since the last scrape its duration, its stages' durations and weight loads, the
//! time from its worker's exit to its memory seen back, and whether its worker was
//! pre-started; and the standby workers ready per pipeline (a gauge read at each scrape).
//!
//! A job's stages and loads are what its worker wrote in `metadata.json` (the job's result
//! names the file): the worker reports only stage names while it runs. Jobs already ended
//! when the supervisor starts are not observed again, so a restart does not count the
//! retained jobs twice.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;

use arbiter::pipeline::Stage;

use crate::job::{JobRecord, JobState};

/// A whole job: seconds for the tiny model, up to the longest timeout.
const JOB_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// One stage: milliseconds (the built-in model) to many minutes (a large denoise).
const STAGE_BUCKETS: [f64; 13] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
];

/// A worker's memory seen back after its exit: a reading or a few, up to `verify_timeout`.
const RETURN_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const STATES: [JobState; 7] = [
    JobState::Queued,
    JobState::Starting,
    JobState::Running,
    JobState::Releasing,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

pub fn state_label(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "queued",
        JobState::Starting => "starting",
        JobState::Running => "running",
        JobState::Releasing => "releasing",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub stage: String,
}

/// A stage's label: its name when it is one of the job stages (`arbiter::pipeline::Stage`),
/// else `other`, so a metadata file cannot make up label values.
fn stage_labels(name: &str) -> StageLabels {
    let known = Stage::ALL.iter().find(|s| s.name() == name);
    StageLabels {
        stage: known.map_or("other", |s| s.name()).into(),
    }
}

/// What the metrics read of a worker's `metadata.json`: only these fields, each optional,
/// so a worker that records less still counts what it records.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WorkerMetadata {
    stages: Vec<StageTime>,
    pipeline_stages: Vec<StageLoad>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StageTime {
    name: String,
    ms: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StageLoad {
    stage: String,
    load_ms: f64,
    load_bytes: u64,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct JobMetrics {
    by_state: Family<StateLabels, Gauge>,
    duration: Histograms<StateLabels>,
    stage_duration: Histograms<StageLabels>,
    load_bytes: Family<StageLabels, Counter>,
    load_seconds: Family<StageLabels, Counter<f64, AtomicU64>>,
    memory_return: Histogram,
    /// Ended jobs whose worker was a standby handed the job.
    prestarted: Counter,
    /// 1 while a pipeline's standby worker is ready, else 0.
    standby_ready: Family<PipelineLabels, Gauge>,
    /// Ended jobs already observed (or ended before the supervisor started).
    seen: Mutex<HashSet<String>>,
}

impl JobMetrics {
    /// `existing`: the jobs there are at start; those already ended are not observed.
    /// Every series of a known label set (final states, stages) starts empty, so that a
    /// query finds it before the first job ends.
    pub fn new(existing: &[JobRecord]) -> JobMetrics {
        let metrics = JobMetrics {
            by_state: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(JOB_BUCKETS)),
            stage_duration: Family::new_with_constructor(|| Histogram::new(STAGE_BUCKETS)),
            load_bytes: Family::default(),
            load_seconds: Family::default(),
            memory_return: Histogram::new(RETURN_BUCKETS),
            prestarted: Counter::default(),
            standby_ready: Family::default(),
            seen: Mutex::new(
                existing
                    .iter()
                    .filter(|r| r.state.is_final())
                    .map(|r| r.id.clone())
                    .collect(),
            ),
        };
        for state in STATES.into_iter().filter(|s| s.is_final()) {
            let _ = metrics.duration.get_or_create(&StateLabels {
                state: state_label(state).into(),
            });
        }
        for stage in Stage::ALL {
            let labels = StageLabels {
                stage: stage.name().into(),
            };
            let _ = metrics.stage_duration.get_or_create(&labels);
            metrics.load_bytes.get_or_create(&labels).inc_by(0);
            metrics.load_seconds.get_or_create(&labels).inc_by(0.0);
        }
        metrics
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("jobs", "Video jobs by state", self.by_state.clone());
        registry.register_with_unit(
            "job_duration",
            "Ended jobs from submission to their final state, by that state",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "job_stage_duration",
            "Stages of ended jobs, as their workers recorded them, by stage",
            Unit::Seconds,
            self.stage_duration.clone(),
        );
        registry.register_with_unit(
            "job_stage_load",
            "Weights loaded by the stages of ended jobs (rate over job_stage_load_seconds: the load speed)",
            Unit::Bytes,
            self.load_bytes.clone(),
        );
        registry.register_with_unit(
            "job_stage_load",
            "Time the stages of ended jobs spent loading weights",
            Unit::Seconds,
            self.load_seconds.clone(),
        );
        registry.register_with_unit(
            "job_memory_return",
            "Time from a worker's exit to its GPU memory seen back (the lease then returned)",
            Unit::Seconds,
            self.memory_return.clone(),
        );
        registry.register(
            "job_prestarted",
            "Ended jobs whose worker was pre-started (a standby handed the job) rather than spawned for it",
            self.prestarted.clone(),
        );
        registry.register(
            "standby_ready",
            "Whether a standby worker is ready for the pipeline's next job (1) or not (0)",
            self.standby_ready.clone(),
        );
    }

    /// Sets the standby gauge: each kept pipeline and whether its standby is ready.
    pub fn update_standby(&self, ready: &[(String, bool)]) {
        for (pipeline, ready) in ready {
            self.standby_ready
                .get_or_create(&PipelineLabels {
                    pipeline: pipeline.clone(),
                })
                .set(i64::from(*ready));
        }
    }

    /// Sets the gauge of jobs by state and observes the jobs that ended since last time.
    pub fn update(&self, records: &[JobRecord]) {
        for state in STATES {
            let count = records.iter().filter(|r| r.state == state).count();
            self.by_state
                .get_or_create(&StateLabels {
                    state: state_label(state).into(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for record in records.iter().filter(|r| r.state.is_final()) {
            if seen.insert(record.id.clone()) {
                self.observe(record);
            }
        }
        // Forget deleted jobs, so the set stays as small as the job table.
        seen.retain(|id| records.iter().any(|r| &r.id == id));
    }

    fn observe(&self, record: &JobRecord) {
        if let Some(took) = record
            .finished_at
            .and_then(|end| end.duration_since(record.created_at).ok())
        {
            self.duration
                .get_or_create(&StateLabels {
                    state: state_label(record.state).into(),
                })
                .observe(took.as_secs_f64());
        }
        if record.prestarted {
            self.prestarted.inc();
        }
        let Some(result) = &record.result else {
            return;
        };
        self.memory_return
            .observe(result.memory_return.as_secs_f64());
        let metadata = match std::fs::read(&result.metadata_path) {
            Ok(bytes) => match serde_json::from_slice::<WorkerMetadata>(&bytes) {
                Ok(metadata) => metadata,
                Err(error) => {
                    tracing::debug!(job = %record.id, %error, "metadata.json unreadable: no stage metrics");
                    return;
                }
            },
            Err(error) => {
                tracing::debug!(job = %record.id, path = %result.metadata_path.display(), %error, "no metadata.json: no stage metrics");
                return;
            }
        };
        for stage in &metadata.stages {
            self.stage_duration
                .get_or_create(&stage_labels(&stage.name))
                .observe(stage.ms / 1000.0);
        }
        for load in metadata.pipeline_stages.iter().filter(|l| l.load_bytes > 0) {
            let stage = stage_labels(&load.stage);
            self.load_bytes
                .get_or_create(&stage)
                .inc_by(load.load_bytes);
            self.load_seconds
                .get_or_create(&stage)
                .inc_by(load.load_ms / 1000.0);
        }
    }
}
