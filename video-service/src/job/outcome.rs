//! How a worker process ends: its last word to the supervisor (Complete or Fail) and its
//! exit code.
//!
//! The exit code is the supervisor's first word on how the job ended, so each outcome has
//! its own ([`Outcome::exit_code`]).

use std::path::PathBuf;

use tokio::runtime::Runtime;

use super::error::JobError;
use crate::worker::Supervisor;

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

/// Where a finished job's files are.
pub struct Done {
    pub video: PathBuf,
    pub metadata: PathBuf,
}

/// Tells the supervisor how the claimed job ended (Complete with its files, Fail with why,
/// nothing after a cancel) and says which outcome that is.
pub fn end(runtime: &Runtime, supervisor: &Supervisor, result: Result<Done, JobError>) -> Outcome {
    match result {
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
}
