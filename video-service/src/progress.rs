//! The one channel between a running pipeline and the rest of the worker.
//!
//! A pipeline knows its stages and its sampler steps but nothing about gRPC or the GPU
//! accounting: it calls [`Progress::begin`] when a stage starts and [`Progress::step`]
//! after each step, and stops at once when either answers [`Stop`]. The job behind the
//! trait turns those calls into reports to the supervisor (whose reply carries the cancel)
//! and into the memory the worker records; tests pass [`Ignore`]. The stages themselves are
//! the root crate's [`Stage`], the one list the manifest, the supervisor and the worker
//! share; it is re-exported here because every implementor of [`Progress`] names it.

pub use arbiter::pipeline::Stage;

use crate::residency::RecordError;
use crate::worker::WorkerError;

/// Why a pipeline must stop before it is done.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The supervisor answered a report with `cancel`: stop, and say nothing more.
    #[error("the job was cancelled")]
    Cancelled,
    /// A report could not be delivered: the supervisor is gone or no longer knows the job.
    #[error(transparent)]
    Supervisor(#[from] WorkerError),
    /// What the stage holds could not be recorded for the supervisor to see.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// Where a pipeline is. Each call may answer [`Stop`], and the pipeline must then return
/// without doing more work.
pub trait Progress {
    /// `stage` starts; `total_steps` steps of it follow (1 for a stage without steps).
    fn begin(&mut self, stage: Stage, total_steps: u32) -> Result<(), Stop>;
    /// `step` of the current stage's steps are done (1-based: the last is `total_steps`).
    fn step(&mut self, step: u32) -> Result<(), Stop>;
}

/// Progress that goes nowhere and never stops: for running a pipeline outside a job.
pub struct Ignore;

impl Progress for Ignore {
    fn begin(&mut self, _: Stage, _: u32) -> Result<(), Stop> {
        Ok(())
    }

    fn step(&mut self, _: u32) -> Result<(), Stop> {
        Ok(())
    }
}
