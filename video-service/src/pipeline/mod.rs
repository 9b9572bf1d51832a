//! Which pipeline a job runs, checked again on the worker's side.
//!
//! The supervisor validated the request against the manifest before accepting it, but the
//! worker reads the manifest itself (the built-in one, or `<pipeline_dir>/manifest.toml`)
//! and checks the sizes again: a manifest edited between submit and run, or a supervisor
//! bug, then fails the job with the rule that was broken instead of running a shape the
//! model cannot take.
//!
//! A manifest with stages runs the staged pipeline ([`staged`]): its components
//! ([`component`], a text encoder's possibly stored in a [`quant`]ized format) loaded one stage at a time with their placements (block streaming in
//! [`stream`], yielding to a voice between blocks in [`yielding`]), the flow-matching
//! [`sampler`], byte-level [`tokens`], the embedding [`cache`] and tiled decoding
//! ([`tiles`]); weights fetched from the host weight pool (`pooled`), resident components
//! parked onto it and woken ([`park`]), and a standby worker's components' code read ahead
//! ([`preloaded`]). A manifest without stages or command runs the
//! built-in seeded model ([`tiny`]) under its own rules and memory figures. Pipelines with
//! a `command` run as external programs under the supervisor, never in this worker. Either
//! in-process pipeline hands its video on as [`Frames`](crate::frames::Frames).

pub mod blocks;
pub mod cache;
pub mod component;
pub mod park;
mod pooled;
pub mod preloaded;
pub mod quant;
pub mod sampler;
pub mod staged;
pub mod stream;
pub mod tiles;
pub mod tiny;
pub mod tokens;
pub mod yielding;

use std::path::Path;

use arbiter::pipeline::{Manifest, ManifestError, Shape, TINY, Violation};

use crate::worker::Job;

/// Why a job's pipeline cannot run its request.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline `{0}` has no directory: only `tiny` is built in")]
    NoDirectory(String),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "pipeline `{name}` is named `{found}` in its manifest: the supervisor and the worker disagree about which pipeline this is"
    )]
    NameMismatch { name: String, found: String },
    #[error(
        "pipeline `{0}` runs an external command, and arbiter-video cannot run external pipelines yet"
    )]
    External(String),
    #[error("the request does not fit pipeline `{pipeline}`: {violation}")]
    Request {
        pipeline: String,
        violation: Violation,
    },
}

/// The job's pipeline, with the request's sizes checked against it.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub manifest: Manifest,
    pub shape: Shape,
}

/// Reads the job's manifest and checks its request against the rules.
pub fn resolve(job: &Job) -> Result<Resolved, PipelineError> {
    let manifest = if job.request.pipeline == TINY && job.pipeline_dir.is_none() {
        Manifest::tiny()
    } else {
        let dir = job
            .pipeline_dir
            .as_deref()
            .ok_or_else(|| PipelineError::NoDirectory(job.request.pipeline.clone()))?;
        load(&job.request.pipeline, dir)?
    };
    if manifest.command.is_some() {
        return Err(PipelineError::External(manifest.name));
    }
    let shape = manifest
        .shape(
            job.request.shape.width,
            job.request.shape.height,
            job.request.shape.frames,
            job.request.shape.fps,
            job.request.shape.steps,
        )
        .map_err(|violation| PipelineError::Request {
            pipeline: manifest.name.clone(),
            violation,
        })?;
    Ok(Resolved { manifest, shape })
}

fn load(name: &str, dir: &Path) -> Result<Manifest, PipelineError> {
    let manifest = Manifest::load(dir)?;
    if manifest.name != name {
        return Err(PipelineError::NameMismatch {
            name: name.to_string(),
            found: manifest.name,
        });
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn job(pipeline: &str, dir: Option<PathBuf>) -> Job {
        Job {
            id: "j".into(),
            attempt: 1,
            request: arbiter::job::Request {
                prompt: "p".into(),
                shape: arbiter::pipeline::Shape {
                    width: 128,
                    height: 128,
                    frames: 17,
                    fps: 8,
                    steps: 4,
                },
                seed: 1,
                pipeline: pipeline.into(),
                ..Default::default()
            },
            pipeline_dir: dir,
            output_dir: "/tmp".into(),
            lease_bytes: 0,
            gpu_uuid: String::new(),
            embedding_cache: None,
            frames_without_ffmpeg: false,
        }
    }

    #[test]
    fn tiny_is_built_in_and_its_rules_are_checked_again() {
        let resolved = resolve(&job(TINY, None)).unwrap();
        assert_eq!(resolved.shape.frames, 17);
        let mut bad = job(TINY, None);
        bad.request.shape.frames = 16;
        let error = resolve(&bad).unwrap_err().to_string();
        assert!(
            error.contains("frames") && error.contains("8k+1"),
            "{error}"
        );
    }

    #[test]
    fn a_directory_pipeline_is_loaded_and_external_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut manifest = Manifest::tiny();
        manifest.name = "small".into();
        let write = |m: &Manifest| {
            std::fs::write(
                dir.path().join(arbiter::pipeline::MANIFEST_FILE),
                toml::to_string(m).unwrap(),
            )
            .unwrap()
        };
        write(&manifest);
        let path = Some(dir.path().to_path_buf());
        assert_eq!(
            resolve(&job("small", path.clone())).unwrap().manifest,
            manifest
        );
        assert!(matches!(
            resolve(&job("other", path.clone())),
            Err(PipelineError::NameMismatch { .. })
        ));
        assert!(matches!(
            resolve(&job("nowhere", None)),
            Err(PipelineError::NoDirectory(_))
        ));
        manifest.command = Some(vec!["python3".into()]);
        write(&manifest);
        assert!(matches!(
            resolve(&job("small", path)),
            Err(PipelineError::External(_))
        ));
    }
}
