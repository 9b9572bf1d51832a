//! The TorchScript lip-sync model: a face and audio in, mouth frames out.
//!
//! A model is a directory with two files:
//!
//! - `lipsync.ts.pt`: a TorchScript module whose `forward(face: Float[1, 3, S, S],
//!   audio: Float[1, N])` returns frames `[T, 3, S, S]`: the face RGB, channels first, in
//!   -1..1; the audio mono, in -1..1, at the config's sample rate; the frames RGB, channels
//!   first, either `Uint8` (0..255) or floating point in -1..1, with
//!   `T = floor(N * fps / sample_rate + 1/2)` ([`LipSyncModel::frame_count`]).
//! - `lipsync.json` ([`Config`]): `face_size` (S), `fps`, and `audio`: `features` (only
//!   `"waveform"`, raw samples, is understood) and `sample_rate`.
//!
//! `scripts/make-test-lipsync.py` writes a small model of this shape with random weights
//! (its mouths are noise); no real weights are shipped.
//!
//! The model is always loaded on the CPU, and while the service holds its lip-sync lease on
//! a machine with CUDA a second copy lives on CUDA device 0. Renders use the GPU copy when
//! there is one, else the CPU copy. Keeping the CPU copy makes giving the GPU back
//! ([`LipSyncModel::offload`]) a matter of dropping tensors and emptying libtorch's cache,
//! fast enough for any reclaim deadline, and leaves rendering possible at once on the CPU;
//! bringing the model back ([`LipSyncModel::to_gpu`]) reloads it from its file (the page
//! cache has it). The host memory of the second copy is the price.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Deserialize;
use tch::{CModule, Device, Kind, Tensor};

use crate::lip_sync::face::Face;

/// The model file in a lip-sync directory.
pub const MODEL_FILE: &str = "lipsync.ts.pt";
/// The config file in a lip-sync directory.
pub const CONFIG_FILE: &str = "lipsync.json";

/// What can go wrong loading or running the lip-sync model: the operator's or the model's
/// to fix, never the client's, so it stops start-up in [`crate::server`] and is INTERNAL on
/// the wire.
#[derive(Debug, thiserror::Error)]
pub enum LipSyncModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid lip-sync config: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {rule}")]
    Invalid { path: PathBuf, rule: String },
    #[error("cannot load the TorchScript model {path} on {device:?}: {source}")]
    Load {
        path: PathBuf,
        device: Device,
        source: tch::TchError,
    },
    #[error("the lip-sync model `{model}` failed to run: {source}")]
    Run {
        model: String,
        source: tch::TchError,
    },
    #[error("the lip-sync model `{model}` returned {what}")]
    Output { model: String, what: String },
}

pub type Result<T, E = LipSyncModelError> = std::result::Result<T, E>;

/// `lipsync.json`; fields beyond these are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// The model's name; default: the directory's file name.
    #[serde(default)]
    pub name: Option<String>,
    /// S: the face (and each frame) is S × S pixels.
    pub face_size: u32,
    /// Frames per second of audio.
    pub fps: u32,
    pub audio: AudioFeatures,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioFeatures {
    /// What the model takes: only `"waveform"` (raw mono samples) is understood; a model
    /// that wants mel frames computes them inside its TorchScript.
    pub features: String,
    pub sample_rate: u32,
}

/// The rendered frames of one window: RGB, 8 bits a channel, rows top to bottom
/// (`size * size * 3` bytes each), and where they were rendered.
#[derive(Debug)]
pub struct Rendered {
    pub frames: Vec<Vec<u8>>,
    pub device: Device,
}

/// A loaded lip-sync model (see the module docs).
pub struct LipSyncModel {
    name: String,
    config: Config,
    path: PathBuf,
    cpu: Mutex<CModule>,
    /// The copy on CUDA device 0, while the service holds the lease on a CUDA machine. A
    /// render holds this lock for its whole run; nothing else waits on it for long.
    gpu: Mutex<Option<CModule>>,
    /// Whether `gpu` holds a copy, readable without that lock (status calls from async
    /// handlers must not wait for a render).
    on_gpu: AtomicBool,
    /// Serializes loads of the GPU copy, which happen outside the `gpu` lock so that
    /// renders go on (on the CPU) meanwhile.
    loading: Mutex<()>,
    /// Bumped by every offload: a copy whose load began before one is not installed, since
    /// the lease it was loaded under is going or gone.
    generation: AtomicU64,
    /// Set while the GPU copy is being given back: new windows go to the CPU at once
    /// instead of queueing for the GPU copy ahead of the offload.
    draining: AtomicBool,
    /// Bytes of the parameters, what the weights need on a device.
    parameter_bytes: u64,
}

impl std::fmt::Debug for LipSyncModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LipSyncModel")
            .field("name", &self.name)
            .field("face_size", &self.config.face_size)
            .field("fps", &self.config.fps)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// "cuda:0" or "cpu", as the wire says it.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl LipSyncModel {
    /// Reads `dir/lipsync.json` and loads `dir/lipsync.ts.pt` on the CPU.
    pub fn load(dir: &Path) -> Result<LipSyncModel> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| LipSyncModelError::Read {
            path: path.clone(),
            source,
        })?;
        let config: Config =
            serde_json::from_str(&text).map_err(|source| LipSyncModelError::Config {
                path: path.clone(),
                source,
            })?;
        let invalid = |rule: String| LipSyncModelError::Invalid {
            path: path.clone(),
            rule,
        };
        if !(16..=1024).contains(&config.face_size) {
            return Err(invalid(format!(
                "face_size {} is outside 16 to 1024 pixels",
                config.face_size
            )));
        }
        if !(1..=120).contains(&config.fps) {
            return Err(invalid(format!("fps {} is outside 1 to 120", config.fps)));
        }
        if config.audio.features != "waveform" {
            return Err(invalid(format!(
                "audio.features {:?} is not understood: only \"waveform\" (raw mono samples; compute other features inside the model)",
                config.audio.features
            )));
        }
        if !(8_000..=48_000).contains(&config.audio.sample_rate) {
            return Err(invalid(format!(
                "audio.sample_rate {} is outside 8000 to 48000 Hz",
                config.audio.sample_rate
            )));
        }
        let name = match &config.name {
            Some(name) if !name.trim().is_empty() => name.trim().to_string(),
            _ => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    invalid("no name: give the directory a name or set `name`".into())
                })?,
        };
        let model = dir.join(MODEL_FILE);
        let module = load_module(&model, Device::Cpu)?;
        let parameter_bytes = module
            .named_parameters()
            .map_err(|source| LipSyncModelError::Load {
                path: model.clone(),
                device: Device::Cpu,
                source,
            })?
            .iter()
            .map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64)
            .sum();
        Ok(LipSyncModel {
            name,
            config,
            path: model,
            cpu: Mutex::new(module),
            gpu: Mutex::new(None),
            on_gpu: AtomicBool::new(false),
            loading: Mutex::new(()),
            generation: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            parameter_bytes,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn face_size(&self) -> u32 {
        self.config.face_size
    }

    pub fn fps(&self) -> u32 {
        self.config.fps
    }

    /// The audio rate the model takes.
    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    pub fn parameter_bytes(&self) -> u64 {
        self.parameter_bytes
    }

    /// T for N samples: `floor(N * fps / sample_rate + 1/2)`.
    pub fn frame_count(&self, samples: usize) -> usize {
        frame_count(samples, self.fps(), self.sample_rate())
    }

    /// Samples rendered in one model call: one second of audio, `fps` frames. A second is
    /// a whole number of frames and of samples, so the windows' frames add up to exactly
    /// [`Self::frame_count`] of the whole audio (only the last window rounds).
    pub fn window_samples(&self) -> usize {
        self.sample_rate() as usize
    }

    /// Where renders run now.
    pub fn device(&self) -> Device {
        if self.on_gpu.load(Ordering::SeqCst) {
            Device::Cuda(0)
        } else {
            Device::Cpu
        }
    }

    /// Loads the GPU copy on CUDA device 0, if libtorch sees one and it is not there yet;
    /// returns where renders will run. Call only while the service holds the lease. Renders
    /// meanwhile run on the CPU copy; an offload meanwhile wins (the new copy is dropped and
    /// the answer is the CPU).
    pub fn to_gpu(&self) -> Result<Device> {
        if !tch::Cuda::is_available() {
            return Ok(Device::Cpu);
        }
        let _loading = lock(&self.loading);
        if self.on_gpu.load(Ordering::SeqCst) {
            return Ok(Device::Cuda(0));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let module = match load_module(&self.path, Device::Cuda(0)) {
            Ok(module) => module,
            Err(error) => {
                // What the failed load allocated is cached by libtorch until emptied.
                empty_cache("a failed load of the lip-sync model");
                return Err(error);
            }
        };
        let mut gpu = lock(&self.gpu);
        if self.generation.load(Ordering::SeqCst) != generation {
            drop(gpu);
            drop(module);
            empty_cache("a load of the lip-sync model that an offload overtook");
            return Ok(Device::Cpu);
        }
        *gpu = Some(module);
        self.on_gpu.store(true, Ordering::SeqCst);
        Ok(Device::Cuda(0))
    }

    /// Drops the GPU copy (after any render using it finishes) and empties libtorch's
    /// caching allocator, so the memory goes back to the driver. Returns whether there was
    /// a GPU copy.
    pub fn offload(&self) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        // `on_gpu` changes only under the `gpu` lock, so it always says what the slot holds.
        let dropped = {
            let mut gpu = lock(&self.gpu);
            self.on_gpu.store(false, Ordering::SeqCst);
            gpu.take().is_some()
        };
        self.draining.store(false, Ordering::SeqCst);
        if dropped {
            // Dropped tensors stay reserved in the cache until it is emptied.
            empty_cache("offloading the lip-sync model");
        }
        dropped
    }

    /// Renders the frames of `audio` (mono, at [`Self::sample_rate`]) for `face`, on the
    /// GPU copy when there is one, else on the CPU.
    pub fn render(&self, face: &Face, audio: &[f32]) -> Result<Rendered> {
        if face.size != self.face_size() {
            return Err(LipSyncModelError::Output {
                model: self.name.clone(),
                what: format!(
                    "nothing: the face is {} pixels, the model takes {}",
                    face.size,
                    self.face_size()
                ),
            });
        }
        // While an offload waits for the GPU copy, do not queue up ahead of it.
        let draining = self.draining.load(Ordering::SeqCst);
        let gpu = if draining {
            None
        } else {
            Some(lock(&self.gpu))
        };
        let (device, output) = match gpu.as_ref().and_then(|g| g.as_ref()) {
            Some(module) => (
                Device::Cuda(0),
                self.run(module, Device::Cuda(0), face, audio)?,
            ),
            None => {
                drop(gpu);
                let cpu = lock(&self.cpu);
                (Device::Cpu, self.run(&cpu, Device::Cpu, face, audio)?)
            }
        };
        let frames = self.frames(output, self.frame_count(audio.len()))?;
        Ok(Rendered { frames, device })
    }

    fn run(&self, module: &CModule, device: Device, face: &Face, audio: &[f32]) -> Result<Tensor> {
        let s = i64::from(self.face_size());
        // Until the frames are on the host (the copy waits for the GPU's work).
        let _busy = device.is_cuda().then(crate::compute::work).flatten();
        tch::no_grad(|| {
            // The fallible forms: a CUDA error is the caller's to report, not a panic.
            let face = Tensor::from_slice(&face.pixels)
                .f_view([1, 3, s, s])?
                .f_to_device(device)?;
            let audio = Tensor::from_slice(audio)
                .f_view([1, -1])?
                .f_to_device(device)?;
            let out = module.forward_ts(&[face, audio])?;
            out.f_to_device(Device::Cpu)
        })
        .map_err(|source| LipSyncModelError::Run {
            model: self.name.clone(),
            source,
        })
    }

    /// The model's output as RGB frames, checked against the interface.
    fn frames(&self, output: Tensor, expected: usize) -> Result<Vec<Vec<u8>>> {
        let s = i64::from(self.face_size());
        let bad = |what: String| LipSyncModelError::Output {
            model: self.name.clone(),
            what,
        };
        let shape = output.size();
        if shape != [expected as i64, 3, s, s] {
            return Err(bad(format!(
                "frames of shape {shape:?}, not [{expected}, 3, {s}, {s}] (T = N * fps / sample_rate, rounded half up)"
            )));
        }
        let bytes = match output.kind() {
            Kind::Uint8 => output,
            Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
                let float = output.to_kind(Kind::Float);
                if float.isfinite().all().int64_value(&[]) == 0 {
                    return Err(bad("non-finite frame values".into()));
                }
                ((float.clamp(-1.0, 1.0) + 1.0) * 127.5)
                    .round()
                    .to_kind(Kind::Uint8)
            }
            other => return Err(bad(format!("frames of kind {other:?}, not Uint8 or float"))),
        };
        // [T, 3, S, S] -> [T, S, S, 3]: rows of RGB pixels.
        let pixels = bytes.permute([0, 2, 3, 1]).contiguous().flatten(0, -1);
        let pixels = Vec::<u8>::try_from(&pixels).map_err(|source| LipSyncModelError::Run {
            model: self.name.clone(),
            source,
        })?;
        let frame = (s * s * 3) as usize;
        Ok(pixels.chunks_exact(frame).map(<[u8]>::to_vec).collect())
    }
}

fn load_module(path: &Path, device: Device) -> Result<CModule> {
    let mut module =
        CModule::load_on_device(path, device).map_err(|source| LipSyncModelError::Load {
            path: path.to_path_buf(),
            device,
            source,
        })?;
    module.set_eval();
    Ok(module)
}

/// Empties libtorch's CUDA cache after `what`, so freed memory goes back to the driver.
fn empty_cache(what: &str) {
    if let Err(error) = arbiter_torch::allocator::empty_cache() {
        tracing::warn!(%error, "cannot empty libtorch's CUDA cache after {what}");
    }
}

/// T for N samples at `rate` Hz and `fps`: `floor(N * fps / rate + 1/2)`.
pub fn frame_count(samples: usize, fps: u32, rate: u32) -> usize {
    let (fps, rate) = (u64::from(fps), u64::from(rate));
    ((2 * samples as u64 * fps + rate) / (2 * rate)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_windows_add_up_to_the_whole() {
        for (fps, rate) in [
            (25, 16000),
            (30, 16000),
            (24, 22050),
            (7, 8000),
            (60, 44100),
        ] {
            assert_eq!(frame_count(rate as usize, fps, rate), fps as usize);
            for n in [0, 1, rate as usize / 2, rate as usize * 3 + 1234, 99_999] {
                let window = rate as usize;
                let windows: usize = (0..n.div_ceil(window))
                    .map(|w| frame_count((n - w * window).min(window), fps, rate))
                    .sum();
                assert_eq!(
                    windows,
                    frame_count(n, fps, rate),
                    "{n} samples {fps} fps {rate} Hz"
                );
            }
        }
        // Half a frame rounds up, less rounds down.
        assert_eq!(frame_count(320, 25, 16000), 1);
        assert_eq!(frame_count(319, 25, 16000), 0);
    }
}
