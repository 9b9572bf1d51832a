//! Weights from the supervisor's host weight pool (`arbiter::pool`), when the job was
//! launched with one (`ARBITER_POOL_SOCKET`).
//!
//! The pool hands a component's file over as a sealed, read-only mapping of memory it filled
//! once; this process registers the pages with the driver (no copy) and loads from them
//! (`arbiter_torch::host`). Whatever goes wrong (no pool, a refusal, a stale copy, a driver
//! that will not register read-only memory) is logged and the component is read from its
//! file as without a pool: the pool makes loads faster, never a job fail.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arbiter::pool::{SOCKET_ENV, fetch};
use arbiter_torch::host::HostBytes;

/// How long an ask may wait: it includes the pool filling a file nobody asked for before
/// (reading it from disk once), which for a large cold file takes a while.
const ASK_TIMEOUT: Duration = Duration::from_secs(180);

/// The pool's copy of `path`, registered with the driver when `register` (a GPU load or a
/// streamed one: both copy from it at the pinned rate), or `None` to read the file.
pub fn weights(path: &Path, register: bool) -> Option<Arc<HostBytes>> {
    let socket = std::env::var_os(SOCKET_ENV)?;
    let shared = match fetch(Path::new(&socket), path, ASK_TIMEOUT) {
        Ok(shared) => shared,
        Err(error) => {
            tracing::warn!(%error, "reading the weights from their file instead of the pool");
            return None;
        }
    };
    if !register {
        return Some(Arc::new(HostBytes::unregistered(shared)));
    }
    let host = HostBytes::registered(shared);
    match host.registration() {
        Ok(seconds) => {
            tracing::debug!(path = %path.display(), seconds, "pool pages registered");
            Some(Arc::new(host))
        }
        Err(error) => {
            // Unpinned, a copy runs at the pageable rate: the file's staged load is faster.
            tracing::warn!(path = %path.display(), %error, "reading the weights from their file instead of the pool");
            None
        }
    }
}
