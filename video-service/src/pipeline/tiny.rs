//! The built-in `tiny` model: a staged latent video pipeline with the shapes and the
//! sampler of a real one, small enough to run on a CPU in tests. Its video is noise.
//!
//! Stages, each loading only what it needs and freeing it when it ends (as the staged
//! pipeline of the design does with real components):
//! 1. `text`: the prompt becomes a `[1, 64]` embedding, drawn from a generator seeded by a
//!    hash of the prompt's bytes, so a prompt always gets the same embedding;
//! 2. `denoise`: latents `[(frames-1)/8+1, 4, height/8, width/8]` start as Gaussian noise
//!    from the job's seed; a small convolutional denoiser, conditioned on the embedding and
//!    the noise level, predicts a velocity, and a flow-matching Euler sampler takes `steps`
//!    steps from sigma 1 to 0 (`x += (sigma_next - sigma) * v(x, sigma)`);
//! 3. `decode`: a 1x1 convolution to RGB, trilinear interpolation to `frames` frames of
//!    `width x height` (8x spatially, and across time), then `sigmoid * 255` as bytes.
//!
//! The weights are fixed (drawn from a constant seed: they are the model's "checkpoint"),
//! and the job's seed only picks the noise, so the same request gives the same video. The
//! negative prompt and a reference image are not used.
//!
//! libtorch has one global generator per device, so every seeded draw holds [`RNG`] from
//! seeding to drawing: two pipelines in one process (tests) cannot interleave their draws.

use std::sync::{Mutex, PoisonError};

use arbiter::pipeline::{Shape, Stage};
use tch::nn::{self, Conv2D, ConvConfig, Linear};
use tch::{Device, Kind, TchError, Tensor};

use crate::frames::Frames;
use crate::progress::{Progress, Stop};

/// Width of the prompt embedding.
pub const EMBED_DIM: i64 = 64;
/// Channels of the latent video.
pub const LATENT_CHANNELS: i64 = 4;
/// Pixels per latent pixel, each way.
pub const SPATIAL_FACTOR: u32 = 8;
/// Frames per latent frame (after the first).
pub const TEMPORAL_FACTOR: u32 = 8;
/// Channels inside the denoiser.
const HIDDEN: i64 = 32;
/// The seed the weights are drawn from: the model itself, the same for every job.
const WEIGHTS_SEED: u64 = 0x7141_u64;

/// Serialises seeding libtorch's global generator with the draws that follow.
static RNG: Mutex<()> = Mutex::new(());

/// Why the model could not produce a video.
#[derive(Debug, thiserror::Error)]
pub enum TinyError {
    #[error("libtorch failed in the {stage} stage: {source}")]
    Torch { stage: Stage, source: TchError },
    #[error(transparent)]
    Stopped(#[from] Stop),
}

fn in_stage(stage: Stage) -> impl FnOnce(TchError) -> TinyError {
    move |source| TinyError::Torch { stage, source }
}

/// Runs the whole model: text, denoise, decode.
pub fn generate(
    prompt: &str,
    shape: &Shape,
    seed: u64,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<Frames, TinyError> {
    tch::no_grad(|| {
        let latents = latents(prompt, shape, seed, device, progress)?;
        progress.begin(Stage::Decode, 1)?;
        let decoder = Decoder::load(device);
        decoder
            .decode(&latents, shape)
            .map_err(in_stage(Stage::Decode))
    })
}

/// The `text` and `denoise` stages: the latents the sampler ends with.
pub fn latents(
    prompt: &str,
    shape: &Shape,
    seed: u64,
    device: Device,
    progress: &mut dyn Progress,
) -> Result<Tensor, TinyError> {
    tch::no_grad(|| {
        progress.begin(Stage::Text, 1)?;
        let text = embed_prompt(prompt, device).map_err(in_stage(Stage::Text))?;

        progress.begin(Stage::Denoise, shape.steps)?;
        let denoiser = Denoiser::load(device);
        let noise = initial_noise(shape, seed, device).map_err(in_stage(Stage::Denoise))?;
        denoiser.sample(noise, &text, shape.steps, progress)
    })
}

/// The latent video's shape for a request: `[latent frames, channels, height, width]`.
pub fn latent_shape(shape: &Shape) -> [i64; 4] {
    let frames = shape.frames.saturating_sub(1) / TEMPORAL_FACTOR + 1;
    [
        frames as i64,
        LATENT_CHANNELS,
        (shape.height / SPATIAL_FACTOR).max(1) as i64,
        (shape.width / SPATIAL_FACTOR).max(1) as i64,
    ]
}

/// Runs `draw` right after seeding libtorch's generators with `seed`, with no other seeded
/// draw in between.
pub(crate) fn seeded<T>(seed: u64, draw: impl FnOnce() -> T) -> T {
    let _only_us = RNG.lock().unwrap_or_else(PoisonError::into_inner);
    // libtorch takes the seed as a signed 64-bit value; the bits are what matter.
    tch::manual_seed(seed as i64);
    draw()
}

/// The prompt's embedding: the same prompt always gives the same one, whatever the job.
pub fn embed_prompt(prompt: &str, device: Device) -> Result<Tensor, TchError> {
    seeded(fnv1a(prompt.as_bytes()), || {
        Tensor::f_randn([1, EMBED_DIM], (Kind::Float, device))
    })
}

/// The sampler's starting point, from the job's seed.
fn initial_noise(shape: &Shape, seed: u64, device: Device) -> Result<Tensor, TchError> {
    seeded(seed, || {
        Tensor::f_randn(latent_shape(shape), (Kind::Float, device))
    })
}

/// FNV-1a: a hash whose value is defined (unlike std's), so embeddings stay the same
/// across builds.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Predicts the velocity that carries noisy latents towards clean ones.
struct Denoiser {
    // Owns the weights; the layers below hold views of them.
    _vars: nn::VarStore,
    condition: Linear,
    noise_level: Tensor,
    conv_in: Conv2D,
    conv_mid: Conv2D,
    conv_out: Conv2D,
}

impl Denoiser {
    fn load(device: Device) -> Denoiser {
        seeded(WEIGHTS_SEED, || {
            let vars = nn::VarStore::new(device);
            let root = vars.root();
            let same = ConvConfig {
                padding: 1,
                ..Default::default()
            };
            Denoiser {
                condition: nn::linear(&root / "condition", EMBED_DIM, HIDDEN, Default::default()),
                noise_level: root.randn("noise_level", &[1, HIDDEN, 1, 1], 0.0, 1.0),
                conv_in: nn::conv2d(&root / "conv_in", LATENT_CHANNELS, HIDDEN, 3, same),
                conv_mid: nn::conv2d(&root / "conv_mid", HIDDEN, HIDDEN, 3, same),
                conv_out: nn::conv2d(&root / "conv_out", HIDDEN, LATENT_CHANNELS, 3, same),
                _vars: vars,
            }
        })
    }

    /// `v(x, sigma)`, conditioned on the prompt by adding a projection of its embedding
    /// (and of the noise level) to the hidden channels.
    fn velocity(&self, x: &Tensor, sigma: f64, text: &Tensor) -> Result<Tensor, TchError> {
        let condition = text
            .f_linear(&self.condition.ws, self.condition.bs.as_ref())?
            .f_view([1, HIDDEN, 1, 1])?
            .f_add(&self.noise_level.f_mul_scalar(sigma)?)?;
        let hidden = conv(x, &self.conv_in, 1)?.f_add(&condition)?.f_silu()?;
        let hidden = conv(&hidden, &self.conv_mid, 1)?.f_silu()?;
        conv(&hidden, &self.conv_out, 1)
    }

    /// Flow matching, Euler: sigmas fall linearly from 1 to 0 over `steps` steps.
    fn sample(
        &self,
        mut x: Tensor,
        text: &Tensor,
        steps: u32,
        progress: &mut dyn Progress,
    ) -> Result<Tensor, TinyError> {
        for step in 0..steps {
            let sigma = 1.0 - f64::from(step) / f64::from(steps);
            let next = 1.0 - f64::from(step + 1) / f64::from(steps);
            let velocity = self
                .velocity(&x, sigma, text)
                .map_err(in_stage(Stage::Denoise))?;
            x = velocity
                .f_mul_scalar(next - sigma)
                .and_then(|delta| x.f_add(&delta))
                .map_err(in_stage(Stage::Denoise))?;
            progress.step(step + 1)?;
        }
        Ok(x)
    }
}

/// Turns latents into pixels.
struct Decoder {
    _vars: nn::VarStore,
    to_rgb: Conv2D,
}

impl Decoder {
    fn load(device: Device) -> Decoder {
        seeded(WEIGHTS_SEED.wrapping_add(1), || {
            let vars = nn::VarStore::new(device);
            let to_rgb = nn::conv2d(
                vars.root() / "to_rgb",
                LATENT_CHANNELS,
                3,
                1,
                Default::default(),
            );
            Decoder {
                _vars: vars,
                to_rgb,
            }
        })
    }

    fn decode(&self, latents: &Tensor, shape: &Shape) -> Result<Frames, TchError> {
        let (frames, height, width) = (shape.frames, shape.height, shape.width);
        // [T, 3, h, w] -> [1, 3, T, h, w]: time becomes a dimension to interpolate along.
        let rgb = conv(latents, &self.to_rgb, 0)?
            .f_permute([1, 0, 2, 3])?
            .f_unsqueeze(0)?;
        let video = rgb
            .f_upsample_trilinear3d(
                [i64::from(frames), i64::from(height), i64::from(width)],
                true,
                None::<f64>,
                None::<f64>,
                None::<f64>,
            )?
            // [1, 3, F, H, W] -> [F, H, W, 3]: rgb24, frame after frame.
            .f_squeeze_dim(0)?
            .f_permute([1, 2, 3, 0])?;
        let bytes = video
            .f_sigmoid()?
            .f_mul_scalar(255.0)?
            .f_round()?
            .f_to_kind(Kind::Uint8)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let len = frames as usize * height as usize * width as usize * 3;
        let mut rgb = vec![0u8; len];
        bytes.f_copy_data_u8(&mut rgb, len)?;
        Ok(Frames {
            width,
            height,
            count: frames,
            rgb,
        })
    }
}

/// A stride-1 convolution through the fallible API (the `Module` impl panics on errors).
/// `padding` keeps the size for a 3x3 kernel (1) or a 1x1 kernel (0).
fn conv(x: &Tensor, layer: &Conv2D, padding: i64) -> Result<Tensor, TchError> {
    x.f_conv2d(
        &layer.ws,
        layer.bs.as_ref(),
        [1, 1],
        [padding, padding],
        [1, 1],
        1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Ignore;
    use arbiter::pipeline::Manifest;

    fn shape(width: u32, height: u32, frames: u32, steps: u32) -> Shape {
        Manifest::tiny()
            .shape(width, height, frames, 8, steps)
            .unwrap()
    }

    #[test]
    fn the_same_seed_gives_identical_latents() {
        let shape = shape(64, 96, 17, 3);
        let a = latents("a red fox", &shape, 42, Device::Cpu, &mut Ignore).unwrap();
        let b = latents("a red fox", &shape, 42, Device::Cpu, &mut Ignore).unwrap();
        assert_eq!(a.size(), [3, 4, 12, 8]);
        assert!(a.equal(&b));
    }

    #[test]
    fn different_seeds_or_prompts_give_different_latents() {
        let shape = shape(64, 64, 9, 2);
        let a = latents("a red fox", &shape, 1, Device::Cpu, &mut Ignore).unwrap();
        let b = latents("a red fox", &shape, 2, Device::Cpu, &mut Ignore).unwrap();
        let c = latents("a blue fox", &shape, 1, Device::Cpu, &mut Ignore).unwrap();
        assert!(!a.equal(&b));
        assert!(!a.equal(&c));
        assert!(a.isfinite().all().int64_value(&[]) == 1);
    }

    #[test]
    fn the_sampler_reports_every_step_and_stops_when_told() {
        struct Record(Vec<(Option<Stage>, u32)>, u32);
        impl Progress for Record {
            fn begin(&mut self, stage: Stage, total: u32) -> Result<(), Stop> {
                self.0.push((Some(stage), total));
                Ok(())
            }
            fn step(&mut self, step: u32) -> Result<(), Stop> {
                self.0.push((None, step));
                if step == self.1 {
                    return Err(Stop::Cancelled);
                }
                Ok(())
            }
        }
        let shape = shape(64, 64, 9, 4);
        let mut all = Record(Vec::new(), u32::MAX);
        let frames = generate("x", &shape, 3, Device::Cpu, &mut all).unwrap();
        assert_eq!(
            all.0,
            [
                (Some(Stage::Text), 1),
                (Some(Stage::Denoise), 4),
                (None, 1),
                (None, 2),
                (None, 3),
                (None, 4),
                (Some(Stage::Decode), 1)
            ]
        );
        assert_eq!((frames.count, frames.width, frames.height), (9, 64, 64));
        assert_eq!(frames.rgb.len(), 9 * frames.frame_len());

        let mut stopped = Record(Vec::new(), 2);
        let error = generate("x", &shape, 3, Device::Cpu, &mut stopped).unwrap_err();
        assert!(matches!(error, TinyError::Stopped(Stop::Cancelled)));
        assert_eq!(stopped.0.last(), Some(&(None, 2)));
    }

    #[test]
    fn frames_are_not_constant() {
        let frames = generate("x", &shape(64, 64, 9, 2), 5, Device::Cpu, &mut Ignore).unwrap();
        let first = frames.rgb[0];
        assert!(frames.rgb.iter().any(|&b| b != first));
    }
}
