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
    pub mps: MpsConfig,
}

/// `[compute.mps]`: NVIDIA MPS, its control daemon started and stopped by the supervisor as
/// a child process, and the video workers its clients at a lower client priority than the
/// voice. Off by default: MPS puts every client of a GPU in one fault domain and serves one
/// user (docs/compute-priority.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MpsConfig {
    pub enabled: bool,
    /// The control program (`nvidia-cuda-mps-control`), on PATH unless a path is given.
    pub control: PathBuf,
    /// CUDA_MPS_PIPE_DIRECTORY for the daemon and every client; None: `<state_dir>/mps/pipe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipe_dir: Option<PathBuf>,
    /// CUDA_MPS_LOG_DIRECTORY; None: `<state_dir>/mps/log`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<PathBuf>,
    /// CUDA_MPS_CLIENT_PRIORITY of video workers: 0 normal, 1 below normal (the voice, a
    /// client at the default 0, is scheduled first).
    pub worker_priority: u8,
    /// CUDA_MPS_ACTIVE_THREAD_PERCENTAGE of video workers (1-100); None: no limit. A limit
    /// holds for the worker's whole life, not only while the voice speaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_active_threads: Option<u8>,
    /// How long start-up waits for the daemon's control pipe.
    #[serde(with = "humantime_serde")]
    pub start_timeout: Duration,
}

impl Default for MpsConfig {
    fn default() -> Self {
        MpsConfig {
            enabled: false,
            control: PathBuf::from("nvidia-cuda-mps-control"),
            pipe_dir: None,
            log_dir: None,
            worker_priority: 1,
            worker_active_threads: None,
            start_timeout: Duration::from_secs(10),
        }
    }
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
            mps: MpsConfig::default(),
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
        if self.mps.worker_priority > 1 {
            return Err(format!(
                "compute.mps.worker_priority is {}: MPS knows 0 (normal) and 1 (below normal)",
                self.mps.worker_priority
            ));
        }
        if let Some(p) = self.mps.worker_active_threads
            && !(1..=100).contains(&p)
        {
            return Err(format!(
                "compute.mps.worker_active_threads is {p}: give a percentage of the GPU's threads from 1 to 100"
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
        let mut c = ComputeConfig::default();
        c.mps.worker_priority = 2;
        assert!(c.validate().unwrap_err().contains("worker_priority"));
        c.mps.worker_priority = 1;
        c.mps.worker_active_threads = Some(0);
        assert!(c.validate().unwrap_err().contains("worker_active_threads"));
    }
}
