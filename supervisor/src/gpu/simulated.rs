//! A simulated GPU, for machines without an NVIDIA card (CI, laptops, the demo).
//!
//! Capacity comes from configuration; usage comes from a directory that stands in for the
//! driver's process table: `<dir>/<gpu index>/<pid>` holds the bytes that process "uses".
//! Like the real driver, a process's memory counts only while the process lives: the file of
//! a dead pid is ignored and removed at the next sample. Tests and simulated workers write
//! these files to play foreign processes and allocations.

use std::path::{Path, PathBuf};

use super::{GpuError, GpuIdentity, GpuSample, Inventory, ProcessUsage, procfs};

pub struct SimulatedInventory {
    dir: PathBuf,
    gpus: Vec<GpuIdentity>,
}

impl SimulatedInventory {
    /// One simulated GPU per capacity, with stable uuids so tests can name them.
    pub fn new(capacities: &[u64], dir: &Path) -> Result<SimulatedInventory, GpuError> {
        let mut gpus = Vec::new();
        for (index, &capacity) in capacities.iter().enumerate() {
            let index = index as u32;
            std::fs::create_dir_all(dir.join(index.to_string())).map_err(|e| {
                GpuError::Simulation {
                    index,
                    reason: format!("cannot create {}: {e}", dir.display()),
                }
            })?;
            gpus.push(GpuIdentity {
                index,
                uuid: simulated_uuid(index),
                name: format!("Simulated GPU ({})", arbiter::ByteSize(capacity)),
                capacity,
            });
        }
        Ok(SimulatedInventory {
            dir: dir.to_path_buf(),
            gpus,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The uuid of simulated GPU `index`, shaped like NVML's.
pub fn simulated_uuid(index: u32) -> String {
    format!("GPU-5157ad00-0000-4000-8000-{index:012}")
}

impl Inventory for SimulatedInventory {
    fn gpus(&self) -> &[GpuIdentity] {
        &self.gpus
    }

    fn sample(&self, index: u32) -> Result<GpuSample, GpuError> {
        let gpu = self.gpus.get(index as usize).ok_or(GpuError::Simulation {
            index,
            reason: "no such GPU".into(),
        })?;
        let dir = self.dir.join(index.to_string());
        let entries = std::fs::read_dir(&dir).map_err(|e| GpuError::Simulation {
            index,
            reason: format!("cannot read {}: {e}", dir.display()),
        })?;
        let mut processes = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if !procfs::alive(pid) {
                let _ = std::fs::remove_file(entry.path());
                continue;
            }
            let bytes = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok());
            if let Some(bytes) = bytes {
                processes.push(ProcessUsage {
                    pid,
                    used: Some(bytes),
                });
            }
        }
        processes.sort_by_key(|p| p.pid);
        let used: u64 = processes.iter().filter_map(|p| p.used).sum();
        Ok(GpuSample {
            total: gpu.capacity,
            used: used.min(gpu.capacity),
            free: gpu.capacity.saturating_sub(used),
            processes,
        })
    }

    fn simulated(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_of_live_processes_counts_and_dead_ones_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = SimulatedInventory::new(&[10 << 30], dir.path()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        arbiter::simulated::record(dir.path(), 0, child.id(), 3 << 30).unwrap();
        let sample = inventory.sample(0).unwrap();
        assert_eq!(sample.used, 3 << 30);
        assert_eq!(
            sample.processes,
            vec![ProcessUsage {
                pid: child.id(),
                used: Some(3 << 30)
            }]
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let sample = inventory.sample(0).unwrap();
        assert_eq!(sample.used, 0);
        assert!(sample.processes.is_empty());
    }
}
