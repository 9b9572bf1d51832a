//! The pipelines this supervisor serves: the built-in `tiny`, and one per directory under
//! `[jobs] pipelines_dir` holding a `manifest.toml`. A broken manifest is reported at start
//! and left out, rather than taking the whole supervisor down.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arbiter::pipeline::{MANIFEST_FILE, Manifest};

#[derive(Clone, Debug)]
pub struct Pipeline {
    pub manifest: Manifest,
    /// None for built-in pipelines.
    pub dir: Option<PathBuf>,
}

pub struct Catalog {
    pipelines: BTreeMap<String, Pipeline>,
    default: String,
}

impl Catalog {
    pub fn load(dir: Option<&Path>, default: &str) -> Catalog {
        let mut pipelines = BTreeMap::new();
        let tiny = Manifest::tiny();
        pipelines.insert(
            tiny.name.clone(),
            Pipeline {
                manifest: tiny,
                dir: None,
            },
        );
        if let Some(dir) = dir {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for entry in entries.flatten() {
                        let path = entry.path();
                        if !path.join(MANIFEST_FILE).is_file() {
                            continue;
                        }
                        match Manifest::load(&path) {
                            Ok(manifest) => {
                                tracing::info!(pipeline = %manifest.name, dir = %path.display(), "pipeline");
                                pipelines.insert(
                                    manifest.name.clone(),
                                    Pipeline {
                                        manifest,
                                        dir: Some(path),
                                    },
                                );
                            }
                            Err(error) => tracing::error!(%error, "pipeline left out"),
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(dir = %dir.display(), %error, "cannot read the pipelines directory")
                }
            }
        }
        Catalog {
            pipelines,
            default: default.to_string(),
        }
    }

    /// The pipeline called `name`, or the default for an empty name.
    pub fn get(&self, name: &str) -> Option<&Pipeline> {
        let name = if name.is_empty() { &self.default } else { name };
        self.pipelines.get(name)
    }

    /// Directories of the staged pipelines (those with components to load).
    pub fn staged_dirs(&self) -> Vec<PathBuf> {
        self.pipelines
            .values()
            .filter(|p| !p.manifest.stages.is_empty())
            .filter_map(|p| p.dir.clone())
            .collect()
    }

    /// The weights files of the staged pipelines, each once: what the weight pool serves.
    pub fn weights_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .pipelines
            .values()
            .filter_map(|p| p.dir.as_ref().map(|dir| (dir, &p.manifest)))
            .flat_map(|(dir, manifest)| {
                manifest
                    .components
                    .values()
                    .map(move |component| dir.join(&component.weights))
            })
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// The staged pipelines the built-in worker runs (no external command), by name, with
    /// their directories: those a standby worker can be started for.
    pub fn staged(&self) -> Vec<(String, PathBuf)> {
        self.pipelines
            .iter()
            .filter(|(_, p)| !p.manifest.stages.is_empty() && p.manifest.command.is_none())
            .filter_map(|(name, p)| Some((name.clone(), p.dir.clone()?)))
            .collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.pipelines.keys().map(String::as_str).collect()
    }
}
