//! This process's GPU memory as the driver counts it (NVML), beside the caching
//! allocator's own figures.
//!
//! The allocator knows what libtorch reserved; NVML also counts the CUDA context, the
//! kernels' workspaces and anything allocated outside the cache, and it is what the
//! supervisor enforces leases with. Reading both per stage shows where they differ. On a
//! machine without NVML (CI, a CPU run) there is nothing to read and every sample is
//! `None`.

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

/// A handle on NVML for sampling this process, opened once.
pub struct ProcessMemory {
    nvml: Option<Nvml>,
    /// The leased GPU's UUID; empty: the first device.
    gpu_uuid: String,
}

impl ProcessMemory {
    /// Opens NVML if the driver is there; `gpu_uuid` names the leased GPU (the process sees
    /// it as device 0 through `CUDA_VISIBLE_DEVICES`, but NVML numbers all of them).
    pub fn open(gpu_uuid: &str) -> ProcessMemory {
        ProcessMemory {
            nvml: Nvml::init().ok(),
            gpu_uuid: gpu_uuid.to_string(),
        }
    }

    /// Bytes this process uses on the GPU now, if NVML can say.
    pub fn sample(&self) -> Option<u64> {
        let pid = std::process::id();
        self.device()?
            .running_compute_processes()
            .ok()?
            .into_iter()
            .filter(|p| p.pid == pid)
            .find_map(|p| match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            })
    }

    /// Bytes free on the GPU now, by the driver (what a wake is admitted against).
    pub fn device_free(&self) -> Option<u64> {
        self.device()?.memory_info().ok().map(|m| m.free)
    }

    fn device(&self) -> Option<nvml_wrapper::Device<'_>> {
        let nvml = self.nvml.as_ref()?;
        if !self.gpu_uuid.is_empty() {
            nvml.device_by_uuid(self.gpu_uuid.as_str()).ok()
        } else {
            // No lease named the GPU (a local run): CUDA's device 0 is the first entry of
            // CUDA_VISIBLE_DEVICES when it is set, which NVML may number differently.
            match visible_device() {
                Some(Visible::Uuid(uuid)) => nvml.device_by_uuid(uuid.as_str()).ok(),
                Some(Visible::Index(index)) => nvml.device_by_index(index).ok(),
                None => nvml.device_by_index(0).ok(),
            }
        }
    }
}

/// The first entry of `CUDA_VISIBLE_DEVICES`.
enum Visible {
    Uuid(String),
    Index(u32),
}

fn visible_device() -> Option<Visible> {
    let value = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    let first = value.split(',').next()?.trim();
    if first.starts_with("GPU-") {
        Some(Visible::Uuid(first.to_string()))
    } else {
        first.parse().ok().map(Visible::Index)
    }
}
