//! The service's side of the compute gate ([`arbiter::gate`]): while a voice or the lip-sync
//! model runs on the GPU, the service marks its slot busy, and video jobs on the same card
//! pause between their blocks, so the voice's kernels do not wait for the video's time
//! slices. The gate is the one the supervisor reports for the service's card
//! (`GetStatus.compute_gates`), or `--compute-gate`.
//!
//! One holder per process, set once at start-up before any request: a global, so the
//! models' call sites (`torchscript`, `lip_sync::model`) mark their work without the gate
//! being threaded through every constructor. Work on the CPU is never marked: it does not
//! compete for the GPU.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arbiter::endpoint::Address;
use arbiter::gate::{Gate, GateError, Holder, Work};

static HOLDER: OnceLock<Holder> = OnceLock::new();

/// What the supervisor runs for compute priority, as the service needs it.
#[derive(Debug, Default)]
pub struct Priority {
    /// The gate of the service's card (none with `[compute] yield_to_interactive = false`).
    pub gate: Option<PathBuf>,
    /// MPS's pipe directory, when the supervisor runs MPS (`[compute.mps]`): set as
    /// CUDA_MPS_PIPE_DIRECTORY before CUDA starts, the service is an MPS client at normal
    /// priority, ahead of the video workers.
    pub mps_pipe_dir: Option<PathBuf>,
}

/// Asks the supervisor's status for the card with `uuid` (empty: no card pinned).
pub fn priority_of(supervisor: &Address, uuid: &str) -> Result<Priority, String> {
    let status = crate::card::supervisor_status(supervisor)?;
    Ok(Priority {
        gate: status
            .compute_gates
            .into_iter()
            .find(|g| !uuid.is_empty() && g.gpu_uuid == uuid)
            .map(|g| PathBuf::from(g.path)),
        mps_pipe_dir: Some(status.mps_pipe_directory)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from),
    })
}

/// Claims a slot in the gate at `path` for this process. Once per process; a second call
/// keeps the first gate.
pub fn join(path: &Path) -> Result<(), GateError> {
    let gate = Arc::new(Gate::open_holder(path)?);
    let holder = gate.holder()?;
    let _ = HOLDER.set(holder);
    Ok(())
}

/// Marks GPU work until the guard drops; None without a gate.
pub fn work() -> Option<Work<'static>> {
    HOLDER.get().map(Holder::work)
}

/// The gate this process marks, if any.
pub fn gate_path() -> Option<PathBuf> {
    HOLDER.get().map(|h| h.gate().path().to_owned())
}
