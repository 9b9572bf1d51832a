//! Which pipeline renders a job's frames: the staged pipeline for a manifest with stages,
//! else the built-in model. `run` (under the supervisor) and `generate` (local) render
//! through this one function, so a local run measures what a job does.

use tch::Device;

use arbiter::pipeline::Shape;
use arbiter_torch::load::LoadOptions;

use super::device::device_name;
use super::error::JobError;
use super::inputs::Inputs;
use super::prepare::Prepared;
use crate::frames::Frames;
use crate::gpu_memory::ProcessMemory;
use crate::metadata::StageMetrics;
use crate::pipeline::cache::EmbeddingCache;
use crate::pipeline::staged::{self, Request, Session, Settings};
use crate::pipeline::tiny;
use crate::pipeline::yielding::Yielding;
use crate::progress::Progress;
use crate::worker::Job;

/// Runs the job's pipeline on the prepared device, within `session`; returns the frames
/// and, for a staged pipeline, what each of its stages did.
pub fn render(
    session: &mut Session,
    job: &Job,
    prepared: &Prepared,
    progress: &mut dyn Progress,
) -> Result<(Frames, Vec<StageMetrics>), JobError> {
    let Prepared {
        manifest,
        shape,
        inputs,
        device,
        ..
    } = prepared;
    let device = *device;
    tracing::info!(
        device = %device_name(device),
        width = shape.width,
        height = shape.height,
        frames = shape.frames,
        fps = shape.fps,
        steps = shape.steps,
        seed = job.request.seed,
        lease_bytes = job.lease_bytes,
        "running"
    );
    match job.pipeline_dir.as_deref() {
        Some(dir) if !manifest.stages.is_empty() => {
            let settings = settings(job, device);
            let request = request(job, shape, inputs);
            let output = staged::run_in(session, manifest, dir, &settings, &request, progress)?;
            Ok((output.frames, output.stages))
        }
        _ => Ok((
            tiny::generate(
                &job.request.prompt,
                shape,
                job.request.seed,
                device,
                progress,
            )?,
            Vec::new(),
        )),
    }
}

/// How this worker runs the staged pipeline: its loader, the job's embedding cache (none
/// when it cannot be opened) and NVML on a GPU.
fn settings(job: &Job, device: Device) -> Settings {
    Settings {
        device,
        // 16 readers: never slower than 8 on the H100 host, up to 12% faster.
        load: LoadOptions {
            threads: 16,
            ..LoadOptions::default()
        },
        cache: job.embedding_cache.as_ref().and_then(|(dir, cap)| {
            EmbeddingCache::open(dir, *cap)
                .inspect_err(|error| {
                    tracing::warn!(%error, "no embedding cache for this job");
                })
                .ok()
        }),
        nvml: device.is_cuda().then(|| ProcessMemory::open(&job.gpu_uuid)),
        gate: Yielding::from_env(device),
    }
}

/// What the job asks of the staged pipeline.
fn request<'a>(job: &'a Job, shape: &Shape, inputs: &'a Inputs) -> Request<'a> {
    Request {
        prompt: &job.request.prompt,
        negative_prompt: &job.request.negative_prompt,
        shape: *shape,
        seed: job.request.seed,
        audio: inputs.audio.as_ref(),
        image: inputs.image.as_ref(),
        placements: &job.request.placement,
        lease_bytes: job.lease_bytes,
    }
}
