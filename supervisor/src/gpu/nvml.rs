//! The real inventory, read through NVML (libnvidia-ml.so.1, loaded at run time).
//!
//! NVML needs no CUDA context, which is why the supervisor can watch every card without
//! holding memory on any of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;

use super::{GpuError, GpuIdentity, GpuSample, Inventory, ProcessUsage};

pub struct NvmlInventory {
    nvml: Arc<Nvml>,
    gpus: Vec<GpuIdentity>,
}

impl NvmlInventory {
    /// Loads NVML and lists the GPUs. Fails with a message that says how to run without one.
    pub fn open() -> Result<NvmlInventory, GpuError> {
        let nvml = Nvml::init().map_err(|e| GpuError::NoNvml(e.to_string()))?;
        let count = nvml
            .device_count()
            .map_err(|e| GpuError::NoNvml(e.to_string()))?;
        if count == 0 {
            return Err(GpuError::NoGpus);
        }
        let mut gpus = Vec::new();
        for index in 0..count {
            let failed = |e: nvml_wrapper::error::NvmlError| GpuError::Device {
                index,
                reason: e.to_string(),
            };
            let device = nvml.device_by_index(index).map_err(failed)?;
            let memory = device.memory_info().map_err(failed)?;
            gpus.push(GpuIdentity {
                index,
                uuid: device.uuid().map_err(failed)?,
                name: device.name().map_err(failed)?,
                capacity: memory.total.saturating_sub(memory.reserved),
            });
        }
        Ok(NvmlInventory {
            nvml: Arc::new(nvml),
            gpus,
        })
    }
}

impl Inventory for NvmlInventory {
    fn gpus(&self) -> &[GpuIdentity] {
        &self.gpus
    }

    fn sample(&self, index: u32) -> Result<GpuSample, GpuError> {
        let failed = |e: nvml_wrapper::error::NvmlError| GpuError::Device {
            index,
            reason: e.to_string(),
        };
        let device = self.nvml.device_by_index(index).map_err(failed)?;
        let memory = device.memory_info().map_err(failed)?;
        // A process can appear as both compute and graphics; count it once.
        let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
        let compute = device.running_compute_processes().map_err(failed)?;
        let graphics = device.running_graphics_processes().unwrap_or_default();
        for process in compute.into_iter().chain(graphics) {
            let used = match process.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            };
            let entry = by_pid.entry(process.pid).or_insert(None);
            *entry = match (*entry, used) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(GpuSample {
            total: memory.total.saturating_sub(memory.reserved),
            used: memory.used,
            free: memory.free,
            processes: by_pid
                .into_iter()
                .map(|(pid, used)| ProcessUsage { pid, used })
                .collect(),
        })
    }

    fn simulated(&self) -> bool {
        false
    }
}
