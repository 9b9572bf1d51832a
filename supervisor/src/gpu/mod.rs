//! What is on each GPU: the inventory the budget is computed from.
//!
//! The supervisor reads cards only through this trait. In production it is NVML
//! ([`nvml::NvmlInventory`]); on machines without an NVIDIA GPU it is a simulation given
//! explicitly in the configuration ([`simulated::SimulatedInventory`]), so every path runs
//! in tests and demos. There is deliberately no fallback from one to the other: a supervisor
//! that cannot read its cards must not invent a budget.

pub mod nvml;
pub mod procfs;
pub mod simulated;

/// A GPU as found at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuIdentity {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// Memory the card offers to processes: NVML's total less what the driver reserves.
    pub capacity: u64,
}

/// One process's use of a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    pub pid: u32,
    /// None where the driver will not say (some MIG and vGPU setups).
    pub used: Option<u64>,
}

/// A reading of one GPU's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuSample {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub processes: Vec<ProcessUsage>,
}

/// Why the inventory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(
        "cannot read NVIDIA GPUs through NVML: {0}. On a machine without an NVIDIA GPU, run on a simulated one: --simulated-gpus 80GiB (or `simulated = [\"80GiB\"]` under [gpu] in the config)"
    )]
    NoNvml(String),
    #[error(
        "NVML found no GPUs: check `nvidia-smi`, or run on a simulated GPU with --simulated-gpus 80GiB"
    )]
    NoGpus,
    #[error("NVML failed on GPU {index}: {reason}")]
    Device { index: u32, reason: String },
    #[error("simulated GPU {index}: {reason}")]
    Simulation { index: u32, reason: String },
}

/// A source of GPU readings.
pub trait Inventory: Send + Sync + 'static {
    /// The GPUs, fixed for the life of the supervisor.
    fn gpus(&self) -> &[GpuIdentity];
    /// Reads one GPU's memory and processes now.
    fn sample(&self, index: u32) -> Result<GpuSample, GpuError>;
    /// True when the GPUs are simulated, so status can say so.
    fn simulated(&self) -> bool;
}
