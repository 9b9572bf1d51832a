//! Turns a [`JobRequest`] into a validated [`JobSpec`], before anything is accepted.
//!
//! Every field is checked here: text lengths, inline payload sizes and formats, input paths
//! (which must lie inside an allowed directory), the pipeline's own rules, the timeout. A
//! refusal names the field and the rule; nothing reaches the queue that a worker would
//! reject later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::catalog::Catalog;
use super::{JobError, JobRequest, JobSpec, Media};
use crate::config::JobsConfig;

const MAX_PROMPT_CHARS: usize = 4096;

/// Media that arrived inline, to be saved into the job's directory once it has one.
pub struct Inline {
    pub field: &'static str,
    pub file_name: &'static str,
    pub data: Vec<u8>,
}

/// A validated request, plus the inline payloads still to be saved.
pub struct Checked {
    pub spec: JobSpec,
    pub inline: Vec<Inline>,
}

fn invalid(field: &'static str, rule: impl Into<String>) -> JobError {
    JobError::Invalid {
        field,
        rule: rule.into(),
    }
}

pub fn check(
    request: JobRequest,
    catalog: &Catalog,
    config: &JobsConfig,
) -> Result<Checked, JobError> {
    let prompt = request.prompt.trim().to_string();
    if prompt.is_empty() {
        return Err(invalid("prompt", "is empty: describe the video to make"));
    }
    for (field, text) in [
        ("prompt", &prompt),
        ("negative_prompt", &request.negative_prompt),
    ] {
        if text.chars().count() > MAX_PROMPT_CHARS {
            return Err(invalid(
                field,
                format!("is longer than {MAX_PROMPT_CHARS} characters"),
            ));
        }
    }
    let pipeline = catalog.get(&request.pipeline).ok_or_else(|| {
        invalid(
            "pipeline",
            format!(
                "`{}` is not served here; choose one of: {}",
                arbiter::echo::echo(&request.pipeline),
                catalog.names().join(", ")
            ),
        )
    })?;
    let manifest = &pipeline.manifest;
    let asked = request.shape;
    let shape = manifest
        .shape(
            asked.width,
            asked.height,
            asked.frames,
            asked.fps,
            asked.steps,
        )
        .map_err(|v| invalid(v.field, v.rule))?;
    let placement =
        arbiter::pipeline::parse_placements(request.placement.iter().map(|(c, p)| (c, p)))
            .map_err(|e| invalid("placement", e.to_string()))?;
    manifest
        .check_placements(&placement)
        .map_err(|v| invalid(v.field, v.rule))?;
    let timeout = match request.timeout {
        None => config.default_timeout,
        Some(t) => {
            if t < Duration::from_secs(1) || t > config.max_timeout {
                return Err(invalid(
                    "timeout",
                    format!(
                        "must be between 1s and {}",
                        humantime::format_duration(config.max_timeout)
                    ),
                ));
            }
            t
        }
    };
    let mut inline = Vec::new();
    let audio = media(
        "audio",
        "audio",
        request.audio,
        config,
        Format::Audio,
        &mut inline,
    )?;
    if request.reference_image.is_some()
        && !manifest.stages.is_empty()
        && !manifest
            .stages
            .iter()
            .any(|s| s.stage == arbiter::pipeline::Stage::Image)
    {
        return Err(invalid(
            "reference_image",
            format!(
                "pipeline {} has no image stage, so it cannot take a reference image: leave it out",
                manifest.name
            ),
        ));
    }
    let reference_image = media(
        "reference_image",
        "reference",
        request.reference_image,
        config,
        Format::Image,
        &mut inline,
    )?;
    Ok(Checked {
        spec: JobSpec {
            lease_bytes: manifest.lease_bytes_with(&shape, &placement),
            request: arbiter::job::Request {
                prompt,
                negative_prompt: request.negative_prompt,
                audio,
                reference_image,
                shape,
                seed: request
                    .seed
                    .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0),
                pipeline: manifest.name.clone(),
                placement,
            },
            priority: request.priority,
            timeout,
        },
        inline,
    })
}

#[derive(Clone, Copy)]
enum Format {
    Audio,
    Image,
}

impl Format {
    /// Recognises the file by its first bytes; the worker decodes it fully later, but a
    /// request for a file of the wrong kind is refused before it is queued.
    fn matches(self, head: &[u8]) -> bool {
        match self {
            Format::Audio => {
                (head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WAVE")
                    || head.starts_with(b"fLaC")
                    || head.starts_with(b"OggS")
                    || head.starts_with(b"ID3")
                    || (head.len() >= 2 && head[0] == 0xff && head[1] & 0xe0 == 0xe0)
            }
            Format::Image => {
                head.starts_with(b"\x89PNG\r\n\x1a\n")
                    || head.starts_with(b"\xff\xd8\xff")
                    || head.starts_with(b"BM")
                    || (head.len() >= 12 && &head[0..4] == b"RIFF" && &head[8..12] == b"WEBP")
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Format::Audio => "audio in WAV, FLAC, MP3 or OGG Vorbis",
            Format::Image => "a PNG, JPEG, WebP or BMP image",
        }
    }
}

fn media(
    field: &'static str,
    file_name: &'static str,
    media: Option<Media>,
    config: &JobsConfig,
    format: Format,
    inline: &mut Vec<Inline>,
) -> Result<Option<PathBuf>, JobError> {
    match media {
        None => Ok(None),
        Some(Media::Inline(data)) => {
            if data.len() as u64 > config.max_inline_bytes.0 {
                return Err(invalid(
                    field,
                    format!(
                        "inline data is {} but at most {} may be sent inline: pass a path instead",
                        arbiter::ByteSize(data.len() as u64),
                        config.max_inline_bytes
                    ),
                ));
            }
            if !format.matches(&data) {
                return Err(invalid(
                    field,
                    format!("inline data is not {}", format.describe()),
                ));
            }
            inline.push(Inline {
                field,
                file_name,
                data,
            });
            Ok(None)
        }
        Some(Media::Path(path)) => Ok(Some(confined(field, &path, config, format)?)),
    }
}

/// Resolves `path` (symlinks included) and checks it lies inside an allowed directory.
fn confined(
    field: &'static str,
    path: &Path,
    config: &JobsConfig,
    format: Format,
) -> Result<PathBuf, JobError> {
    if config.allowed_input_dirs.is_empty() {
        return Err(invalid(
            field,
            "paths are not accepted: this supervisor has no [jobs] allowed_input_dirs; send the data inline",
        ));
    }
    // A missing file and one outside the allowed directories get the same answer, word for
    // word: telling them apart would let any caller probe which files exist on the host.
    let outside = || {
        invalid(
            field,
            format!(
                "{} is not a file inside the allowed input directories ({}): put the file there, or send the data inline",
                arbiter::echo::echo(&path.display().to_string()),
                config
                    .allowed_input_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    };
    let real = path.canonicalize().map_err(|_| outside())?;
    let allowed = config
        .allowed_input_dirs
        .iter()
        .filter_map(|dir| dir.canonicalize().ok())
        .any(|dir| real.starts_with(dir));
    if !allowed || !real.is_file() {
        return Err(outside());
    }
    let mut head = [0u8; 12];
    let read = std::fs::File::open(&real)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
        .map_err(|e| invalid(field, format!("{}: {e}", path.display())))?;
    if !format.matches(&head[..read]) {
        return Err(invalid(
            field,
            format!("{} is not {}", path.display(), format.describe()),
        ));
    }
    Ok(real)
}
