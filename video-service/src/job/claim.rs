//! Start-up: the runtime the supervisor's calls run on, and the claim that trades the
//! token for the job. Nothing has run when either fails, so the worker exits unclaimed.
//!
//! The model runs on the process's main thread (libtorch work is blocking); the gRPC calls
//! run on a one-thread tokio runtime beside it, which also keeps the connection alive
//! between calls.

use std::path::Path;

use arbiter::pb::worker::v1::Assignment;
use tokio::runtime::Runtime;

use crate::worker::Supervisor;

/// The runtime for the supervisor's calls, or `None` (logged) when it cannot start.
pub fn runtime() -> Option<Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("arbiter-video-rpc")
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            None
        }
    }
}

/// Exchanges `token` for the job at the supervisor's `socket`, or `None` (logged).
pub fn claim(runtime: &Runtime, socket: &Path, token: String) -> Option<(Supervisor, Assignment)> {
    match runtime.block_on(Supervisor::claim(socket, token)) {
        Ok(claimed) => Some(claimed),
        Err(error) => {
            tracing::error!(%error, "cannot claim the job; exiting without running it");
            None
        }
    }
}
