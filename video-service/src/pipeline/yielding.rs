//! A job's side of the compute gate ([`arbiter::gate`]): between two blocks of a component
//! (the transformer's, the text encoder's), the job checks whether an interactive holder
//! (a voice) has work on the GPU and, if so, lets its own queue drain and waits for the
//! holder to finish, within the gate's bounds.
//!
//! Two things make the pause worth having:
//! - the job keeps at most two blocks queued on the GPU while it runs under a gate (it waits
//!   for block `i - 2` before launching block `i`), so "drain" means at most the block that
//!   is running; without that the host runs ahead and hundreds of kernels sit in the queue
//!   when the voice arrives;
//! - the wait happens only while someone is busy: an idle gate costs one atomic load per
//!   slot and one event wait per block.
//!
//! What it costs is recorded per stage (`yield_pauses`, `yield_paused_ms` in the job's
//! metadata).

use std::path::Path;
use std::sync::{Arc, Mutex};

use arbiter::gate::{Gate, GateError, YieldStats, Yielder};
use arbiter_torch::stream::{Event, StreamError as CudaError};
use tch::Device;

/// A job's yielding, shared by its components (one pipeline run, one thread at a time).
pub type Shared = Arc<Mutex<Yielding>>;

pub struct Yielding {
    yielder: Yielder,
    device: Device,
    /// On a GPU: events after the last two blocks, for the bounded queue.
    events: Option<[Event; 2]>,
}

impl Yielding {
    /// Opens the gate at `path` (read-only) for work on `device`.
    pub fn open(path: &Path, device: Device) -> Result<Yielding, GateError> {
        let gate = Gate::open_worker(path)?;
        let events = match device {
            Device::Cuda(_) => match (Event::new(device), Event::new(device)) {
                (Ok(a), Ok(b)) => Some([a, b]),
                (Err(error), _) | (_, Err(error)) => {
                    tracing::warn!(%error, "no CUDA events: yielding without a bounded queue");
                    None
                }
            },
            _ => None,
        };
        Ok(Yielding {
            yielder: Yielder::new(gate),
            device,
            events,
        })
    }

    /// The job's gate from its environment ([`arbiter::leased::COMPUTE_GATE`]), if the
    /// supervisor gave one. A gate that cannot be opened is logged and ignored: the job
    /// runs as it would without one.
    pub fn from_env(device: Device) -> Option<Shared> {
        let path = std::env::var_os(arbiter::leased::COMPUTE_GATE)?;
        if path.is_empty() {
            return None;
        }
        match Yielding::open(Path::new(&path), device) {
            Ok(y) => {
                let s = y.yielder.settings();
                tracing::info!(
                    gate = %Path::new(&path).display(),
                    max_pause_ms = s.max_pause.as_secs_f64() * 1e3,
                    max_share = s.max_share,
                    "yielding to interactive work at block boundaries"
                );
                Some(Arc::new(Mutex::new(y)))
            }
            Err(error) => {
                tracing::warn!(%error, "the compute gate cannot be opened; not yielding");
                None
            }
        }
    }

    /// Before block `index` is launched: bound the queue, and pause if a holder is busy.
    pub fn before_block(&mut self, index: usize) -> Result<(), CudaError> {
        if let Some(events) = &self.events
            && index >= 2
        {
            // Block index - 2 is done: at most block index - 1 is still queued.
            events[index % 2].synchronize()?;
        }
        if self.yielder.should_pause() {
            // Let what is queued finish, so the holder finds the GPU free of our work.
            if let Some(events) = &self.events
                && index >= 1
            {
                events[(index - 1) % 2].synchronize()?;
            } else if let Device::Cuda(i) = self.device {
                tch::Cuda::synchronize(i as i64);
            }
            self.yielder.pause();
        }
        Ok(())
    }

    /// After block `index` was launched.
    pub fn after_block(&mut self, index: usize) -> Result<(), CudaError> {
        if let Some(events) = self.events.as_mut() {
            events[index % 2].record_current()?;
        }
        Ok(())
    }

    pub fn stats(&self) -> YieldStats {
        self.yielder.stats()
    }
}

/// What yielding cost between two snapshots: (pauses, milliseconds paused).
pub fn cost(before: YieldStats, after: YieldStats) -> (u64, f64) {
    let paused = after.paused.saturating_sub(before.paused);
    (
        after.pauses - before.pauses,
        (paused.as_secs_f64() * 1e5).round() / 100.0,
    )
}
