//! Which device a model process runs on, and a self-check that the device really works.
//!
//! A worker is started with `CUDA_VISIBLE_DEVICES` set to its leased GPU, so inside the
//! process that GPU is always CUDA device 0. Without one (CI, laptops) the process runs on
//! CPU, and says so, rather than failing.

use std::fmt;
use std::time::{Duration, Instant};

use tch::{Cuda, Device, Kind, Tensor};

/// What libtorch sees in this process.
#[derive(Clone, Debug)]
pub struct DeviceReport {
    pub cuda_available: bool,
    pub cuda_devices: i64,
    pub cudnn: bool,
    /// `CUDA_VISIBLE_DEVICES` as the process received it.
    pub visible_devices: Option<String>,
    pub device: Device,
    /// A small matmul on `device`, checked against the answer computed by hand.
    pub self_check: Result<Duration, String>,
}

/// The device a model process should use: CUDA device 0 if there is one, else the CPU.
pub fn preferred() -> Device {
    if Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// Sets variables in this process's environment before CUDA starts: a standby worker
/// (`arbiter-video standby`) is told its GPU (`CUDA_VISIBLE_DEVICES`), kernel cache and MPS
/// pipes only when it is handed its job, and CUDA reads them once, when its first call
/// initializes the driver. Call it before any CUDA call and while no other thread of the
/// process may read the environment.
pub fn set_environment(pairs: &[(String, String)]) {
    for (key, value) in pairs {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            continue;
        }
        // SAFETY: the caller runs this before starting any thread that reads the
        // environment (the standby's only other threads, its readers, have been joined, and
        // libtorch's pools start on first parallel work, which comes later); no reference
        // into the environment is held across the call.
        unsafe { std::env::set_var(key, value) };
    }
}

/// The GPU to ask the supervisor for: the one this process's CUDA device 0 is. That is the
/// first entry of `CUDA_VISIBLE_DEVICES` when it is set (a UUID or an NVML index, both of
/// which the supervisor takes), else index 0. Asking for "any" GPU could lease memory on
/// one card while the model loads onto another. An entry the supervisor cannot name (a MIG
/// instance) gives "" (any), as before.
pub fn lease_gpu() -> String {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Err(_) => "0".into(),
        Ok(value) => {
            let first = value.split(',').next().unwrap_or_default().trim();
            if first.starts_with("GPU-") || first.parse::<u32>().is_ok() {
                first.to_string()
            } else {
                String::new()
            }
        }
    }
}

/// Probes libtorch and runs the self-check. The first CUDA call creates the context, so
/// on a GPU this costs the context start (150-210 ms on an H100) and ~0.6 GiB of VRAM.
pub fn report() -> DeviceReport {
    let device = preferred();
    DeviceReport {
        cuda_available: Cuda::is_available(),
        cuda_devices: Cuda::device_count(),
        cudnn: Cuda::cudnn_is_available(),
        visible_devices: std::env::var("CUDA_VISIBLE_DEVICES").ok(),
        device,
        self_check: self_check(device),
    }
}

fn self_check(device: Device) -> Result<Duration, String> {
    let start = Instant::now();
    let result = tch::no_grad(|| -> Result<f64, tch::TchError> {
        // ones(64x64) @ ones(64x64) has 64 in every cell: the sum is 64^3.
        let a = Tensor::f_ones([64, 64], (Kind::Float, device))?;
        let product = a.f_matmul(&a)?;
        product.f_sum(Kind::Double)?.f_double_value(&[])
    })
    .map_err(|e| e.to_string())?;
    if device != Device::Cpu {
        Cuda::synchronize(0);
    }
    if (result - 262_144.0).abs() > 1e-3 {
        return Err(format!(
            "a 64x64 matmul on {device:?} summed to {result}, expected 262144"
        ));
    }
    Ok(start.elapsed())
}

impl fmt::Display for DeviceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "libtorch: cuda {} ({} device(s)), cudnn {}",
            yes(self.cuda_available),
            self.cuda_devices,
            yes(self.cudnn)
        )?;
        writeln!(
            f,
            "CUDA_VISIBLE_DEVICES: {}",
            self.visible_devices.as_deref().unwrap_or("(unset)")
        )?;
        writeln!(f, "device: {:?}", self.device)?;
        match &self.self_check {
            Ok(took) => write!(f, "self-check: ok in {took:.1?}"),
            Err(error) => write!(f, "self-check: FAILED: {error}"),
        }
    }
}

/// The `info` command of the model binaries: prints the report, fails if the self-check did.
pub fn info() -> std::process::ExitCode {
    let report = report();
    println!("{report}");
    if report.self_check.is_ok() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn yes(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_self_check_passes_on_this_machine() {
        let report = super::report();
        assert!(report.self_check.is_ok(), "{report}");
    }
}
