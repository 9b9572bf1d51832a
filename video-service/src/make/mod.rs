//! `arbiter-video make-pipeline`: writes a generated pipeline directory.
//!
//! No real weights can be fetched, so the project generates pipelines with the interfaces,
//! shapes and sizes of a real one and random weights: real loading, placement and memory
//! behaviour, a video of noise. The presets live in [`preset`]; the TorchScript code and the
//! weights are written by `generator/make_pipeline.py` (embedded in this binary) with the
//! Python and PyTorch that `scripts/setup.sh` installs, because TorchScript is compiled
//! from Python. This side writes `manifest.toml` from what the generator reports (sizes and
//! SHA-256 of every weights file), then loads it back to check it.
//!
//! `--only` generates some of the components (each drawn from the seed it has in the whole
//! pipeline) and writes their manifest entries to `components.toml` ([`Partial`]) instead:
//! for measuring one component at a size whose whole pipeline would not fit the disk, such
//! as the bf16, fp8 and NF4 text encoders of `ltx-full` side by side
//! (`arbiter-video compare-encoders`).

pub mod preset;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::collections::BTreeMap;

use arbiter::ByteSize;
use arbiter::pipeline::{Component, Dtype, MANIFEST_FILE, Manifest, ManifestError};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use preset::Preset;

/// The generator's source. TorchScript compiles from source files, so it is written
/// beside the pipeline while it runs, then removed.
const GENERATOR: &str = include_str!("../../generator/make_pipeline.py");

/// Why a pipeline could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot run {python}: {source}; make-pipeline needs Python 3 with PyTorch (scripts/setup.sh installs them; `source scripts/env.sh`, or pass --python)"
    )]
    Spawn {
        python: String,
        source: std::io::Error,
    },
    #[error(
        "the generator failed ({status}); see its output above. Python needs PyTorch: `source scripts/env.sh` or pass --python"
    )]
    Generator { status: std::process::ExitStatus },
    #[error("the generator's report is not what this binary expects: {0}")]
    Report(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the generated manifest does not load: {0}")]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Store(#[from] preset::StoreError),
    #[error("--only {name}: preset {preset} has no such component; it has: {has}")]
    Only {
        name: String,
        preset: &'static str,
        has: String,
    },
}

/// Where `--only` writes the manifest entries of what it generated.
pub const COMPONENTS_FILE: &str = "components.toml";

/// Some of a pipeline's components, generated alone (`--only`): not a pipeline, so no
/// manifest, but what a tool needs to load them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// The pipeline they are part of.
    pub name: String,
    pub description: String,
    /// The whole pipeline's prompt length (`model.text_tokens`).
    pub text_tokens: u32,
    pub components: BTreeMap<String, Component>,
}

impl Partial {
    /// Reads `<dir>/components.toml`.
    pub fn load(dir: &Path) -> Result<Partial, String> {
        let path = dir.join(COMPONENTS_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{} is not valid: {e}", path.display()))
    }
}

/// What `make-pipeline` was asked for.
pub struct Make {
    pub preset: Preset,
    pub out: PathBuf,
    pub name: Option<String>,
    pub python: String,
    /// `auto` (CUDA when the Python side has it), `cpu` or `cuda`: where random weights are
    /// drawn; the files are the same kind either way.
    pub device: String,
    pub seed: u64,
    /// Store the text encoder in this dtype instead of the preset's.
    pub text_encoder_dtype: Option<Dtype>,
    /// Generate only these components (all when empty), into `components.toml`.
    pub only: Vec<String>,
}

/// What was written: a pipeline, or some of its components.
#[derive(Debug)]
pub enum Made {
    Pipeline(Box<Manifest>),
    Components(Partial),
}

#[derive(Deserialize)]
struct Report {
    components: std::collections::BTreeMap<String, Written>,
}

#[derive(Deserialize)]
struct Written {
    parameter_bytes: u64,
    sha256: String,
}

/// Generates the pipeline (or the components of `only`) and returns what it wrote.
pub fn make(request: &Make) -> Result<Made, MakeError> {
    let name = request.name.clone().unwrap_or_else(|| {
        request
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| request.preset.name().into())
    });
    let mut plan = preset::plan(request.preset, &name);
    if let Some(dtype) = request.text_encoder_dtype {
        plan.store_text_encoder(dtype)?;
        plan.manifest.description = preset::describe(request.preset, &plan);
    }
    for only in &request.only {
        if !plan.parts.iter().any(|p| p.name == only) {
            return Err(MakeError::Only {
                name: only.clone(),
                preset: request.preset.name(),
                has: plan
                    .parts
                    .iter()
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    std::fs::create_dir_all(&request.out).map_err(|source| MakeError::Create {
        path: request.out.clone(),
        source,
    })?;
    let chosen = |part: &str| request.only.is_empty() || request.only.iter().any(|o| o == part);
    let spec = json!({
        "out": request.out,
        "seed": request.seed,
        "device": request.device,
        // Each part's seed is its place in the whole pipeline, whatever `only` leaves out.
        "components": plan.parts.iter().enumerate().filter(|(_, p)| chosen(p.name)).map(|(index, part)| json!({
            "name": part.name,
            "role": part.role.name(),
            "dtype": part.dtype.name(),
            "seed": request.seed + index as u64,
            "code": format!("{}.pt", part.name),
            "weights": format!("{}.safetensors", part.name),
            "dims": part.dims,
        })).collect::<Vec<_>>(),
    });
    let script = request.out.join(".make_pipeline.py");
    std::fs::write(&script, GENERATOR).map_err(|source| MakeError::Write {
        path: script.clone(),
        source,
    })?;
    let result = generate(request, &script, &spec);
    let _ = std::fs::remove_file(&script);
    let report = result?;
    let mut manifest = plan.manifest;
    manifest.components.retain(|name, _| chosen(name));
    for (component_name, component) in &mut manifest.components {
        let written = report
            .components
            .get(component_name)
            .ok_or_else(|| MakeError::Report(format!("{component_name} was not written")))?;
        component.parameter_bytes = ByteSize(written.parameter_bytes);
        component.sha256 = Some(written.sha256.clone());
    }
    if !request.only.is_empty() {
        let partial = Partial {
            name: manifest.name,
            description: manifest.description,
            text_tokens: manifest.model.as_ref().map_or(0, |m| m.text_tokens),
            components: manifest.components,
        };
        let text = toml::to_string_pretty(&partial)
            .map_err(|e| MakeError::Report(format!("cannot write {COMPONENTS_FILE}: {e}")))?;
        write_atomically(&request.out.join(COMPONENTS_FILE), &text)?;
        return Ok(Made::Components(partial));
    }
    write_manifest(&request.out, &manifest)?;
    Ok(Made::Pipeline(Box::new(Manifest::load(&request.out)?)))
}

/// Runs the generator and reads its report.
fn generate(request: &Make, script: &Path, spec: &serde_json::Value) -> Result<Report, MakeError> {
    let mut child = Command::new(&request.python)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| MakeError::Spawn {
            python: request.python.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(spec.to_string().as_bytes())
            .map_err(|source| MakeError::Spawn {
                python: request.python.clone(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| MakeError::Spawn {
            python: request.python.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(MakeError::Generator {
            status: output.status,
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| MakeError::Report("no JSON line on stdout".into()))?;
    serde_json::from_str(line).map_err(|e| MakeError::Report(e.to_string()))
}

fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), MakeError> {
    let text = toml::to_string_pretty(manifest)
        .map_err(|e| MakeError::Report(format!("cannot write the manifest as TOML: {e}")))?;
    let header = "# Generated by `arbiter-video make-pipeline`. The weights are RANDOM: this pipeline has\n# the shapes and sizes of a real one, and its video is noise.\n\n";
    write_atomically(&dir.join(MANIFEST_FILE), &format!("{header}{text}"))
}

/// Writes `text` beside `path`, then renames it over `path`.
fn write_atomically(path: &Path, text: &str) -> Result<(), MakeError> {
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, text).map_err(|source| MakeError::Write {
        path: partial.clone(),
        source,
    })?;
    std::fs::rename(&partial, path).map_err(|source| MakeError::Write {
        path: path.to_path_buf(),
        source,
    })
}
