//! Proof that a finished worker's GPU memory came back, before its lease is returned.
//!
//! Freeing memory inside a process is unreliable; a process that exits frees everything, and
//! NVML shows it within a fraction of a millisecond on an H100. So after the worker is
//! reaped, the supervisor polls the GPU until no process of the worker's group is listed and
//! used memory is back within a tolerance of its level before the spawn. Memory that does
//! not come back in time is reported; it stays out of every budget, because the broker
//! counts used memory that no lease accounts for as unavailable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gpu::{GpuSample, Inventory, procfs};

/// How the return went.
#[derive(Clone, Debug)]
pub struct Returned {
    pub took: Duration,
    pub used_after: u64,
    /// False when the deadline passed first.
    pub complete: bool,
    /// The last reading and when it began, for the broker: its own periodic sample may
    /// predate the exit.
    pub sample: Option<(GpuSample, Instant)>,
}

/// Used memory on `gpu` now (0 when it cannot be read).
pub async fn used(inventory: &Arc<dyn Inventory>, gpu: u32) -> u64 {
    let inventory = Arc::clone(inventory);
    tokio::task::spawn_blocking(move || inventory.sample(gpu).map(|s| s.used).unwrap_or(0))
        .await
        .unwrap_or(0)
}

/// Waits until none of process group `pgid` is on `gpu` and used memory is at most
/// `before + tolerance`, or `timeout` passes.
pub async fn memory_back(
    inventory: &Arc<dyn Inventory>,
    gpu: u32,
    pgid: u32,
    before: u64,
    tolerance: u64,
    timeout: Duration,
) -> Returned {
    let start = Instant::now();
    loop {
        let source = Arc::clone(inventory);
        let taken_at = Instant::now();
        let sample = tokio::task::spawn_blocking(move || source.sample(gpu)).await;
        if let Ok(Ok(sample)) = sample {
            let ours = sample
                .processes
                .iter()
                .any(|p| p.pid == pgid || procfs::group(p.pid) == Some(pgid));
            let back = !ours && sample.used <= before.saturating_add(tolerance);
            if back || start.elapsed() >= timeout {
                return Returned {
                    took: start.elapsed(),
                    used_after: sample.used,
                    complete: back,
                    sample: Some((sample, taken_at)),
                };
            }
        } else if start.elapsed() >= timeout {
            return Returned {
                took: start.elapsed(),
                used_after: 0,
                complete: false,
                sample: None,
            };
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
