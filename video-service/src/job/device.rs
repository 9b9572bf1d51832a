//! The device a job runs on: its name as the logs and the metadata give it, and its CUDA
//! context, started before the first stage: where the job is prepared ([`DeviceStart::Now`]),
//! or on a thread of its own from the start of the job ([`DeviceStart::early`]), so that
//! the context's start and the first kernels' load overlap the claim and the inputs'
//! preparation (a standby worker's way: its process start and TorchScript are done already,
//! the context is what is left).

use std::thread::JoinHandle;
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

/// Runs one small bf16 matrix product on `device`, so that cuBLAS is loaded and its first
/// kernels are, on the thread that started the context rather than in the first stage.
/// libtorch keeps cuBLAS handles in a pool that a thread's handles go back to when the
/// thread ends, so the job's own thread takes this one up. Its few MiB are under the job's
/// lease, and the first stage's emptying of the allocator's cache returns them.
fn warm_kernels(device: Device) {
    let started = Instant::now();
    let product =
        tch::Tensor::f_ones([64, 64], (tch::Kind::BFloat16, device)).and_then(|a| a.f_matmul(&a));
    match product {
        Ok(_) => {
            tch::Cuda::synchronize(device_index(device));
            tracing::debug!(ms = millis(started), "first kernels loaded");
        }
        Err(error) => tracing::warn!(%error, "cannot load the first kernels up front"),
    }
}

pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(index) => format!("cuda:{index}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Where the job's device is picked and its context started.
pub enum DeviceStart {
    /// When the job is prepared, on the job's thread.
    Now,
    /// Already under way on a thread of its own.
    Early(JoinHandle<(Device, Option<Startup>)>),
}

impl DeviceStart {
    /// Picks the device and starts its context on a thread now; `started`: the job's start,
    /// which the context's readiness is timed from. Call it only once the environment CUDA
    /// reads (`CUDA_VISIBLE_DEVICES`) is final.
    pub fn early(started: Instant) -> DeviceStart {
        let start = move || {
            let device = arbiter_torch::device::preferred();
            let startup = start_device(device, started);
            if startup.is_some() {
                warm_kernels(device);
            }
            (device, startup)
        };
        match std::thread::Builder::new()
            .name("arbiter-video-cuda".into())
            .spawn(start)
        {
            Ok(thread) => DeviceStart::Early(thread),
            Err(error) => {
                tracing::warn!(%error, "cannot start the CUDA context on a thread; starting it with the job");
                DeviceStart::Now
            }
        }
    }

    /// The device and its context's start, waiting for an early start to finish.
    pub fn finish(self, started: Instant) -> (Device, Option<Startup>) {
        let now = || {
            let device = arbiter_torch::device::preferred();
            (device, start_device(device, started))
        };
        match self {
            DeviceStart::Now => now(),
            DeviceStart::Early(thread) => thread.join().unwrap_or_else(|_| {
                tracing::warn!("the thread starting the CUDA context panicked; starting it again");
                now()
            }),
        }
    }
}
