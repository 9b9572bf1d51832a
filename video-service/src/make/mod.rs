//! `arbiter-video make-pipeline`: writes a generated pipeline directory.
//!
//! No real weights can be fetched, so the project generates pipelines with the interfaces,
//! shapes and sizes of a real one and random weights: real loading, placement and memory
//! behaviour, a video of noise. The presets live in [`preset`]; the TorchScript code and the
//! weights are written by `generator/make_pipeline.py` (embedded in this binary) with the
//! Python and PyTorch that `scripts/setup.sh` installs, because TorchScript is compiled
//! from Python. This side writes `manifest.toml` from what the generator reports (sizes and
//! SHA-256 of every weights file), then loads it back to check it.

pub mod preset;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use arbiter::ByteSize;
use arbiter::pipeline::{MANIFEST_FILE, Manifest, ManifestError};
use serde::Deserialize;
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

/// Generates the pipeline and returns its manifest.
pub fn make(request: &Make) -> Result<Manifest, MakeError> {
    std::fs::create_dir_all(&request.out).map_err(|source| MakeError::Create {
        path: request.out.clone(),
        source,
    })?;
    let name = request.name.clone().unwrap_or_else(|| {
        request
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| request.preset.name().into())
    });
    let plan = preset::plan(request.preset, &name);
    let spec = json!({
        "out": request.out,
        "seed": request.seed,
        "device": request.device,
        "components": plan.parts.iter().map(|part| json!({
            "name": part.name,
            "role": part.role.name(),
            "dtype": plan.dtype.name(),
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
    for (component_name, component) in &mut manifest.components {
        let written = report
            .components
            .get(component_name)
            .ok_or_else(|| MakeError::Report(format!("{component_name} was not written")))?;
        component.parameter_bytes = ByteSize(written.parameter_bytes);
        component.sha256 = Some(written.sha256.clone());
    }
    write_manifest(&request.out, &manifest)?;
    Ok(Manifest::load(&request.out)?)
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
    let path = dir.join(MANIFEST_FILE);
    let text = toml::to_string_pretty(manifest)
        .map_err(|e| MakeError::Report(format!("cannot write the manifest as TOML: {e}")))?;
    let header = "# Generated by `arbiter-video make-pipeline`. The weights are RANDOM: this pipeline has\n# the shapes and sizes of a real one, and its video is noise.\n\n";
    let partial = path.with_extension("toml.partial");
    std::fs::write(&partial, format!("{header}{text}")).map_err(|source| MakeError::Write {
        path: partial.clone(),
        source,
    })?;
    std::fs::rename(&partial, &path).map_err(|source| MakeError::Write { path, source })
}
