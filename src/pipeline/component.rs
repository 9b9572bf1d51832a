//! A staged pipeline's parts: its components (model files with a role, a dtype, a size and a
//! placement), the stages that use them in order, and the model constants the worker needs
//! to wire them together.
//!
//! A component is two files: TorchScript code whose parameters are empty placeholders, and
//! a safetensors file with the weights, named as the code's parameters are. Keeping the
//! weights out of the TorchScript archive is what lets the worker load them its own way
//! (parallel reads, pinned staging, overlapped copies) and stream them block by block;
//! docs/pipeline-format.md describes the methods each role must have.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ByteSize;

/// What a component does, which fixes the TorchScript interface the worker calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Token ids in, prompt embedding out.
    TextEncoder,
    /// Stereo waveform at the model's rate in, audio conditioning tokens out.
    AudioEncoder,
    /// Reference image in, first-frame latent out.
    ImageEncoder,
    /// Noisy latents, noise level and conditioning in, velocity out (both denoising stages).
    Transformer,
    /// Latents in, latents at twice the resolution out.
    Upsampler,
    /// Latents in, pixels out (decoded in tiles).
    VaeDecoder,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::TextEncoder => "text-encoder",
            Role::AudioEncoder => "audio-encoder",
            Role::ImageEncoder => "image-encoder",
            Role::Transformer => "transformer",
            Role::Upsampler => "upsampler",
            Role::VaeDecoder => "vae-decoder",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a component's weights live while its stage runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Loaded onto the GPU for its stages, freed after the last one.
    #[default]
    Gpu,
    /// Loaded onto the GPU at its first stage and kept until the worker exits, or from job
    /// to job in one process (what a persistent server does; here for comparison). The
    /// estimate counts it from the first stage on.
    Resident,
    /// Runs on the CPU; only its inputs and outputs cross to the GPU.
    Cpu,
    /// Weights stay in pinned host memory; blocks are copied to the GPU one at a time, the
    /// next one prefetched on a second CUDA stream while the current one computes.
    Stream,
    /// `gpu` when the lease has room for the component and its activations, else `stream`
    /// (or `cpu` for a component without blocks): decided when its stage starts.
    Auto,
}

impl Placement {
    pub const ALL: [Placement; 5] = [
        Placement::Gpu,
        Placement::Resident,
        Placement::Cpu,
        Placement::Stream,
        Placement::Auto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Gpu => "gpu",
            Placement::Resident => "resident",
            Placement::Cpu => "cpu",
            Placement::Stream => "stream",
            Placement::Auto => "auto",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(text: &str) -> Result<Placement, String> {
        Placement::ALL
            .into_iter()
            .find(|p| p.name() == text)
            .ok_or_else(|| {
                format!(
                    "`{}` is not a placement: use gpu, resident, cpu, stream or auto",
                    crate::echo::echo(text)
                )
            })
    }
}

/// The precision a component's weights are stored in, and what it computes in.
///
/// `bf16`, `f16` and `f32` store every weight as they compute. The quantized dtypes store a
/// text encoder's large linear matrices in fewer bits and compute in bf16: the generated
/// code dequantizes each matrix on the device, inside the forward, just before its matmul
/// (docs/pipeline-format.md, "Quantized text encoders"):
/// - `nf4`: 4-bit NormalFloat in blocks of 64 with double-quantized absmax scales, the
///   format bitsandbytes loads the seed's Gemma-3-12B encoder in (~4x smaller than bf16);
/// - `fp8-e4m3`: float8 e4m3 with one float32 scale per output channel (~2x smaller).
///
/// Norms, embeddings and the output projection stay bf16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Bf16,
    F16,
    F32,
    Nf4,
    #[serde(rename = "fp8-e4m3")]
    Fp8E4m3,
}

impl Dtype {
    pub const ALL: [Dtype; 5] = [
        Dtype::Bf16,
        Dtype::F16,
        Dtype::F32,
        Dtype::Nf4,
        Dtype::Fp8E4m3,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
            Dtype::Nf4 => "nf4",
            Dtype::Fp8E4m3 => "fp8-e4m3",
        }
    }

    /// Whether the weights are stored quantized (and dequantized in the forward).
    pub fn is_quantized(self) -> bool {
        matches!(self, Dtype::Nf4 | Dtype::Fp8E4m3)
    }

    /// What the component computes in, and what its float inputs are cast to: the dtype
    /// itself, or bf16 for a quantized one.
    pub fn compute(self) -> Dtype {
        if self.is_quantized() {
            Dtype::Bf16
        } else {
            self
        }
    }

    /// The roles whose generated code can dequantize this dtype: every role for the plain
    /// ones, the text encoder for the quantized ones.
    pub fn takes(self, role: Role) -> bool {
        !self.is_quantized() || role == Role::TextEncoder
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;

    fn from_str(text: &str) -> Result<Dtype, String> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name() == text)
            .ok_or_else(|| {
                format!(
                    "`{}` is not a dtype: use bf16, f16, f32, nf4 or fp8-e4m3",
                    crate::echo::echo(text)
                )
            })
    }
}

/// One model file of the pipeline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub role: Role,
    /// TorchScript code, relative to the pipeline directory.
    pub code: PathBuf,
    /// Safetensors weights, relative to the pipeline directory.
    pub weights: PathBuf,
    pub dtype: Dtype,
    /// Size of the weights (what loading it costs on the GPU).
    pub parameter_bytes: ByteSize,
    /// Working memory of one call at the pipeline's default size.
    #[serde(default)]
    pub activations: ByteSize,
    /// Repeated blocks the code exposes through `block(h, c, i)`; 0: not streamable.
    #[serde(default)]
    pub blocks: u32,
    #[serde(default)]
    pub placement: Placement,
    /// SHA-256 of the weights file, written by `make-pipeline`; keys the embedding cache
    /// without hashing tens of GB per job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// The stages of a video job, in the order they run. Their names are what the supervisor
/// shows as a job's progress and what a manifest's `stage` says, so they are part of the
/// contract. Every stage but `mux` runs a component of one role and is listed in a
/// manifest; `mux` is the worker's own last stage (frames and audio into the MP4), so a
/// manifest cannot name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// The prompt becomes an embedding.
    Text,
    /// The soundtrack becomes conditioning tokens.
    Audio,
    /// The reference image becomes a first-frame latent.
    Image,
    /// The sampler turns noise into latents, one report per step.
    Denoise,
    /// Latents are doubled in resolution.
    Upsample,
    /// The sampler refines the upsampled latents, one report per step.
    Refine,
    /// Latents become RGB frames.
    Decode,
    /// Frames (and the request's audio) become the MP4.
    #[serde(skip)]
    Mux,
}

impl Stage {
    pub const ALL: [Stage; 8] = [
        Stage::Text,
        Stage::Audio,
        Stage::Image,
        Stage::Denoise,
        Stage::Upsample,
        Stage::Refine,
        Stage::Decode,
        Stage::Mux,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Text => "text",
            Stage::Audio => "audio",
            Stage::Image => "image",
            Stage::Denoise => "denoise",
            Stage::Upsample => "upsample",
            Stage::Refine => "refine",
            Stage::Decode => "decode",
            Stage::Mux => "mux",
        }
    }

    /// The role of the component the stage runs; `None` for `mux`, which runs none.
    pub fn role(self) -> Option<Role> {
        match self {
            Stage::Text => Some(Role::TextEncoder),
            Stage::Audio => Some(Role::AudioEncoder),
            Stage::Image => Some(Role::ImageEncoder),
            Stage::Denoise | Stage::Refine => Some(Role::Transformer),
            Stage::Upsample => Some(Role::Upsampler),
            Stage::Decode => Some(Role::VaeDecoder),
            Stage::Mux => None,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stage, in the order the manifest lists them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    pub stage: Stage,
    /// The component it runs (a key of `[components]`).
    pub component: String,
    /// Sampler steps; for `denoise` the request's `steps` (or the default) wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale; above 1 the conditional and unconditional passes
    /// run as one batch of two, so a streamed block is copied once for both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance: Option<f64>,
    /// Shift of the sigma schedule (`shift * t / (1 + (shift - 1) * t)`); 1: linear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shift: Option<f64>,
    /// For `refine`: the noise level the upsampled latents are re-noised to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sigma_start: Option<f64>,
}

/// How a VAE decode is cut into tiles, in latent units.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TilingSpec {
    pub spatial: i64,
    pub spatial_overlap: i64,
    pub temporal: i64,
    pub temporal_overlap: i64,
}

/// Constants the worker needs to connect the components.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub latent_channels: u32,
    /// Pixels per latent pixel, each way (32 for LTX-2).
    pub spatial_factor: u32,
    /// Frames per latent frame after the first (8 for LTX-2).
    pub temporal_factor: u32,
    /// The first denoising stage runs at 1/this resolution and is upsampled after (2 for
    /// a two-stage pipeline, 1 for one stage).
    #[serde(default = "one")]
    pub low_res_factor: u32,
    /// Prompt length in tokens (byte-level tokens, padded or cut).
    pub text_tokens: u32,
    pub audio_sample_rate: u32,
    pub audio_channels: u16,
    pub tiling: TilingSpec,
}

fn one() -> u32 {
    1
}

/// Placement overrides for one request: component name to placement.
pub type Placements = BTreeMap<String, Placement>;

/// A placement that could not be read, with the component it was for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{component}: {rule}")]
pub struct PlacementError {
    pub component: String,
    pub rule: String,
}

/// Reads the wire's `component -> placement name` map (requests, assignments).
pub fn parse_placements<'a>(
    pairs: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<Placements, PlacementError> {
    pairs
        .into_iter()
        .map(|(component, value)| {
            value
                .parse()
                .map(|p| (component.clone(), p))
                .map_err(|rule| PlacementError {
                    component: crate::echo::echo(component),
                    rule,
                })
        })
        .collect()
}

/// Reads a command line's `COMPONENT=PLACEMENT` pairs into the wire's map (the placements
/// themselves are checked where they are used).
pub fn placement_pairs(pairs: &[String]) -> Result<BTreeMap<String, String>, String> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(c, p)| (c.trim().to_string(), p.trim().to_string()))
                .ok_or_else(|| {
                    format!(
                        "--placement {pair}: write COMPONENT=PLACEMENT, such as text_encoder=stream"
                    )
                })
        })
        .collect()
}
