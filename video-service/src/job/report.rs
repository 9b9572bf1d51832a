//! Reporting to the supervisor while the pipeline runs: the job's [`Progress`].
//!
//! A stage's memory is recorded ([`Residency`]) before its first report, so the report that
//! says a stage started already carries what it holds; each stage is also timed for the
//! metadata's `stages`.

use std::time::Instant;

use arbiter::pipeline::Stage;
use tokio::runtime::Runtime;

use crate::metadata::{StageRecord, millis, ms_between};
use crate::progress::{Progress, Stop};
use crate::residency::{Estimates, RecordError, Residency};
use crate::worker::Supervisor;

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
pub struct Reporter<'a> {
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

impl<'a> Reporter<'a> {
    /// Reports through `supervisor`'s calls on `runtime`; each stage holds what
    /// `estimates` says.
    pub fn new(
        runtime: &'a Runtime,
        supervisor: &'a Supervisor,
        estimates: Estimates,
        started: Instant,
    ) -> Reporter<'a> {
        Reporter {
            runtime,
            supervisor,
            estimates,
            residency: Residency::from_env(),
            started,
            current: None,
            stages: Vec::new(),
        }
    }
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
    pub fn finish(mut self) -> Result<Vec<StageRecord>, RecordError> {
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
