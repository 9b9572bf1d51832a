//! One component, loaded with a placement and ready to call.
//!
//! The TorchScript code is loaded with empty parameters; the weights come from the
//! component's safetensors file through `arbiter_torch::load` (parallel reads, pinned
//! staging, overlapped copies) and are put into the module's parameters in place with
//! `set_data`, which is what `Module::to` does inside libtorch. Where the weights go
//! depends on the placement:
//! - `gpu` / `resident`: all onto the device;
//! - `cpu`: all on the host; inputs go to the host and outputs come back;
//! - `stream`: everything but the blocks onto the device, the blocks in pinned host memory,
//!   copied to the device block by block as they run ([`super::stream`]).
//!
//! Under the supervisor's host weight pool ([`super::pooled`]) the bytes come from the
//! pool's read-only mapping instead of the file: registered with the driver and copied once
//! to the GPU, or used in place on the host (`cpu`, and a streamed component's blocks).
//!
//! Float inputs are cast to the component's compute dtype on the way in and outputs to
//! float32 on the way out, so the sampler accumulates in float32 whatever the weights are
//! stored in. A quantized component (`nf4`, `fp8-e4m3`: [`super::quant`]) computes in bf16
//! and is loaded like any other: its quantized tensors are parameters of its code like the
//! rest, of the kinds its code declares, so they stay quantized wherever the placement puts
//! them (streamed blocks included), and its code dequantizes each matrix in the forward.

use std::path::Path;
use std::time::Instant;

use arbiter::pipeline::{Component, Dtype, Placement};
use arbiter_torch::host::load_host;
use arbiter_torch::load::{LoadOptions, load, load_pinned};
use tch::{CModule, Device, IValue, Kind, TchError, Tensor};

use super::blocks;
use super::quant;
use super::stream::{StreamError, Streamer};
use super::yielding::Shared;

/// Why a component could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("component {name}: cannot load its code {path}: {source}")]
    Code {
        name: String,
        path: String,
        source: TchError,
    },
    #[error("component {name}: cannot load its weights: {source}")]
    Weights {
        name: String,
        source: Box<arbiter_torch::WeightsError>,
    },
    #[error(
        "component {name}: the weights file does not match the code: {detail} (regenerate the pipeline or fix the manifest)"
    )]
    Mismatch { name: String, detail: String },
    #[error("component {name}: {method} failed: {source}")]
    Call {
        name: String,
        method: &'static str,
        source: TchError,
    },
    #[error("component {name}: {source}")]
    Stream { name: String, source: StreamError },
}

/// How the weights got where they are.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadReport {
    pub bytes: u64,
    pub seconds: f64,
    /// From the host weight pool rather than the file.
    pub pooled: bool,
    /// Registering the pool's pages with the driver (part of `seconds`), when it was done.
    pub register_seconds: Option<f64>,
}

impl LoadReport {
    pub fn gb_per_s(&self) -> f64 {
        arbiter_torch::load::rate(self.bytes, self.seconds)
    }
}

/// A loaded component.
pub struct Live {
    pub name: String,
    /// What it runs with (never `auto`: that is decided before loading).
    pub placement: Placement,
    pub(super) module: CModule,
    /// Where its inputs must be.
    compute: Device,
    /// Where the pipeline's tensors live.
    pub(super) device: Device,
    kind: Kind,
    streamer: Option<Streamer>,
    pub load: LoadReport,
    /// Bytes it holds on the device (all weights, or the streamed share).
    pub device_bytes: u64,
    /// Drops with the component: the views into the loaded buffer.
    pub(super) weights: Vec<Tensor>,
    /// A resident component's weights in the host weight pool (the file, and its mapping
    /// kept registered), which [`super::park`] parks it onto and wakes it from.
    pub(super) pooled: Option<(
        std::path::PathBuf,
        std::sync::Arc<arbiter_torch::host::HostBytes>,
    )>,
    /// Parked: its parameters are views of the pool's pages, nothing on the device.
    pub(super) parked: bool,
    /// Calls so far; the first is timed.
    calls: u64,
    /// How long the first call took (synchronized), until a stage takes the figure.
    first_call_ms: Option<f64>,
    /// Repeated blocks its code exposes (0: only `forward`).
    blocks: u32,
    /// The job's compute gate: with one, calls run block by block and yield between them.
    yielding: Option<Shared>,
}

/// A component's TorchScript, deserialised onto the CPU with empty parameters (its weights
/// come separately).
pub fn load_code(dir: &Path, name: &str, spec: &Component) -> Result<CModule, ComponentError> {
    let path = dir.join(&spec.code);
    CModule::load_on_device(&path, Device::Cpu).map_err(|source| ComponentError::Code {
        name: name.into(),
        path: path.display().to_string(),
        source,
    })
}

/// The kind a component computes in (and its plain weights are stored in).
pub fn kind_of(dtype: Dtype) -> Kind {
    match dtype.compute() {
        Dtype::Bf16 | Dtype::Nf4 | Dtype::Fp8E4m3 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
    }
}

impl Live {
    /// Loads `spec` (files relative to `dir`) for `device` with a concrete `placement`.
    /// `code`: its TorchScript already deserialised on the CPU (a standby worker's,
    /// [`super::preloaded`]), else it is read from its file now.
    pub fn load(
        dir: &Path,
        name: &str,
        spec: &Component,
        placement: Placement,
        device: Device,
        options: &LoadOptions,
        code: Option<CModule>,
    ) -> Result<Live, ComponentError> {
        let started = Instant::now();
        let mut module = match code {
            Some(module) => module,
            None => load_code(dir, name, spec)?,
        };
        module.set_eval();
        let weights_device = match placement {
            Placement::Gpu | Placement::Resident | Placement::Auto => device,
            Placement::Cpu | Placement::Stream => Device::Cpu,
        };
        let path = dir.join(&spec.weights);
        let header = arbiter_torch::safetensors::read_header(&path).map_err(|source| {
            ComponentError::Weights {
                name: name.into(),
                source: Box::new(source),
            }
        })?;
        quant::check_metadata(spec.dtype, &header.metadata).map_err(|detail| {
            ComponentError::Mismatch {
                name: name.into(),
                detail,
            }
        })?;
        // The pool's pages, registered for streaming from them or for parking onto them, in
        // place on the host, or (2 MiB pages only) registered for one copy to the GPU.
        let wanted = match placement {
            _ if !device.is_cuda() => super::pooled::Use::Host,
            Placement::Cpu => super::pooled::Use::Host,
            Placement::Stream | Placement::Resident => super::pooled::Use::Pinned,
            Placement::Gpu | Placement::Auto => super::pooled::Use::Copy,
        };
        let pooled = super::pooled::weights(&path, wanted);
        let register_seconds = pooled.as_ref().and_then(|h| h.registration().ok());
        // Streamed weights go straight into one pinned host buffer, so that every block
        // crosses PCIe at the pinned rate without being pinned tensor by tensor.
        let loaded = if let Some(host) = &pooled {
            load_host(&path, host, weights_device)
        } else if placement == Placement::Stream {
            load_pinned(&path, device, options)
        } else {
            load(&path, weights_device, options)
        }
        .map_err(|source| ComponentError::Weights {
            name: name.into(),
            source: Box::new(source),
        })?;
        let mut weights: std::collections::HashMap<String, Tensor> =
            loaded.tensors.into_iter().collect();
        let params = module
            .named_parameters()
            .map_err(|source| ComponentError::Call {
                name: name.into(),
                method: "named_parameters",
                source,
            })?;
        let kind = kind_of(spec.dtype);
        let mismatch = |detail: String| ComponentError::Mismatch {
            name: name.into(),
            detail,
        };
        let expected = expected_shapes(&module);
        let mut blocks: Vec<(String, Tensor, Tensor)> = Vec::new();
        let mut kept = Vec::with_capacity(params.len());
        let mut device_bytes = 0u64;
        for (pname, mut param) in params {
            let value = weights
                .remove(&pname)
                .ok_or_else(|| mismatch(format!("no tensor named {pname}")))?;
            if let Some(shape) = expected.as_ref().and_then(|e| e.get(&pname))
                && value.size() != *shape
            {
                return Err(mismatch(format!(
                    "{pname} is {:?} in the weights, the code expects {shape:?}",
                    value.size()
                )));
            }
            // A quantized component's tensors are of the kinds its code declares (codes,
            // scales, bf16 norms); every weight of a plain one is of the manifest's dtype.
            if spec.dtype.is_quantized() && value.kind() != param.kind() {
                return Err(mismatch(format!(
                    "{pname} is {:?}, the code declares {:?}",
                    value.kind(),
                    param.kind()
                )));
            }
            if !spec.dtype.is_quantized() && value.kind() != kind {
                return Err(mismatch(format!(
                    "{pname} is {:?}, the manifest says {}",
                    value.kind(),
                    spec.dtype.name()
                )));
            }
            let bytes = (value.numel() * value.kind().elt_size_in_bytes()) as u64;
            if placement == Placement::Stream && pname.starts_with("blocks.") {
                blocks.push((pname, param, value));
                continue;
            }
            let value = if placement == Placement::Stream {
                device_bytes += bytes;
                value
                    .f_to_device(device)
                    .map_err(|e| mismatch(format!("{pname}: {e}")))?
            } else {
                if weights_device == device && device.is_cuda() {
                    device_bytes += bytes;
                }
                value
            };
            param
                .f_set_data(&value)
                .map_err(|e| mismatch(format!("{pname}: {e}")))?;
            kept.push(value);
        }
        if let Some(extra) = weights.keys().next() {
            return Err(mismatch(format!("{extra} is not a parameter of the code")));
        }
        let streamer = if placement == Placement::Stream {
            let streamer =
                Streamer::new(blocks, device, loaded.stats.pinned).map_err(|source| {
                    ComponentError::Stream {
                        name: name.into(),
                        source,
                    }
                })?;
            device_bytes += streamer.device_bytes();
            Some(streamer)
        } else {
            None
        };
        if device.is_cuda() {
            tch::Cuda::synchronize(device_index(device));
        }
        let load = LoadReport {
            bytes: loaded.stats.bytes,
            seconds: started.elapsed().as_secs_f64(),
            pooled: pooled.is_some(),
            register_seconds,
        };
        tracing::info!(
            component = name,
            %placement,
            pooled = load.pooled,
            bytes = load.bytes,
            seconds = format!("{:.3}", load.seconds),
            gb_per_s = format!("{:.2}", load.gb_per_s()),
            read_gb_per_s = format!("{:.2}", loaded.stats.gb_per_s()),
            "loaded"
        );
        Ok(Live {
            name: name.into(),
            placement,
            module,
            compute: if placement == Placement::Cpu {
                Device::Cpu
            } else {
                device
            },
            device,
            kind,
            streamer,
            load,
            device_bytes,
            weights: kept,
            pooled: pooled
                .filter(|_| placement == Placement::Resident)
                .map(|host| (path, host)),
            parked: false,
            calls: 0,
            first_call_ms: None,
            blocks: spec.blocks,
            yielding: None,
        })
    }

    /// Calls the component's `forward` (streamed block by block when placed `stream`).
    /// Float inputs are cast to the component's dtype; the output comes back as float32
    /// on the pipeline's device.
    pub fn call(&mut self, inputs: &[&Tensor]) -> Result<Tensor, ComponentError> {
        let first = self.calls == 0;
        self.calls += 1;
        let started = first.then(|| {
            synchronize(self.compute);
            Instant::now()
        });
        let inputs = inputs
            .iter()
            .map(|t| self.prepare(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| self.error("inputs", source))?;
        let mut gate = self
            .yielding
            .as_ref()
            .map(|y| y.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        let stream_error = |source: StreamError| ComponentError::Stream {
            name: self.name.clone(),
            source,
        };
        let output = match (self.streamer.as_mut(), gate.as_deref_mut()) {
            (Some(streamer), gate) => streamer
                .run(&self.module, &inputs, gate)
                .map_err(stream_error)?,
            // Under a gate, block by block, to yield between blocks; the same computation
            // as `forward`, which composes pre, the blocks and post.
            (None, Some(gate)) if self.blocks > 0 => {
                let block_error = |e: blocks::CallError| stream_error(e.into());
                let cuda_error = |e: arbiter_torch::stream::StreamError| stream_error(e.into());
                let (mut h, c) = blocks::pre(&self.module, &inputs).map_err(block_error)?;
                for index in 0..self.blocks as usize {
                    gate.before_block(index).map_err(cuda_error)?;
                    h = blocks::block(&self.module, h, &c, index).map_err(block_error)?;
                    gate.after_block(index).map_err(cuda_error)?;
                }
                blocks::post(&self.module, h, c, &inputs).map_err(block_error)?
            }
            (None, _) => {
                let ivalues: Vec<IValue> = inputs
                    .iter()
                    .map(|t| IValue::Tensor(t.shallow_clone()))
                    .collect();
                let out =
                    self.module
                        .forward_is(&ivalues)
                        .map_err(|source| ComponentError::Call {
                            name: self.name.clone(),
                            method: "forward",
                            source,
                        })?;
                tensor_of(out).map_err(|source| ComponentError::Call {
                    name: self.name.clone(),
                    method: "forward",
                    source,
                })?
            }
        };
        drop(gate);
        if let Some(started) = started {
            synchronize(self.compute);
            self.first_call_ms = Some(crate::metadata::ms(started.elapsed()));
        }
        output
            .f_to_kind(Kind::Float)
            .and_then(|t| t.f_to_device(self.device))
            .map_err(|source| self.error("output", source))
    }

    /// Runs later calls under the job's compute gate.
    pub fn yield_to(&mut self, yielding: Option<Shared>) {
        self.yielding = yielding;
    }

    /// The first call's time, once: a fresh process's first call of a component pays for
    /// loading its kernels and setting up cuBLAS and cuDNN, which later calls do not.
    pub fn take_first_call_ms(&mut self) -> Option<f64> {
        self.first_call_ms.take()
    }

    fn prepare(&self, t: &Tensor) -> Result<Tensor, TchError> {
        let t = t.f_to_device(self.compute)?;
        if t.is_floating_point() && t.kind() != self.kind {
            t.f_to_kind(self.kind)
        } else {
            Ok(t)
        }
    }

    fn error(&self, method: &'static str, source: TchError) -> ComponentError {
        ComponentError::Call {
            name: self.name.clone(),
            method,
            source,
        }
    }
}

/// The parameter shapes the code declares (`shapes()`, written by make-pipeline), if it
/// declares them: its own parameters are empty placeholders and cannot say.
fn expected_shapes(module: &CModule) -> Option<std::collections::HashMap<String, Vec<i64>>> {
    let IValue::GenericDict(pairs) = module.method_is::<IValue>("shapes", &[]).ok()? else {
        return None;
    };
    pairs
        .into_iter()
        .map(|(key, value)| match (key, value) {
            (IValue::String(name), IValue::IntList(shape)) => Some((name, shape)),
            _ => None,
        })
        .collect()
}

/// The tensor inside a TorchScript return value.
pub fn tensor_of(value: IValue) -> Result<Tensor, TchError> {
    match value {
        IValue::Tensor(t) => Ok(t),
        other => Err(TchError::Kind(format!("expected a tensor, got {other:?}"))),
    }
}

/// Waits for `device`'s work (nothing to wait for on the CPU).
pub(super) fn synchronize(device: Device) {
    if device.is_cuda() {
        tch::Cuda::synchronize(device_index(device));
    }
}

pub fn device_index(device: Device) -> i64 {
    match device {
        Device::Cuda(index) => index as i64,
        _ => 0,
    }
}
