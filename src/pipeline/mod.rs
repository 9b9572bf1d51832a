//! A video pipeline's manifest: the one description both sides read.
//!
//! The supervisor reads it to validate a request before accepting it (sizes, frame rule,
//! fps, steps, duration, placements) and to size the job's lease ([`memory`]); the worker
//! reads it to run the pipeline. A pipeline is a directory with `manifest.toml` naming its
//! components and stages ([`component`]); `tiny` is built in (no files, one seeded model)
//! so that the supervisor's tests need nothing on disk, and `arbiter-video make-pipeline`
//! generates staged ones.

pub mod component;
pub mod memory;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ByteSize;
pub use component::{
    Component, Dtype, Model, Placement, PlacementError, Placements, Role, Stage, StageSpec,
    TilingSpec, parse_placements, placement_pairs,
};
pub use memory::StageEstimate;

/// The manifest file inside a pipeline directory.
pub const MANIFEST_FILE: &str = "manifest.toml";

/// The built-in pipeline: small enough to run on a CPU in tests.
pub const TINY: &str = "tiny";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Run this command instead of the built-in worker (an external pipeline, such as the
    /// official Python one). It gets the request as JSON on stdin and reports progress as
    /// JSON lines on stdout; see docs/external-pipelines.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    pub rules: Rules,
    pub defaults: Defaults,
    pub memory: Memory,
    /// Constants that connect the components; required when there are stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<Model>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, Component>,
    /// Run in this order; each frees what no later stage needs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSpec>,
}

/// What the model accepts. Every rule is checked before any GPU work.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    pub width_multiple: u32,
    pub height_multiple: u32,
    pub min_side: u32,
    pub max_width: u32,
    pub max_height: u32,
    /// Frame counts are `frames_step * k + frames_offset` (8k+1 for LTX-2).
    pub frames_step: u32,
    pub frames_offset: u32,
    pub max_frames: u32,
    pub min_fps: u32,
    pub max_fps: u32,
    pub max_steps: u32,
    /// Longest video, in seconds (frames / fps).
    pub max_duration_s: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    pub steps: u32,
}

/// How much GPU memory a job needs: the lease is the peak plus `margin`. The peak is the
/// largest stage of the components' estimate ([`memory`]), or `peak` when given (for
/// external pipelines and to cap a staged one, whose `auto` components then stream).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Peak for the default size: the largest stage's weights and activations plus the CUDA
    /// context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak: Option<ByteSize>,
    /// With `peak`: extra per megapixel-frame above the default size.
    #[serde(default)]
    pub per_megapixel_frame: ByteSize,
    /// Headroom added to the estimate.
    pub margin: ByteSize,
    /// What a CUDA context costs in the worker (about 0.6 GiB on an H100).
    #[serde(default = "default_context")]
    pub context: ByteSize,
}

fn default_context() -> ByteSize {
    ByteSize(640 << 20)
}

/// A request's sizes with defaults filled in (all 0, the default value: the sizes as a
/// request leaves them, for the pipeline to fill).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: u32,
    pub steps: u32,
}

/// A rule a request broke: the field and what the rule is, for INVALID_ARGUMENT.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Violation {
    pub field: &'static str,
    pub rule: String,
}

/// Why a pipeline could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Manifest {
    /// The built-in `tiny` pipeline: 64x64 to 512x512, frames 8k+1 up to 49, a CPU-sized
    /// denoiser. Its memory figures are what it would hold on a GPU.
    pub fn tiny() -> Manifest {
        Manifest {
            name: TINY.into(),
            description:
                "built in: a small seeded denoiser, for tests and the demo (its video is noise)"
                    .into(),
            command: None,
            rules: Rules {
                width_multiple: 32,
                height_multiple: 32,
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
            defaults: Defaults {
                width: 128,
                height: 128,
                frames: 17,
                fps: 8,
                steps: 4,
            },
            memory: Memory {
                peak: Some(ByteSize(1 << 30)),
                per_megapixel_frame: ByteSize(64 << 20),
                margin: ByteSize(256 << 20),
                context: default_context(),
            },
            model: None,
            components: BTreeMap::new(),
            stages: Vec::new(),
        }
    }

    /// Reads `<dir>/manifest.toml`.
    pub fn load(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        manifest.check().map_err(|message| ManifestError::Invalid {
            path: path.clone(),
            message,
        })?;
        for (name, code, weights) in manifest.component_files(dir) {
            for (what, file) in [("code", code), ("weights", weights)] {
                if !file.is_file() {
                    return Err(ManifestError::Invalid {
                        path,
                        message: format!(
                            "components.{name}: {what} file {} is missing",
                            file.display()
                        ),
                    });
                }
            }
        }
        Ok(manifest)
    }

    /// Rules that make a manifest unusable, caught at load rather than on the first job.
    fn check(&self) -> Result<(), String> {
        let r = &self.rules;
        if r.width_multiple == 0 || r.height_multiple == 0 || r.frames_step == 0 {
            return Err(
                "rules: width_multiple, height_multiple and frames_step must be at least 1".into(),
            );
        }
        if r.min_fps == 0 || r.min_fps > r.max_fps {
            return Err("rules: fps range is empty (need 1 <= min_fps <= max_fps)".into());
        }
        if let Some(command) = &self.command
            && (command.is_empty() || command[0].is_empty())
        {
            return Err("command is empty: name the program to run, or remove command".into());
        }
        let d = &self.defaults;
        self.shape(d.width, d.height, d.frames, d.fps, d.steps)
            .map_err(|v| format!("defaults break the rules: {v}"))?;
        if self.stages.is_empty() && self.memory.peak.is_none() {
            return Err("memory: give peak (there are no components to estimate it from)".into());
        }
        if !self.stages.is_empty() {
            if self.defaults.steps == 0 {
                return Err("defaults: steps must be at least 1".into());
            }
            self.check_stages()?;
        }
        Ok(())
    }

    /// The staged pipeline's wiring: every stage runs a component of its role, in an order
    /// the data allows, and the rules agree with the model's factors.
    fn check_stages(&self) -> Result<(), String> {
        let model = self
            .model
            .as_ref()
            .ok_or("[model] is missing: a pipeline with stages needs its constants")?;
        if model.latent_channels == 0
            || model.spatial_factor == 0
            || model.temporal_factor == 0
            || model.low_res_factor == 0
            || model.text_tokens == 0
        {
            return Err("model: latent_channels, spatial_factor, temporal_factor, low_res_factor and text_tokens must be at least 1".into());
        }
        if model.audio_sample_rate == 0 || !(1..=2).contains(&model.audio_channels) {
            return Err(
                "model: audio_sample_rate must be positive and audio_channels 1 or 2".into(),
            );
        }
        if model.low_res_factor > 2 {
            return Err(format!(
                "model: low_res_factor {} is not supported: the upsampler doubles, so use 1 or 2",
                model.low_res_factor
            ));
        }
        let t = model.tiling;
        if t.spatial < 1
            || t.temporal < 2
            || t.spatial_overlap < 0
            || t.temporal_overlap < 1
            || t.spatial_overlap >= t.spatial
            || t.temporal_overlap >= t.temporal
        {
            return Err("model.tiling: need spatial > spatial_overlap >= 0 and temporal > temporal_overlap >= 1".into());
        }
        let unit = model.spatial_factor * model.low_res_factor;
        let r = &self.rules;
        if !r.width_multiple.is_multiple_of(unit) || !r.height_multiple.is_multiple_of(unit) {
            return Err(format!(
                "rules: width_multiple and height_multiple must be multiples of {unit} (spatial_factor x low_res_factor)"
            ));
        }
        if r.frames_step != model.temporal_factor || r.frames_offset != 1 {
            return Err(format!(
                "rules: frames must be {}k+1 to match the model's temporal_factor",
                model.temporal_factor
            ));
        }
        for (name, c) in &self.components {
            if c.parameter_bytes.0 == 0 {
                return Err(format!(
                    "components.{name}: parameter_bytes must be positive"
                ));
            }
            if c.placement == Placement::Stream && c.blocks == 0 {
                return Err(format!(
                    "components.{name}: placement stream needs blocks (the code's block method)"
                ));
            }
            if !c.dtype.takes(c.role) {
                return Err(format!(
                    "components.{name}: dtype {} is for text encoders only (their generated code dequantizes it in the forward); store a {} in bf16, f16 or f32",
                    c.dtype, c.role
                ));
            }
        }
        let mut seen: Vec<Stage> = Vec::new();
        for (i, spec) in self.stages.iter().enumerate() {
            let at = format!("stages[{i}] ({})", spec.stage);
            let component = self.components.get(&spec.component).ok_or_else(|| {
                format!(
                    "{at}: component `{}` is not in [components]",
                    spec.component
                )
            })?;
            let Some(role) = spec.stage.role() else {
                return Err(format!(
                    "{at}: the worker runs this stage itself, not a manifest"
                ));
            };
            if component.role != role {
                return Err(format!(
                    "{at}: runs `{}`, a {}, but a {} stage needs a {}",
                    spec.component, component.role, spec.stage, role
                ));
            }
            if seen.contains(&spec.stage) {
                return Err(format!("{at}: a pipeline has one {} stage", spec.stage));
            }
            let needs: &[Stage] = match spec.stage {
                // (`mux` was refused above.)
                Stage::Text | Stage::Audio | Stage::Image | Stage::Mux => &[],
                // Audio-to-video: a request without audio is conditioned on silence.
                Stage::Denoise => &[Stage::Text, Stage::Audio],
                Stage::Upsample => &[Stage::Denoise],
                Stage::Refine => &[Stage::Upsample],
                Stage::Decode => &[Stage::Denoise],
            };
            if let Some(missing) = needs.iter().find(|k| !seen.contains(k)) {
                return Err(format!("{at}: must come after the {missing} stage"));
            }
            if matches!(spec.stage, Stage::Audio | Stage::Image) && seen.contains(&Stage::Denoise) {
                return Err(format!("{at}: conditioning must come before denoise"));
            }
            if seen.contains(&Stage::Decode) {
                return Err(format!("{at}: nothing may follow decode"));
            }
            if spec
                .sigma_start
                .is_some_and(|s| !(0.0..=1.0).contains(&s) || s == 0.0)
            {
                return Err(format!("{at}: sigma_start must be in (0, 1]"));
            }
            if spec.guidance.is_some_and(|g| !(g.is_finite() && g >= 1.0)) {
                return Err(format!("{at}: guidance must be at least 1"));
            }
            if spec.shift.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
                return Err(format!("{at}: shift must be positive"));
            }
            if spec
                .steps
                .is_some_and(|s| s == 0 || s > self.rules.max_steps)
            {
                return Err(format!(
                    "{at}: steps must be from 1 to rules.max_steps ({})",
                    self.rules.max_steps
                ));
            }
            seen.push(spec.stage);
        }
        if !seen.contains(&Stage::Decode) {
            return Err("stages: the last stage must be decode".into());
        }
        if model.low_res_factor > 1 && !seen.contains(&Stage::Refine) {
            return Err(format!(
                "stages: low_res_factor {} needs upsample and refine stages",
                model.low_res_factor
            ));
        }
        if model.low_res_factor == 1 && seen.contains(&Stage::Upsample) {
            return Err("stages: upsample needs model.low_res_factor 2".into());
        }
        if let Some(name) = self
            .components
            .keys()
            .find(|name| !self.stages.iter().any(|s| s.component == **name))
        {
            return Err(format!("components.{name}: no stage runs it"));
        }
        Ok(())
    }

    /// Checks a request's placement overrides against the components.
    pub fn check_placements(&self, overrides: &Placements) -> Result<(), Violation> {
        for (name, placement) in overrides {
            let Some(component) = self.components.get(name) else {
                return Err(Violation {
                    field: "placement",
                    rule: format!(
                        "pipeline {} has no component `{}`; it has: {}",
                        self.name,
                        crate::echo::echo(name),
                        self.components
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
            };
            if *placement == Placement::Stream && component.blocks == 0 {
                return Err(Violation {
                    field: "placement",
                    rule: format!("`{name}` cannot stream: it has no blocks; use gpu, cpu or auto"),
                });
            }
        }
        Ok(())
    }

    /// The files a staged pipeline's components need, relative paths resolved in `dir`.
    pub fn component_files(&self, dir: &Path) -> Vec<(String, PathBuf, PathBuf)> {
        self.components
            .iter()
            .map(|(name, c)| (name.clone(), dir.join(&c.code), dir.join(&c.weights)))
            .collect()
    }

    /// Fills in defaults (0 means default) and checks every rule.
    pub fn shape(
        &self,
        width: u32,
        height: u32,
        frames: u32,
        fps: u32,
        steps: u32,
    ) -> Result<Shape, Violation> {
        let pick = |value: u32, default: u32| if value == 0 { default } else { value };
        let shape = Shape {
            width: pick(width, self.defaults.width),
            height: pick(height, self.defaults.height),
            frames: pick(frames, self.defaults.frames),
            fps: pick(fps, self.defaults.fps),
            steps: pick(steps, self.defaults.steps),
        };
        let r = &self.rules;
        let name = &self.name;
        for (field, value, multiple, max) in [
            ("width", shape.width, r.width_multiple, r.max_width),
            ("height", shape.height, r.height_multiple, r.max_height),
        ] {
            if value % multiple != 0 || value < r.min_side || value > max {
                return Err(Violation {
                    field,
                    rule: format!(
                        "{value} is not allowed: pipeline {name} takes multiples of {multiple} from {} to {max}",
                        r.min_side.div_ceil(multiple) * multiple
                    ),
                });
            }
        }
        if shape.frames < r.frames_offset.max(1)
            || !(shape.frames - r.frames_offset).is_multiple_of(r.frames_step)
            || shape.frames > r.max_frames
        {
            let below = shape.frames.saturating_sub(r.frames_offset) / r.frames_step
                * r.frames_step
                + r.frames_offset;
            return Err(Violation {
                field: "frames",
                rule: format!(
                    "{} is not allowed: pipeline {name} takes {}k+{} frames up to {} (such as {})",
                    shape.frames,
                    r.frames_step,
                    r.frames_offset,
                    r.max_frames,
                    below.clamp(r.frames_offset.max(1), r.max_frames)
                ),
            });
        }
        if shape.fps < r.min_fps || shape.fps > r.max_fps {
            return Err(Violation {
                field: "fps",
                rule: format!(
                    "{} is not allowed: pipeline {name} takes {} to {}",
                    shape.fps, r.min_fps, r.max_fps
                ),
            });
        }
        if shape.steps > r.max_steps {
            return Err(Violation {
                field: "steps",
                rule: format!(
                    "{} is too many: pipeline {name} allows at most {}",
                    shape.steps, r.max_steps
                ),
            });
        }
        let duration = shape.frames as f64 / shape.fps as f64;
        if duration > r.max_duration_s {
            return Err(Violation {
                field: "frames",
                rule: format!(
                    "{} frames at {} fps is {duration:.1} s: pipeline {name} makes at most {} s",
                    shape.frames, shape.fps, r.max_duration_s
                ),
            });
        }
        Ok(shape)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_zeros_and_each_rule_names_its_field() {
        let tiny = Manifest::tiny();
        let shape = tiny.shape(0, 0, 0, 0, 0).unwrap();
        assert_eq!((shape.width, shape.frames), (128, 17));
        assert_eq!(tiny.shape(100, 0, 0, 0, 0).unwrap_err().field, "width");
        assert_eq!(tiny.shape(0, 1024, 0, 0, 0).unwrap_err().field, "height");
        let frames = tiny.shape(0, 0, 16, 0, 0).unwrap_err();
        assert!(
            frames.rule.contains("8k+1") && frames.rule.contains("such as 9"),
            "{frames}"
        );
        assert_eq!(tiny.shape(0, 0, 0, 61, 0).unwrap_err().field, "fps");
        assert_eq!(tiny.shape(0, 0, 0, 0, 51).unwrap_err().field, "steps");
        assert!(
            tiny.shape(0, 0, 49, 1, 0)
                .unwrap_err()
                .rule
                .contains("at most 10 s")
        );
    }

    #[test]
    fn larger_videos_need_larger_leases() {
        let tiny = Manifest::tiny();
        let small = tiny.lease_bytes(&tiny.shape(0, 0, 0, 0, 0).unwrap());
        let large = tiny.lease_bytes(&tiny.shape(512, 512, 49, 8, 0).unwrap());
        assert_eq!(small, (1 << 30) + (256 << 20));
        assert!(large > small);
    }

    #[test]
    fn a_manifest_round_trips_and_bad_ones_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let text = toml::to_string(&Manifest::tiny()).unwrap();
        std::fs::write(dir.path().join(MANIFEST_FILE), &text).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), Manifest::tiny());
        std::fs::write(
            dir.path().join(MANIFEST_FILE),
            text.replace("frames_step = 8", "frames_step = 0"),
        )
        .unwrap();
        assert!(
            Manifest::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("frames_step")
        );
    }

    /// A staged manifest (files created) that loads; tests break one thing at a time.
    const STAGED: &str = r#"
name = "staged"
[rules]
width_multiple = 64
height_multiple = 64
min_side = 64
max_width = 512
max_height = 512
frames_step = 8
frames_offset = 1
max_frames = 49
min_fps = 1
max_fps = 60
max_steps = 50
max_duration_s = 10.0
[defaults]
width = 128
height = 128
frames = 17
fps = 8
steps = 4
[memory]
margin = "64MiB"
[model]
latent_channels = 8
spatial_factor = 32
temporal_factor = 8
low_res_factor = 2
text_tokens = 32
audio_sample_rate = 16000
audio_channels = 2
[model.tiling]
spatial = 4
spatial_overlap = 1
temporal = 2
temporal_overlap = 1
[components.text]
role = "text-encoder"
code = "text.pt"
weights = "text.safetensors"
dtype = "bf16"
parameter_bytes = "8GiB"
activations = "1GiB"
blocks = 8
[components.audio]
role = "audio-encoder"
code = "audio.pt"
weights = "audio.safetensors"
dtype = "bf16"
parameter_bytes = "128MiB"
[components.dit]
role = "transformer"
code = "dit.pt"
weights = "dit.safetensors"
dtype = "bf16"
parameter_bytes = "16GiB"
activations = "4GiB"
blocks = 16
[components.up]
role = "upsampler"
code = "up.pt"
weights = "up.safetensors"
dtype = "bf16"
parameter_bytes = "1GiB"
[components.vae]
role = "vae-decoder"
code = "vae.pt"
weights = "vae.safetensors"
dtype = "bf16"
parameter_bytes = "1GiB"
activations = "2GiB"
[[stages]]
stage = "text"
component = "text"
[[stages]]
stage = "audio"
component = "audio"
[[stages]]
stage = "denoise"
component = "dit"
guidance = 3.0
[[stages]]
stage = "upsample"
component = "up"
[[stages]]
stage = "refine"
component = "dit"
steps = 2
sigma_start = 0.4
[[stages]]
stage = "decode"
component = "vae"
"#;

    fn staged_dir(text: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["text", "audio", "dit", "up", "vae"] {
            std::fs::write(dir.path().join(format!("{name}.pt")), b"code").unwrap();
            std::fs::write(dir.path().join(format!("{name}.safetensors")), b"w").unwrap();
        }
        std::fs::write(dir.path().join(MANIFEST_FILE), text).unwrap();
        dir
    }

    #[test]
    fn each_manifest_error_has_its_own_message() {
        let good = staged_dir(STAGED);
        Manifest::load(good.path()).expect("the staged fixture loads");
        let cases: Vec<(String, &str)> = vec![
            (
                STAGED.replace(
                    "stage = \"refine\"\ncomponent = \"dit\"",
                    "stage = \"refine\"\ncomponent = \"up\"",
                ),
                "needs a transformer",
            ),
            (
                STAGED.replace("component = \"vae\"", "component = \"nope\""),
                "`nope` is not in [components]",
            ),
            (
                STAGED.replace(
                    "stage = \"text\"\ncomponent = \"text\"",
                    "stage = \"upsample\"\ncomponent = \"up\"",
                ),
                "must come after the denoise stage",
            ),
            (
                STAGED.replace("[[stages]]\nstage = \"decode\"\ncomponent = \"vae\"\n", ""),
                "the last stage must be decode",
            ),
            (
                STAGED.replace("low_res_factor = 2", "low_res_factor = 1"),
                "upsample needs model.low_res_factor 2",
            ),
            (
                STAGED.replace("width_multiple = 64", "width_multiple = 32"),
                "multiples of 64",
            ),
            (
                STAGED.replace("frames_step = 8", "frames_step = 4"),
                "to match the model's temporal_factor",
            ),
            (
                STAGED.replace("guidance = 3.0", "guidance = 0.5"),
                "guidance must be at least 1",
            ),
            (
                STAGED.replace("sigma_start = 0.4", "sigma_start = 1.5"),
                "sigma_start must be in (0, 1]",
            ),
            (
                STAGED.replace("temporal_overlap = 1", "temporal_overlap = 0"),
                "model.tiling",
            ),
            (
                STAGED.replace("audio_channels = 2", "audio_channels = 6"),
                "audio_channels 1 or 2",
            ),
            (STAGED.replace("[model]", "[unused]"), "missing field `latent_channels`"),
            (
                STAGED.replacen(
                    "[[stages]]",
                    "[components.extra]\nrole = \"upsampler\"\ncode = \"up.pt\"\nweights = \"up.safetensors\"\ndtype = \"bf16\"\nparameter_bytes = \"1GiB\"\n[[stages]]",
                    1,
                ),
                "components.extra: no stage runs it",
            ),
            (
                STAGED.replace("blocks = 16", "blocks = 0\nplacement = \"stream\""),
                "placement stream needs blocks",
            ),
            (
                STAGED.replace("role = \"upsampler\"", "role = \"painter\""),
                "unknown variant",
            ),
            (
                STAGED.replacen(
                    "[[stages]]\nstage = \"text\"\ncomponent = \"text\"\n",
                    "[[stages]]\nstage = \"text\"\ncomponent = \"text\"\n[[stages]]\nstage = \"text\"\ncomponent = \"text\"\n",
                    1,
                ),
                "a pipeline has one text stage",
            ),
            (
                STAGED.replace(
                    "dtype = \"bf16\"\nparameter_bytes = \"16GiB\"",
                    "dtype = \"int4\"\nparameter_bytes = \"16GiB\"",
                ),
                "unknown variant `int4`, expected one of `bf16`, `f16`, `f32`, `nf4`, `fp8-e4m3`",
            ),
            (
                STAGED.replace(
                    "dtype = \"bf16\"\nparameter_bytes = \"16GiB\"",
                    "dtype = \"nf4\"\nparameter_bytes = \"16GiB\"",
                ),
                "components.dit: dtype nf4 is for text encoders only (their generated code dequantizes it in the forward); store a transformer in bf16, f16 or f32",
            ),
        ];
        let mut seen = std::collections::HashSet::new();
        for (text, expected) in cases {
            let dir = staged_dir(&text);
            let error = Manifest::load(dir.path()).unwrap_err().to_string();
            assert!(error.contains(expected), "expected {expected:?} in {error}");
            assert!(
                seen.insert(error.clone()),
                "two cases gave the same message: {error}"
            );
        }
        std::fs::remove_file(good.path().join("dit.safetensors")).unwrap();
        let missing = Manifest::load(good.path()).unwrap_err().to_string();
        assert!(
            missing.contains("components.dit: weights file") && missing.contains("missing"),
            "{missing}"
        );
    }

    #[test]
    fn a_text_encoder_may_be_stored_quantized_and_computes_in_bf16() {
        for (name, dtype) in [("nf4", Dtype::Nf4), ("fp8-e4m3", Dtype::Fp8E4m3)] {
            let text = STAGED.replacen("dtype = \"bf16\"", &format!("dtype = \"{name}\""), 1);
            let dir = staged_dir(&text);
            let m = Manifest::load(dir.path()).expect("a quantized text encoder loads");
            assert_eq!(m.components["text"].dtype, dtype);
            assert_eq!(m.components["dit"].dtype, Dtype::Bf16);
            assert!(dtype.is_quantized() && dtype.compute() == Dtype::Bf16);
            assert_eq!(name.parse::<Dtype>(), Ok(dtype));
            assert_eq!(dtype.to_string(), name);
            let again: Manifest = toml::from_str(&toml::to_string(&m).unwrap()).unwrap();
            assert_eq!(again, m, "{name} round-trips through TOML");
        }
        assert!(!Dtype::F32.is_quantized() && Dtype::F32.compute() == Dtype::F32);
        let error = "int4".parse::<Dtype>().unwrap_err();
        assert!(
            error.contains("use bf16, f16, f32, nf4 or fp8-e4m3"),
            "{error}"
        );
    }

    #[test]
    fn mux_is_the_workers_own_stage_and_no_manifest_runs_it() {
        let named = staged_dir(&STAGED.replace("stage = \"decode\"", "stage = \"mux\""));
        let error = Manifest::load(named.path()).unwrap_err().to_string();
        assert!(
            error.contains("unknown variant `mux`, expected one of `text`, `audio`, `image`, `denoise`, `upsample`, `refine`, `decode`"),
            "{error}"
        );
        let good = staged_dir(STAGED);
        let mut built = Manifest::load(good.path()).unwrap();
        built.stages[1].stage = Stage::Mux;
        let error = built.check_stages().unwrap_err();
        assert!(
            error.contains("the worker runs this stage itself"),
            "{error}"
        );
    }

    #[test]
    fn the_lease_is_the_largest_stage_and_streaming_shrinks_it() {
        let dir = staged_dir(STAGED);
        let m = Manifest::load(dir.path()).unwrap();
        let shape = m.shape(0, 0, 0, 0, 0).unwrap();
        let none = Placements::new();
        let stages = m.estimate(&shape, &none);
        let gib = 1u64 << 30;
        let context = m.memory.context.0;
        // denoise: the transformer, its activations at 1/4 the pixels, doubled for guidance.
        assert_eq!(stages[2].total, context + 16 * gib + 2 * gib);
        // upsample keeps the transformer loaded for refine.
        assert_eq!(stages[3].weights, 17 * gib);
        // refine at full size, no guidance.
        assert_eq!(stages[4].total, context + 16 * gib + 4 * gib);
        let peak = stages.iter().map(|s| s.total).max().unwrap();
        assert_eq!(m.lease_bytes(&shape), peak + m.memory.margin.0);
        // Streaming the transformer holds three blocks' worth, only in its own stages.
        let mut stream = Placements::new();
        stream.insert("dit".into(), Placement::Stream);
        let streamed = m.estimate(&shape, &stream);
        assert_eq!(streamed[4].weights, 3 * gib);
        assert_eq!(
            streamed[3].weights,
            4 * gib,
            "its slots stay across upsample"
        );
        assert!(m.lease_bytes_with(&shape, &stream) < m.lease_bytes(&shape));
        // A larger video needs more activations.
        let large = m.shape(512, 512, 49, 8, 0).unwrap();
        assert!(m.lease_bytes(&large) > m.lease_bytes(&shape));
        // Overrides name real components and streamable ones.
        let mut bad = Placements::new();
        bad.insert("vae".into(), Placement::Stream);
        assert!(
            m.check_placements(&bad)
                .unwrap_err()
                .rule
                .contains("cannot stream")
        );
        bad.clear();
        bad.insert("nope".into(), Placement::Gpu);
        assert!(
            m.check_placements(&bad)
                .unwrap_err()
                .rule
                .contains("no component `nope`")
        );
    }
}
