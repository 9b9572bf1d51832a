//! Everything a job does before any model work: the request checked against its pipeline
//! (again: the manifest may have changed since the supervisor checked it), ffmpeg found,
//! the output directory made, the inputs decoded, and only then the device started. A job
//! that cannot run fails here, before the GPU is touched. `run` and `generate` both start
//! with it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use arbiter::pipeline::{Manifest, Shape};
use tch::Device;

use super::device::DeviceStart;
use super::error::JobError;
use super::inputs::Inputs;
use crate::metadata::{Prestart, Startup};
use crate::mux;
use crate::pipeline::{self, PipelineError, Resolved};
use crate::worker::Job;

/// A job ready for its model: what [`prepare`] checked and made.
pub struct Prepared {
    pub manifest: Manifest,
    pub shape: Shape,
    /// ffmpeg, or `None` where it is missing and the job may write frames instead.
    pub ffmpeg: Option<PathBuf>,
    pub inputs: Inputs,
    pub device: Device,
    /// The CUDA context's start (`None` on a CPU).
    pub startup: Option<Startup>,
    /// The start of the job in this process, which its stages and start-up are timed from.
    pub started: Instant,
    /// How long before `started` the process was spawned, where a spawner stamped it (see
    /// `arbiter::spawn`).
    pub spawned: Option<Duration>,
    /// What a pre-started worker did before the job (`None` for a spawned one, set by the
    /// caller after [`prepare`]).
    pub prestart: Option<Prestart>,
}

/// Checks and makes everything `job` needs before its model runs, and then has its device
/// (started as `device` says); `started` and `spawned` are kept for the timings (see
/// [`Prepared`]).
pub fn prepare(
    job: &Job,
    started: Instant,
    spawned: Option<Duration>,
    device: DeviceStart,
) -> Result<Prepared, JobError> {
    let Resolved { manifest, shape } = resolve(job)?;
    // Everything that can be checked without the model is checked before it runs.
    let ffmpeg = find_ffmpeg(job)?;
    std::fs::create_dir_all(&job.output_dir).map_err(|source| JobError::OutputDir {
        path: job.output_dir.clone(),
        source,
    })?;
    let inputs = Inputs::prepare(job, &manifest, &shape)?;
    let (device, startup) = device.finish(started);
    Ok(Prepared {
        manifest,
        shape,
        ffmpeg,
        inputs,
        device,
        startup,
        started,
        spawned,
        prestart: None,
    })
}

/// The job's pipeline, with the request's sizes and placements checked against it.
fn resolve(job: &Job) -> Result<Resolved, JobError> {
    let resolved = pipeline::resolve(job)?;
    resolved
        .manifest
        .check_placements(&job.request.placement)
        .map_err(|violation| PipelineError::Request {
            pipeline: resolved.manifest.name.clone(),
            violation,
        })?;
    Ok(resolved)
}

/// ffmpeg, or `None` where it is missing and the job may write frames instead.
pub fn find_ffmpeg(job: &Job) -> Result<Option<PathBuf>, JobError> {
    match mux::ffmpeg() {
        Ok(path) => Ok(Some(path)),
        Err(error) if job.frames_without_ffmpeg => {
            tracing::warn!(%error, "writing the frames as PNG files instead of an MP4");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}
