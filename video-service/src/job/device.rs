//! The device a job runs on: its name as the logs and the metadata give it, and its CUDA
//! context, started before the first stage.

use std::time::Instant;

use tch::Device;

use crate::metadata::{Startup, millis};
use crate::pipeline::component::device_index;

/// Creates the CUDA context now rather than inside the first stage's load, and times it,
/// so that the worker's fixed cost can be read apart from model work. `None` on a CPU.
pub fn start_device(device: Device, started: Instant) -> Option<Startup> {
    if !device.is_cuda() {
        return None;
    }
    let context = Instant::now();
    match tch::Tensor::f_zeros([1], (tch::Kind::Float, device)) {
        Ok(_) => {
            tch::Cuda::synchronize(device_index(device));
            Some(Startup {
                ready_ms: millis(started),
                context_ms: millis(context),
            })
        }
        Err(error) => {
            tracing::warn!(%error, "cannot create the CUDA context up front");
            None
        }
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}
