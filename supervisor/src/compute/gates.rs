//! One compute gate per GPU ([`arbiter::gate`]), made at start-up when
//! `[compute] yield_to_interactive` is on. The supervisor only makes the files and says
//! where they are: video workers get their GPU's gate in `ARBITER_COMPUTE_GATE`, and
//! interactive holders find it in `GetStatus` (`compute_gates`). It never reads or writes
//! a gate afterwards: the signal goes from holder to worker through the page they share,
//! without a round trip through this process.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use arbiter::gate::{Gate, GateError};

use crate::config::ComputeConfig;
use crate::gpu::GpuIdentity;

/// The gates, by GPU uuid; empty when yielding is off.
#[derive(Debug, Default)]
pub struct Gates {
    by_uuid: BTreeMap<String, Gate>,
}

impl Gates {
    /// Makes (afresh: no mark survives a restart) a gate for every GPU in `dir`.
    pub fn open(
        config: &ComputeConfig,
        dir: &Path,
        gpus: &[GpuIdentity],
    ) -> Result<Gates, GateError> {
        if !config.yield_to_interactive {
            return Ok(Gates::default());
        }
        let io = |source| GateError::Io {
            path: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        let mut by_uuid = BTreeMap::new();
        for gpu in gpus {
            let path = dir.join(format!("{}.gate", gpu.uuid));
            let gate = Gate::create(&path, config.gate_settings())?;
            tracing::info!(gpu = gpu.index, gate = %path.display(), "compute gate");
            by_uuid.insert(gpu.uuid.clone(), gate);
        }
        Ok(Gates { by_uuid })
    }

    /// The gate of the GPU with `uuid`, if yielding is on.
    pub fn path(&self, uuid: &str) -> Option<PathBuf> {
        self.by_uuid.get(uuid).map(|g| g.path().to_owned())
    }

    /// Every gate: (GPU uuid, path).
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        self.by_uuid
            .iter()
            .map(|(uuid, g)| (uuid.clone(), g.path().to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> Vec<GpuIdentity> {
        (0..2)
            .map(|index| GpuIdentity {
                index,
                uuid: format!("GPU-{index}"),
                name: "sim".into(),
                capacity: 1 << 30,
            })
            .collect()
    }

    #[test]
    fn one_gate_per_gpu_that_any_uid_can_mark_or_none_when_off() {
        let dir = tempfile::tempdir().unwrap();
        let gates = Gates::open(
            &ComputeConfig::default(),
            &dir.path().join("compute"),
            &gpus(),
        )
        .unwrap();
        assert_eq!(gates.list().len(), 2);
        let path = gates.path("GPU-1").unwrap();
        assert_eq!(path, dir.path().join("compute/GPU-1.gate"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
        assert!(Gate::open_worker(&path).is_ok());
        assert!(gates.path("GPU-9").is_none());

        let off = ComputeConfig {
            yield_to_interactive: false,
            ..ComputeConfig::default()
        };
        let none = Gates::open(&off, &dir.path().join("other"), &gpus()).unwrap();
        assert!(none.list().is_empty());
        assert!(!dir.path().join("other").exists());
    }
}
