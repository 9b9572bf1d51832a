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

use arbiter::pool::{Pages, SOCKET_ENV, fetch};
use arbiter_torch::host::HostBytes;

/// How long an ask may wait: it includes the pool filling a file nobody asked for before
/// (reading it from disk once), which for a large cold file takes a while.
const ASK_TIMEOUT: Duration = Duration::from_secs(180);

/// How a component would use the pool's copy of its weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// In place on the host (`cpu`, or any load without a GPU): no registration.
    Host,
    /// Streamed from the host, or resident (parked onto the pool and woken from it): the
    /// pages are registered with the driver and kept.
    Pinned,
    /// Copied once to the GPU and let go (`gpu`): worth it only where registering costs
    /// less than reading the file through pinned staging.
    Copy,
}

/// The pool's copy of `path` for `wanted`, registered with the driver unless used on the
/// host, or `None` to read the file.
///
/// On 4 KiB pages (no hugetlb pages reserved, shmem THP off: the H100 host), registering a
/// file ran at 17.4 GB/s against a 49.4 GB/s staged load of the same file from the page
/// cache (docs/benchmarks.md): a `gpu` component then reads its file instead. Only on 2 MiB
/// pages does it copy from the pool.
pub fn weights(path: &Path, wanted: Use) -> Option<Arc<HostBytes>> {
    let socket = std::env::var_os(SOCKET_ENV)?;
    let shared = match fetch(Path::new(&socket), path, ASK_TIMEOUT) {
        Ok(shared) => shared,
        Err(error) => {
            tracing::warn!(%error, "reading the weights from their file instead of the pool");
            return None;
        }
    };
    let register = match wanted {
        Use::Host => false,
        Use::Pinned => true,
        Use::Copy if shared.grant().pages == Pages::Huge2MiB => true,
        Use::Copy => {
            tracing::debug!(path = %path.display(), "the pool's pages are small: registering them costs more than reading the file; reading the file");
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
