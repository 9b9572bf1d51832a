//! `[pool]`: the host weight pool (`crate::pool`), off until `host_bytes` gives it memory.

use std::path::PathBuf;

use arbiter::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Host memory the pool may hold, locked in RAM; 0 turns the pool off. Off by default:
    /// locking tens of GB of host memory is the operator's decision (size it to the served
    /// pipelines' weights, which `arbiter-video inspect` lists, and raise the memlock limit:
    /// the unit's LimitMEMLOCK).
    pub host_bytes: ByteSize,
    /// Read every served pipeline's weights into the pool at start-up (as far as they fit
    /// without evicting), so that the first job finds them there.
    pub prefill: bool,
    /// Reader threads per file.
    pub threads: usize,
    /// Directories whose files may be pooled besides the pipelines' weights.
    pub allow_dirs: Vec<PathBuf>,
    /// The pool's socket; None: `pool.sock` beside the supervisor's socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            host_bytes: ByteSize(0),
            prefill: true,
            threads: 8,
            allow_dirs: vec![],
            socket: None,
        }
    }
}

impl PoolConfig {
    pub fn enabled(&self) -> bool {
        self.host_bytes.0 > 0
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(1..=64).contains(&self.threads) {
            return Err(format!(
                "pool.threads is {}: give 1 to 64 reader threads",
                self.threads
            ));
        }
        if let Some(dir) = self.allow_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(format!(
                "pool.allow_dirs names {}: give absolute directories",
                dir.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_bad_values_are_named() {
        let config = PoolConfig::default();
        assert!(!config.enabled());
        assert!(config.validate().is_ok());
        let bad = PoolConfig {
            threads: 0,
            ..PoolConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("pool.threads"));
        let bad = PoolConfig {
            allow_dirs: vec!["voices".into()],
            ..PoolConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("pool.allow_dirs"));
        let parsed: PoolConfig = toml::from_str("host_bytes = \"64GiB\"\nprefill = false").unwrap();
        assert!(parsed.enabled() && !parsed.prefill);
        assert!(toml::from_str::<PoolConfig>("hostbytes = 1").is_err());
    }
}
