//! A video pipeline's manifest: the one description both sides read.
//!
//! The supervisor reads it to validate a request before accepting it (sizes, frame rule,
//! fps, steps, duration) and to size the job's lease (peak estimate plus margin); the worker
//! reads it to run the pipeline. A pipeline is a directory with `manifest.toml`; `tiny` is
//! built in so that the main job and the tests need no files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ByteSize;

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

/// How much GPU memory a job needs: the lease is `peak + margin`, where the peak grows with
/// the video's size.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Peak for the default size: the largest stage's weights and activations plus the CUDA
    /// context.
    pub peak: ByteSize,
    /// Extra per megapixel-frame above the default size (activations grow with the video).
    #[serde(default)]
    pub per_megapixel_frame: ByteSize,
    /// Headroom added to the estimate.
    pub margin: ByteSize,
}

/// A request's sizes with defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
                peak: ByteSize(1 << 30),
                per_megapixel_frame: ByteSize(64 << 20),
                margin: ByteSize(256 << 20),
            },
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
        manifest
            .check()
            .map_err(|message| ManifestError::Invalid { path, message })?;
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
            .map(|_| ())
            .map_err(|v| format!("defaults break the rules: {v}"))
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

    /// The lease a job of this shape needs.
    pub fn lease_bytes(&self, shape: &Shape) -> u64 {
        let d = &self.defaults;
        let default_mpf = d.width as f64 * d.height as f64 * d.frames as f64 / 1e6;
        let mpf = shape.width as f64 * shape.height as f64 * shape.frames as f64 / 1e6;
        let extra =
            ((mpf - default_mpf).max(0.0) * self.memory.per_megapixel_frame.0 as f64) as u64;
        self.memory
            .peak
            .0
            .saturating_add(extra)
            .saturating_add(self.memory.margin.0)
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
}
