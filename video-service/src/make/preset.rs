//! The generated pipelines: their manifests and the dimensions of their components.
//!
//! - `tiny`: a few MB in float32, runs on a CPU in tests and in the README's main job;
//! - `ltx-full`: the component sizes of LTX-2.3 in bf16: a text encoder of ~28 GB (a
//!   Gemma-3-12B-sized stack of 48 layers plus 12 connector layers, ~23-27 GB + ~5.9 GB in
//!   the real model), one ~35.5 GB transformer of 48 blocks (~0.74 GB each) used by both
//!   denoising stages, a latent upsampler and a VAE decoder under 1 GB each;
//! - `ltx-half`: the same layout with every block at half the bytes (~33 GB in all).
//!
//! Real LTX-2.3 keeps one transformer and fuses a distilled LoRA for its second stage; the
//! generated pipelines run the same transformer in both stages without a LoRA.

use std::collections::BTreeMap;

use arbiter::ByteSize;
use arbiter::pipeline::{
    Component, Defaults, Dtype, Manifest, Memory, Model, Placement, Role, Rules, StageKind,
    StageSpec, TilingSpec,
};
use serde_json::{Value, json};

use crate::pipeline::tokens::VOCAB;

/// A pipeline `make-pipeline` can generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    Tiny,
    LtxHalf,
    LtxFull,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::LtxHalf => "ltx-half",
            Preset::LtxFull => "ltx-full",
        }
    }
}

/// One component to generate: its manifest entry (sizes filled in after generation) and
/// the dimensions the generator builds it with.
pub struct Part {
    pub name: &'static str,
    pub role: Role,
    pub dims: Value,
    pub blocks: u32,
    pub activations: ByteSize,
}

/// The manifest (components without sizes yet) and the parts to generate.
pub struct Plan {
    pub manifest: Manifest,
    pub dtype: Dtype,
    pub parts: Vec<Part>,
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

pub fn plan(preset: Preset, name: &str) -> Plan {
    let (dtype, parts, model, rules, defaults, margin) = match preset {
        Preset::Tiny => (
            Dtype::F32,
            parts(
                Dims {
                    channels: 8,
                    text_dim: 64,
                    text_heads: 4,
                    text_ffn: 128,
                    text_blocks: 2,
                    text_out: 48,
                    audio_hidden: 32,
                    audio_dim: 32,
                    image_hidden: 16,
                    dit_dim: 64,
                    dit_heads: 4,
                    dit_ffn: 128,
                    dit_blocks: 3,
                    up_hidden: 16,
                    up_layers: 1,
                    vae_hidden: 16,
                    vae_layers: 1,
                },
                [16 * MIB, 16 * MIB, 16 * MIB, 64 * MIB, 16 * MIB, 64 * MIB],
            ),
            Model {
                latent_channels: 8,
                spatial_factor: 32,
                temporal_factor: 8,
                low_res_factor: 2,
                text_tokens: 32,
                audio_sample_rate: 16_000,
                audio_channels: 2,
                tiling: TilingSpec {
                    spatial: 4,
                    spatial_overlap: 1,
                    temporal: 2,
                    temporal_overlap: 1,
                },
            },
            Rules {
                width_multiple: 64,
                height_multiple: 64,
                min_side: 64,
                max_width: 512,
                max_height: 512,
                frames_step: 8,
                frames_offset: 1,
                max_frames: 49,
                min_fps: 1,
                max_fps: 60,
                max_steps: 50,
                max_duration_s: 10.0,
            },
            Defaults {
                width: 128,
                height: 128,
                frames: 17,
                fps: 8,
                steps: 4,
            },
            64 * MIB,
        ),
        Preset::LtxHalf | Preset::LtxFull => {
            let full = preset == Preset::LtxFull;
            let dims = if full {
                Dims {
                    channels: 128,
                    text_dim: 3840,
                    text_heads: 30,
                    text_ffn: 15360,
                    text_blocks: 60,
                    text_out: 3840,
                    audio_hidden: 8192,
                    audio_dim: 2048,
                    image_hidden: 4096,
                    dit_dim: 4096,
                    dit_heads: 32,
                    dit_ffn: 19200,
                    dit_blocks: 48,
                    up_hidden: 1024,
                    up_layers: 4,
                    vae_hidden: 1024,
                    vae_layers: 8,
                }
            } else {
                Dims {
                    channels: 128,
                    text_dim: 2688,
                    text_heads: 21,
                    text_ffn: 10752,
                    text_blocks: 60,
                    text_out: 2688,
                    audio_hidden: 4096,
                    audio_dim: 1536,
                    image_hidden: 2048,
                    dit_dim: 2944,
                    dit_heads: 23,
                    dit_ffn: 13568,
                    dit_blocks: 48,
                    up_hidden: 768,
                    up_layers: 4,
                    vae_hidden: 768,
                    vae_layers: 8,
                }
            };
            let scale = if full { 2 } else { 1 };
            (
                Dtype::Bf16,
                parts(
                    dims,
                    [256 * MIB, 256 * MIB, 256 * MIB, scale * GIB, 512 * MIB, GIB],
                ),
                Model {
                    latent_channels: 128,
                    spatial_factor: 32,
                    temporal_factor: 8,
                    low_res_factor: 2,
                    text_tokens: 256,
                    audio_sample_rate: 16_000,
                    audio_channels: 2,
                    tiling: TilingSpec {
                        spatial: 8,
                        spatial_overlap: 2,
                        temporal: 4,
                        temporal_overlap: 1,
                    },
                },
                Rules {
                    width_multiple: 64,
                    height_multiple: 64,
                    min_side: 256,
                    max_width: 1920,
                    max_height: 1088,
                    frames_step: 8,
                    frames_offset: 1,
                    max_frames: 257,
                    min_fps: 1,
                    max_fps: 60,
                    max_steps: 60,
                    max_duration_s: 20.0,
                },
                Defaults {
                    width: 768,
                    height: 512,
                    frames: 121,
                    fps: 24,
                    steps: 8,
                },
                2 * GIB,
            )
        }
    };
    let stage = |stage, component: &str| StageSpec {
        stage,
        component: component.into(),
        steps: None,
        guidance: None,
        shift: None,
        sigma_start: None,
    };
    let stages = vec![
        stage(StageKind::Text, "text_encoder"),
        stage(StageKind::Audio, "audio_encoder"),
        stage(StageKind::Image, "image_encoder"),
        StageSpec {
            guidance: Some(3.0),
            shift: Some(3.0),
            ..stage(StageKind::Denoise, "transformer")
        },
        stage(StageKind::Upsample, "upsampler"),
        StageSpec {
            steps: Some(if preset == Preset::Tiny { 2 } else { 3 }),
            sigma_start: Some(0.4),
            ..stage(StageKind::Refine, "transformer")
        },
        stage(StageKind::Decode, "vae_decoder"),
    ];
    let components: BTreeMap<String, Component> = parts
        .iter()
        .map(|part| {
            (
                part.name.to_string(),
                Component {
                    role: part.role,
                    code: format!("{}.pt", part.name).into(),
                    weights: format!("{}.safetensors", part.name).into(),
                    dtype,
                    // Filled in from what the generator wrote.
                    parameter_bytes: ByteSize(0),
                    activations: part.activations,
                    blocks: part.blocks,
                    placement: Placement::Gpu,
                    sha256: None,
                },
            )
        })
        .collect();
    let manifest = Manifest {
        name: name.into(),
        description: format!(
            "generated by arbiter-video make-pipeline --preset {}: the shapes and sizes of an LTX-2.3-like audio-to-video pipeline with RANDOM weights (its video is noise)",
            preset.name()
        ),
        command: None,
        rules,
        defaults,
        memory: Memory {
            peak: None,
            per_megapixel_frame: ByteSize(0),
            margin: ByteSize(margin),
            context: ByteSize(640 * MIB),
        },
        model: Some(model),
        components,
        stages,
    };
    Plan {
        manifest,
        dtype,
        parts,
    }
}

struct Dims {
    channels: u32,
    text_dim: u32,
    text_heads: u32,
    text_ffn: u32,
    text_blocks: u32,
    text_out: u32,
    audio_hidden: u32,
    audio_dim: u32,
    image_hidden: u32,
    dit_dim: u32,
    dit_heads: u32,
    dit_ffn: u32,
    dit_blocks: u32,
    up_hidden: u32,
    up_layers: u32,
    vae_hidden: u32,
    vae_layers: u32,
}

/// The six components, with activations per component in the order text, audio, image,
/// transformer, upsampler, VAE decoder.
fn parts(d: Dims, activations: [u64; 6]) -> Vec<Part> {
    let part = |name, role, dims, blocks, activations| Part {
        name,
        role,
        dims,
        blocks,
        activations: ByteSize(activations),
    };
    vec![
        part(
            "text_encoder",
            Role::TextEncoder,
            json!({"vocab": VOCAB, "dim": d.text_dim, "heads": d.text_heads, "ffn": d.text_ffn,
                   "blocks": d.text_blocks, "out_dim": d.text_out}),
            d.text_blocks,
            activations[0],
        ),
        part(
            "audio_encoder",
            Role::AudioEncoder,
            json!({"channels": 2, "hop": 640, "hidden": d.audio_hidden, "dim": d.audio_dim}),
            0,
            activations[1],
        ),
        part(
            "image_encoder",
            Role::ImageEncoder,
            json!({"channels": d.channels, "hidden": d.image_hidden, "spatial": 32}),
            0,
            activations[2],
        ),
        part(
            "transformer",
            Role::Transformer,
            json!({"channels": d.channels, "dim": d.dit_dim, "heads": d.dit_heads,
                   "ffn": d.dit_ffn, "blocks": d.dit_blocks, "text_dim": d.text_out,
                   "audio_dim": d.audio_dim}),
            d.dit_blocks,
            activations[3],
        ),
        part(
            "upsampler",
            Role::Upsampler,
            json!({"channels": d.channels, "hidden": d.up_hidden, "layers": d.up_layers}),
            0,
            activations[4],
        ),
        part(
            "vae_decoder",
            Role::VaeDecoder,
            json!({"channels": d.channels, "hidden": d.vae_hidden, "layers": d.vae_layers,
                   "spatial": 32, "temporal": 8}),
            0,
            activations[5],
        ),
    ]
}

impl Part {
    /// How many parameters the generator makes for this part: the same shapes as
    /// generator/make_pipeline.py, counted here so that a preset's sizes can be checked
    /// against the model it imitates without writing tens of GB.
    pub fn parameters(&self) -> u64 {
        let d = |key: &str| self.dims.get(key).and_then(Value::as_u64).unwrap_or(0);
        match self.role {
            Role::TextEncoder => {
                let (dim, ffn) = (d("dim"), d("ffn"));
                let block = 4 * dim * dim + 3 * dim * ffn + 2 * dim;
                d("vocab") * dim + d("blocks") * block + dim + d("out_dim") * dim
            }
            Role::AudioEncoder => {
                let hidden = d("hidden");
                hidden * d("channels") * d("hop") + hidden + d("dim") * hidden
            }
            Role::ImageEncoder => {
                let (hidden, s) = (d("hidden"), d("spatial"));
                hidden * 3 * s * s + d("channels") * hidden
            }
            Role::Transformer => {
                let (dim, ffn, c) = (d("dim"), d("ffn"), d("channels"));
                let block = 8 * dim * dim + 3 * dim * ffn + 3 * dim;
                dim * c
                    + dim * 64
                    + dim * dim
                    + dim * d("text_dim")
                    + dim * d("audio_dim")
                    + dim * c
                    + d("blocks") * block
                    + dim
                    + c * dim
            }
            Role::Upsampler => {
                let (h, c) = (d("hidden"), d("channels"));
                h * c * 27 + d("layers") * h * h * 27 + c * h * 27
            }
            Role::VaeDecoder => {
                let (h, c, s, t) = (d("hidden"), d("channels"), d("spatial"), d("temporal"));
                h * c * 27 + d("layers") * h * h * 27 + 3 * t * s * s * h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(preset: Preset, name: &str) -> u64 {
        let plan = plan(preset, "p");
        let part = plan.parts.iter().find(|p| p.name == name).unwrap();
        part.parameters() * 2 // bf16
    }

    #[test]
    fn ltx_full_has_the_component_sizes_of_ltx_2_3() {
        let gb = |b: u64| b as f64 / 1e9;
        // Transformer ~35.4 GB in 48 blocks of ~0.74 GB.
        let transformer = gb(bytes(Preset::LtxFull, "transformer"));
        assert!((34.5..36.5).contains(&transformer), "{transformer}");
        assert!((0.70..0.78).contains(&(transformer / 48.0)));
        // Gemma-3-12B (~23-27 GB) plus the text connector (~5.9 GB).
        let text = gb(bytes(Preset::LtxFull, "text_encoder"));
        assert!((27.0..33.0).contains(&text), "{text}");
        for small in ["upsampler", "vae_decoder", "audio_encoder", "image_encoder"] {
            assert!(gb(bytes(Preset::LtxFull, small)) < 1.0, "{small}");
        }
    }

    #[test]
    fn ltx_half_is_half_of_ltx_full() {
        for name in ["text_encoder", "transformer"] {
            let ratio = bytes(Preset::LtxHalf, name) as f64 / bytes(Preset::LtxFull, name) as f64;
            assert!((0.45..0.55).contains(&ratio), "{name}: {ratio}");
        }
    }
}
