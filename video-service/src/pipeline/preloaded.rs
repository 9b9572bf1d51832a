//! A pipeline's TorchScript read before its job: what a standby worker (`crate::standby`)
//! does while it waits, so that a component's load on the job's critical path is only its
//! weights.
//!
//! Each component's code is deserialised onto the CPU with empty parameters, exactly as
//! [`super::component::Live::load`] would read it, and handed to that load once. A module
//! is taken only for the file it was read from, unchanged since (same path, size and
//! modification time): a pipeline regenerated while the standby waited is read again from
//! its files, not run with stale code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use arbiter::pipeline::{Component, Manifest, ManifestError};
use tch::CModule;

use super::component::{ComponentError, load_code};

/// Why a pipeline's code could not be read ahead.
#[derive(Debug, thiserror::Error)]
pub enum PreloadError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("pipeline {0} has no stages: there is no TorchScript to read ahead")]
    NoStages(String),
}

/// A file as it was when its module was read.
#[derive(Clone, Debug, PartialEq)]
struct Stamp {
    path: PathBuf,
    bytes: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(path: PathBuf) -> Option<Stamp> {
        let metadata = std::fs::metadata(&path).ok()?;
        Some(Stamp {
            bytes: metadata.len(),
            modified: metadata.modified().ok(),
            path,
        })
    }
}

/// Components' TorchScript modules read ahead, by component name, each taken once.
#[derive(Default)]
pub struct Preloaded {
    modules: HashMap<String, (Stamp, CModule)>,
    /// How long reading them took.
    pub ms: f64,
}

impl Preloaded {
    /// Reads the code of every component the pipeline at `dir` runs.
    pub fn load(dir: &Path) -> Result<(Manifest, Preloaded), PreloadError> {
        let started = Instant::now();
        let manifest = Manifest::load(dir)?;
        if manifest.stages.is_empty() {
            return Err(PreloadError::NoStages(manifest.name));
        }
        let mut modules = HashMap::new();
        for stage in &manifest.stages {
            let name = &stage.component;
            let Some(spec) = manifest.components.get(name) else {
                continue;
            };
            if modules.contains_key(name) {
                continue;
            }
            let Some(stamp) = Stamp::of(dir.join(&spec.code)) else {
                // Missing: the job's own load says so, with the component's name.
                continue;
            };
            let module = load_code(dir, name, spec)?;
            modules.insert(name.clone(), (stamp, module));
        }
        let ms = crate::metadata::millis(started);
        Ok((manifest, Preloaded { modules, ms }))
    }

    /// Component `name`'s module, if it was read ahead from `dir`'s `spec.code` and that
    /// file has not changed since; at most once per component.
    pub fn take(&mut self, dir: &Path, name: &str, spec: &Component) -> Option<CModule> {
        let (stamp, module) = self.modules.remove(name)?;
        (Stamp::of(dir.join(&spec.code)) == Some(stamp)).then_some(module)
    }

    /// The components read ahead and not yet taken, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.modules.keys().cloned().collect();
        names.sort();
        names
    }
}
