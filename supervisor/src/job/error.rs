//! Why a job request or a worker's call was refused. Each message says what to change; the
//! mapping to gRPC status codes lives in one place, `rpc::status`.

use super::JobState;
use super::store::StoreError;

/// Why a job request or a worker's call was refused.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{field} {rule}")]
    Invalid { field: &'static str, rule: String },
    #[error("the job queue is full ({limit} jobs waiting or running): retry later")]
    QueueFull { limit: usize },
    #[error("no job `{0}`: it never existed or was deleted after the retention time")]
    NotFound(String),
    #[error(
        "job `{0}` belongs to another identity: only its submitter, or an operator, may see or cancel it"
    )]
    NotOwner(String),
    #[error(
        "quota: {identity} may have at most {limit} jobs queued or running ([quota] queued_jobs); wait for some to finish, or ask the operator to raise it"
    )]
    OverQuota { identity: String, limit: u32 },
    #[error("job `{id}` has already ended ({state:?})")]
    Ended { id: String, state: JobState },
    #[error("{0}")]
    WontFit(String),
    #[error("unknown or used worker token")]
    BadToken,
    #[error("this connection is not the worker process the supervisor started for the job")]
    WrongPeer,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot prepare the job's files: {0}")]
    Files(std::io::Error),
    #[error("the supervisor is shutting down: retry against the new instance")]
    ShuttingDown,
}
