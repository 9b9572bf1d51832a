//! `[compute]`: compute priority for interactive holders. Memory is the ledger's; this is
//! about the GPU's time, which the driver time-slices between processes.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeConfig {
    /// Video jobs pause between their blocks while an interactive holder (the tts service)
    /// has work on the same GPU, through one compute gate per GPU (`arbiter::gate`).
    pub yield_to_interactive: bool,
    /// Where the gates are made (one `<gpu uuid>.gate` each, mode 0666 in a 0755
    /// directory, so that holders of any uid can mark work); None: `<state_dir>/compute`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate_dir: Option<PathBuf>,
    /// The longest a job waits at one block boundary.
    #[serde(with = "humantime_serde")]
    pub max_pause: Duration,
    /// The share of a job's running time it may spend paused: under constant interactive
    /// load a job is slowed by at most this much, never stopped.
    pub max_share: f64,
    /// How long one busy mark counts without being renewed: a holder that dies mid-request
    /// stops holding jobs back after this.
    #[serde(with = "humantime_serde")]
    pub stale_after: Duration,
}

impl Default for ComputeConfig {
    fn default() -> Self {
        let gate = arbiter::gate::Settings::default();
        ComputeConfig {
            yield_to_interactive: true,
            gate_dir: None,
            max_pause: gate.max_pause,
            max_share: gate.max_share,
            stale_after: gate.stale_after,
        }
    }
}

impl ComputeConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_share) {
            return Err(format!(
                "compute.max_share is {}: give a share of a job's time between 0 and 1 (0.25 = a quarter)",
                self.max_share
            ));
        }
        if self.stale_after.is_zero() {
            return Err(
                "compute.stale_after is 0: a busy mark would never count; give a duration such as \"500ms\""
                    .into(),
            );
        }
        Ok(())
    }

    pub fn gate_settings(&self) -> arbiter::gate::Settings {
        arbiter::gate::Settings {
            max_pause: self.max_pause,
            max_share: self.max_share,
            stale_after: self.stale_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_outside_zero_to_one_and_a_zero_stale_time_are_refused_by_name() {
        let mut c = ComputeConfig::default();
        assert!(c.validate().is_ok());
        c.max_share = 1.5;
        assert!(c.validate().unwrap_err().contains("compute.max_share"));
        c.max_share = 0.1;
        c.stale_after = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("compute.stale_after"));
    }
}
