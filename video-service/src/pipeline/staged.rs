//! The staged pipeline: the manifest's stages run in order, each loading only the
//! component it needs and freeing what no later stage uses, so peak VRAM is the largest
//! stage, not the sum.
//!
//! Data flow (LTX-2-shaped): `text` turns the prompt (and, with guidance, the negative
//! prompt) into embeddings, skipped entirely on an embedding-cache hit; `audio` turns the
//! normalized soundtrack (or silence) into conditioning tokens; `image` turns the
//! reference image into a first-frame latent (skipped without one); `denoise` samples
//! latents at low resolution from the job's seed; `upsample` doubles them; `refine`
//! re-noises them part way and samples again at full resolution; `decode` turns them into
//! pixels in tiles. After each stage the caching allocator is emptied, so the memory of a
//! freed component goes back to the driver, not just to libtorch's cache.
//!
//! Per stage the pipeline records where its component ran, the load time and rate, the
//! compute time, and the allocator's peak allocated and reserved bytes ([`StageMetrics`],
//! defined with the metadata file that carries it). Each stage kind is one step function of
//! `Run`, between the reporting and timing that every stage shares.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use arbiter::pipeline::{Manifest, Model, Placement, Placements, Shape, Stage};
use arbiter_torch::allocator;
use arbiter_torch::load::LoadOptions;
use tch::{Device, Kind, TchError, Tensor};

use super::cache::{CacheKey, EmbeddingCache};
use super::component::{ComponentError, Live, device_index};
use super::park::{self, Moved, ParkError};
use super::preloaded::Preloaded;
use super::sampler;
use super::tiles::{self, Factors, Tiling};
use super::tokens;
use super::yielding::{self, Shared};
use crate::frames::Frames;
use crate::gpu_memory::ProcessMemory;
use crate::input::audio::Audio;
use crate::input::image::Image;
use crate::metadata::{StageMetrics, millis};
use crate::progress::{Progress, Stop};
use arbiter::gate::YieldStats;

/// Why the staged pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum StagedError {
    #[error("pipeline {0} has no stages to run, or no [model] to run them with")]
    NoStages(String),
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("libtorch failed in the {stage} stage: {source}")]
    Torch { stage: Stage, source: TchError },
    #[error("the {stage} stage: {source}")]
    Tiles {
        stage: Stage,
        source: tiles::TileError,
    },
    #[error("libtorch failed in the sampler: {0}")]
    Sampler(#[from] TchError),
    #[error(transparent)]
    Stopped(#[from] Stop),
    #[error(transparent)]
    Park(#[from] super::park::ParkError),
}

/// What a job asks of the pipeline, inputs already normalized.
pub struct Request<'a> {
    pub prompt: &'a str,
    pub negative_prompt: &'a str,
    pub shape: Shape,
    pub seed: u64,
    pub audio: Option<&'a Audio>,
    pub image: Option<&'a Image>,
    pub placements: &'a Placements,
    /// The job's lease (0: unknown), which `auto` placement is decided against.
    pub lease_bytes: u64,
}

/// How this process runs pipelines.
pub struct Settings {
    pub device: Device,
    pub load: LoadOptions,
    pub cache: Option<EmbeddingCache>,
    /// NVML, to record what the driver says this process holds after each stage.
    pub nvml: Option<ProcessMemory>,
    /// The GPU's compute gate, when the supervisor gave one: components yield to
    /// interactive work between their blocks.
    pub gate: Option<Shared>,
}

/// The pipeline's result.
pub struct Output {
    pub frames: Frames,
    /// The latents the last sampling stage ended with, before decoding.
    pub latents: Tensor,
    pub stages: Vec<StageMetrics>,
}

/// `auto`: the GPU when the component and its activations fit in what the lease has left,
/// else streamed (or on the CPU when it has no blocks). An unknown lease (0) means the GPU.
pub fn decide_auto(need: u64, lease: u64, held: u64, blocks: u32) -> Placement {
    if lease == 0 || held.saturating_add(need) <= lease {
        Placement::Gpu
    } else if blocks > 0 {
        Placement::Stream
    } else {
        Placement::Cpu
    }
}

/// The data passed from stage to stage.
#[derive(Default)]
struct Carry {
    text: Option<Tensor>,
    audio: Option<Tensor>,
    image: Option<Tensor>,
    latents: Option<Tensor>,
    /// The final latents, kept for the output when decode takes them.
    decoded: Option<Tensor>,
    video: Option<Tensor>,
}

/// The latent video's dimensions for the request, fixed by the model's factors.
#[derive(Clone, Copy)]
struct Latent {
    /// The first denoising stage runs at 1/this resolution.
    low_res: i64,
    /// Pixels per latent pixel, each way.
    spatial: i64,
    frames: i64,
    height: i64,
    width: i64,
    channels: i64,
}

impl Latent {
    fn of(model: &Model, shape: &Shape) -> Latent {
        let spatial = i64::from(model.spatial_factor);
        Latent {
            low_res: i64::from(model.low_res_factor),
            spatial,
            frames: i64::from((shape.frames - 1) / model.temporal_factor + 1),
            height: i64::from(shape.height) / spatial,
            width: i64::from(shape.width) / spatial,
            channels: i64::from(model.latent_channels),
        }
    }
}

/// libtorch's error, as the failure of `stage`.
fn in_stage(stage: Stage) -> impl Fn(TchError) -> StagedError + Copy {
    move |source| StagedError::Torch { stage, source }
}

struct Run<'a> {
    manifest: &'a Manifest,
    dir: &'a Path,
    settings: &'a Settings,
    request: &'a Request<'a>,
    live: &'a mut HashMap<String, Live>,
    preloaded: &'a mut Preloaded,
    writes: &'a mut CacheWrites,
}

/// Embeddings being written to the cache beside the run. A write is durable (fsync before
/// the rename), which on a slow disk costs more than the text encoder's compute; it is off
/// the job's critical path and waited for when the run ends, so an entry is whole on disk
/// before the worker reports its job done and exits.
#[derive(Default)]
struct CacheWrites(Vec<std::thread::JoinHandle<()>>);

impl CacheWrites {
    /// Stores each (key, embedding on the CPU) in `cache` on a thread of its own.
    fn store(&mut self, cache: EmbeddingCache, rows: Vec<(CacheKey, Tensor)>) {
        let write = move || {
            for (key, embedding) in rows {
                if let Err(error) = cache.put(&key, &embedding) {
                    tracing::warn!(%error, "cannot store the embedding");
                }
            }
        };
        match std::thread::Builder::new()
            .name("arbiter-embedding-cache".into())
            .spawn(write)
        {
            Ok(handle) => self.0.push(handle),
            Err(error) => tracing::warn!(%error, "cannot start a thread to store the embedding"),
        }
    }

    /// Waits for every write.
    fn finish(&mut self) {
        for handle in self.0.drain(..) {
            if handle.join().is_err() {
                tracing::warn!("a thread storing an embedding panicked");
            }
        }
    }
}

/// What a process keeps between jobs of one pipeline: its `resident` components. A per-job
/// worker runs one job and exits, so its session dies with it; `generate --repeat` keeps one
/// for the persistent-serving comparison (every component resident, loaded once).
#[derive(Default)]
pub struct Session {
    live: HashMap<String, Live>,
    /// Components' code read before the job (a standby worker's), used by their first load.
    preloaded: Preloaded,
}

impl Session {
    /// A session whose components' first loads take their code from `preloaded`.
    pub fn with_preloaded(preloaded: Preloaded) -> Session {
        Session {
            live: HashMap::new(),
            preloaded,
        }
    }

    /// Components loaded now, by name.
    pub fn loaded(&self) -> Vec<String> {
        let mut names: Vec<String> = self.live.keys().cloned().collect();
        names.sort();
        names
    }

    /// Parks every resident component ([`super::park`]) and gives the device memory back
    /// to the driver.
    pub fn park(&mut self, device: Device) -> Result<Moved, ParkError> {
        let moved = park::each(self.live.values_mut(), false)?;
        empty_cache(device);
        Ok(moved)
    }

    /// Device bytes the parked components need to wake, and what the others hold.
    pub fn to_wake(&self) -> (u64, u64) {
        self.live.values().fold((0, 0), |(need, held), live| {
            if live.is_parked() {
                (need + live.load.bytes, held)
            } else {
                (need, held + live.device_bytes)
            }
        })
    }

    /// Wakes every parked component after the admission check against `lease` (0: none)
    /// and the device's `free` bytes.
    pub fn wake(&mut self, lease: u64, free: Option<u64>) -> Result<Moved, ParkError> {
        let (need, held) = self.to_wake();
        park::admit(need, held, lease, free)?;
        park::each(self.live.values_mut(), true)
    }
}

/// Runs every stage of `manifest` (a directory pipeline at `dir`) for `request`.
pub fn run(
    manifest: &Manifest,
    dir: &Path,
    settings: &Settings,
    request: &Request<'_>,
    progress: &mut dyn Progress,
) -> Result<Output, StagedError> {
    run_in(
        &mut Session::default(),
        manifest,
        dir,
        settings,
        request,
        progress,
    )
}

/// [`run`] within `session`: resident components it holds are used as they are, and the
/// ones this run loads stay in it.
pub fn run_in(
    session: &mut Session,
    manifest: &Manifest,
    dir: &Path,
    settings: &Settings,
    request: &Request<'_>,
    progress: &mut dyn Progress,
) -> Result<Output, StagedError> {
    if manifest.stages.is_empty() || manifest.model.is_none() {
        return Err(StagedError::NoStages(manifest.name.clone()));
    }
    if !arbiter_torch::jit::plain_executor() {
        tracing::warn!(
            "libtorch kept its TorchScript graph optimizer on; first calls will be slower"
        );
    }
    let mut writes = CacheWrites::default();
    let result = tch::no_grad(|| {
        let mut run = Run {
            manifest,
            dir,
            settings,
            request,
            live: &mut session.live,
            preloaded: &mut session.preloaded,
            writes: &mut writes,
        };
        let mut carry = Carry::default();
        let mut stages = Vec::with_capacity(manifest.stages.len());
        for index in 0..manifest.stages.len() {
            stages.push(run.stage(index, &mut carry, progress)?);
        }
        empty_cache(settings.device);
        let video = carry.video.ok_or(StagedError::Torch {
            stage: Stage::Decode,
            source: TchError::Kind("no decode stage produced the video".into()),
        })?;
        let frames = to_frames(&video).map_err(|source| StagedError::Torch {
            stage: Stage::Decode,
            source,
        })?;
        let latents = carry
            .decoded
            .unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu)));
        Ok(Output {
            frames,
            latents,
            stages,
        })
    });
    writes.finish();
    // A run that stopped part way may have left components loaded: only resident ones stay.
    let before = session.live.len();
    session
        .live
        .retain(|_, live| live.placement == Placement::Resident);
    if session.live.len() != before {
        empty_cache(settings.device);
    }
    result
}

impl Run<'_> {
    fn model(&self) -> &Model {
        // run_in refuses a manifest without a model before any stage.
        self.manifest
            .model
            .as_ref()
            .expect("a manifest with stages has a model")
    }

    fn guidance(&self) -> f64 {
        self.manifest
            .stages
            .iter()
            .filter_map(|s| s.guidance)
            .fold(1.0, f64::max)
    }

    /// Runs stage `index`: reports it, runs its step, then records what it cost and frees
    /// what no later stage needs.
    fn stage(
        &mut self,
        index: usize,
        carry: &mut Carry,
        progress: &mut dyn Progress,
    ) -> Result<StageMetrics, StagedError> {
        let spec = &self.manifest.stages[index];
        let kind = spec.stage;
        progress.begin(kind, self.total_steps(index))?;
        let mut metrics = self.start_metrics(index);
        let yielded = self.yield_stats();
        let started = Instant::now();
        let model = self.model().clone();
        let latent = Latent::of(&model, &self.request.shape);
        match kind {
            Stage::Text => carry.text = Some(self.text(index, &model, &mut metrics)?),
            Stage::Audio => carry.audio = Some(self.audio(index, &model, &mut metrics)?),
            Stage::Image => {
                if let Some(image) = self.image(index, &mut metrics)? {
                    carry.image = Some(image);
                }
            }
            Stage::Denoise | Stage::Refine => {
                let latents = self.sample(index, &latent, carry, &mut metrics, progress)?;
                carry.latents = Some(latents);
            }
            // Latents at twice the resolution.
            Stage::Upsample => {
                let x = take_latents(carry, kind)?;
                carry.latents = Some(self.call_one(index, &mut metrics, &x)?);
            }
            Stage::Decode => self.decode(index, &model, &latent, carry, &mut metrics)?,
            Stage::Mux => {
                return Err(in_stage(kind)(TchError::Kind(
                    "mux is the worker's own stage: a manifest cannot run it".into(),
                )));
            }
        }
        self.finish_metrics(index, started, &mut metrics);
        if let (Some(before), Some(after)) = (yielded, self.yield_stats()) {
            let (pauses, ms) = yielding::cost(before, after);
            metrics.yield_pauses = Some(pauses);
            metrics.yield_paused_ms = Some(ms);
        }
        Ok(metrics)
    }

    fn yield_stats(&self) -> Option<YieldStats> {
        let gate = self.settings.gate.as_ref()?;
        Some(
            gate.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .stats(),
        )
    }

    /// The steps stage `index` reports: the request's for `denoise`, the manifest's for
    /// `refine`, one for the rest.
    fn total_steps(&self, index: usize) -> u32 {
        let spec = &self.manifest.stages[index];
        match spec.stage {
            Stage::Denoise => self.request.shape.steps,
            Stage::Refine => spec.steps.unwrap_or(1),
            _ => 1,
        }
    }

    /// The stage's metrics before it runs, with the allocator's peaks reset so that they
    /// are the stage's own.
    fn start_metrics(&self, index: usize) -> StageMetrics {
        let spec = &self.manifest.stages[index];
        let device = self.settings.device;
        if device.is_cuda() {
            let _ = allocator::reset_peak(device_index(device) as i32);
        }
        StageMetrics {
            stage: spec.stage.name().into(),
            component: spec.component.clone(),
            ..StageMetrics::default()
        }
    }

    /// `text`: the prompt (and, with guidance, the negative prompt) to embeddings, from the
    /// cache when it has them all, else from the encoder.
    fn text(
        &mut self,
        index: usize,
        model: &Model,
        metrics: &mut StageMetrics,
    ) -> Result<Tensor, StagedError> {
        let spec = &self.manifest.stages[index];
        let mut prompts = vec![self.request.prompt];
        if self.guidance() > 1.0 {
            prompts.push(self.request.negative_prompt);
        }
        let encoder = self.encoder_id(&spec.component);
        let keys: Vec<_> = prompts
            .iter()
            .map(|p| EmbeddingCache::key(p, &format!("{encoder}/{}", model.text_tokens)))
            .collect();
        let hits = self.cached(&keys);
        metrics.cache_hit = self.settings.cache.as_ref().map(|_| hits.is_some());
        match hits {
            Some(rows) => {
                metrics.placement = "skipped".into();
                Ok(Tensor::f_cat(&rows, 0).map_err(in_stage(spec.stage))?)
            }
            None => self.encode(index, &prompts, model, keys, metrics),
        }
    }

    /// Every key's embedding from the cache, or `None` unless it holds them all (an
    /// unreadable entry counts as missing: the encoder runs instead).
    fn cached(&self, keys: &[CacheKey]) -> Option<Vec<Tensor>> {
        self.settings.cache.as_ref().and_then(|cache| {
            keys.iter()
                .map(|k| match cache.get(k, self.settings.device) {
                    Ok(hit) => hit,
                    Err(error) => {
                        tracing::warn!(%error, "embedding cache unreadable; encoding");
                        None
                    }
                })
                .collect()
        })
    }

    /// Runs the text encoder on `prompts`, and stores each prompt's row in the cache under
    /// its key, beside the run.
    fn encode(
        &mut self,
        index: usize,
        prompts: &[&str],
        model: &Model,
        keys: Vec<CacheKey>,
        metrics: &mut StageMetrics,
    ) -> Result<Tensor, StagedError> {
        let torch = in_stage(self.manifest.stages[index].stage);
        let ids = tokens::tokenize(prompts, model.text_tokens, self.settings.device);
        let text = self.call_one(index, metrics, &ids)?;
        if let Some(cache) = &self.settings.cache {
            let mut rows = Vec::with_capacity(keys.len());
            for (row, key) in keys.into_iter().enumerate() {
                let one = text
                    .f_narrow(0, row as i64, 1)
                    .and_then(|one| one.f_to_device(Device::Cpu))
                    .map_err(torch)?;
                rows.push((key, one));
            }
            self.writes.store(cache.clone(), rows);
        }
        Ok(text)
    }

    /// `audio`: the soundtrack (or silence) to conditioning tokens.
    fn audio(
        &mut self,
        index: usize,
        model: &Model,
        metrics: &mut StageMetrics,
    ) -> Result<Tensor, StagedError> {
        let device = self.settings.device;
        let wave = waveform(self.request.audio, model, &self.request.shape, device)
            .map_err(in_stage(Stage::Audio))?;
        self.call_one(index, metrics, &wave)
    }

    /// `image`: the reference image to a first-frame latent; skipped without one.
    fn image(
        &mut self,
        index: usize,
        metrics: &mut StageMetrics,
    ) -> Result<Option<Tensor>, StagedError> {
        let Some(image) = self.request.image else {
            metrics.placement = "skipped".into();
            return Ok(None);
        };
        let pixels = image_tensor(image, self.settings.device).map_err(in_stage(Stage::Image))?;
        Ok(Some(self.call_one(index, metrics, &pixels)?))
    }

    /// Runs stage `index`'s component (loaded now if need be) on one input.
    fn call_one(
        &mut self,
        index: usize,
        metrics: &mut StageMetrics,
        input: &Tensor,
    ) -> Result<Tensor, StagedError> {
        let component = self.acquire(index, metrics)?;
        Ok(component.call(&[input])?)
    }

    /// `denoise` or `refine`: the sampler's run from where the stage starts, conditioned on
    /// the earlier stages' output, one report per step.
    fn sample(
        &mut self,
        index: usize,
        latent: &Latent,
        carry: &mut Carry,
        metrics: &mut StageMetrics,
        progress: &mut dyn Progress,
    ) -> Result<Tensor, StagedError> {
        let spec = &self.manifest.stages[index];
        let guidance = spec.guidance.unwrap_or(1.0);
        let (text, audio, image) = conditioning(carry, guidance, latent, self.settings.device)
            .map_err(in_stage(spec.stage))?;
        let (x, sigmas) = self.sampler_start(index, latent, carry)?;
        let component = self.acquire(index, metrics)?;
        sampler::sample::<StagedError>(
            x,
            &sigmas,
            guidance,
            &mut |x, sigma| Ok(component.call(&[x, sigma, &text, &audio, &image])?),
            &mut |step| Ok(progress.step(step)?),
        )
    }

    /// Where a sampling stage starts, and its noise levels: `denoise` from the seed's noise
    /// at low resolution over the request's steps; `refine` from the upsampled latents
    /// re-noised part way (to `sigma_start`) at full resolution.
    fn sampler_start(
        &self,
        index: usize,
        latent: &Latent,
        carry: &mut Carry,
    ) -> Result<(Tensor, Vec<f64>), StagedError> {
        let spec = &self.manifest.stages[index];
        let torch = in_stage(spec.stage);
        let device = self.settings.device;
        let Latent {
            low_res: lr,
            frames: latent_frames,
            height: h,
            width: w,
            channels,
            ..
        } = *latent;
        let shift = spec.shift.unwrap_or(1.0);
        if spec.stage == Stage::Denoise {
            let noise = seeded_noise(
                [1, channels, latent_frames, h / lr, w / lr],
                self.request.seed,
                device,
            )
            .map_err(torch)?;
            return Ok((noise, sampler::sigmas(self.request.shape.steps, shift, 1.0)));
        }
        let start = spec.sigma_start.unwrap_or(0.4);
        let up = carry
            .latents
            .take()
            .ok_or_else(|| torch(TchError::Kind("refine needs upsampled latents".into())))?;
        let noise = seeded_noise(
            [1, channels, latent_frames, h, w],
            self.request.seed.wrapping_add(1),
            device,
        )
        .map_err(torch)?;
        let x = sampler::renoise(&up, &noise, start).map_err(torch)?;
        Ok((x, sampler::sigmas(self.total_steps(index), shift, start)))
    }

    /// `decode`: the latents to pixels in tiles; the latents are kept for the output.
    fn decode(
        &mut self,
        index: usize,
        model: &Model,
        latent: &Latent,
        carry: &mut Carry,
        metrics: &mut StageMetrics,
    ) -> Result<(), StagedError> {
        let x = take_latents(carry, Stage::Decode)?;
        let t = model.tiling;
        let tiling = Tiling {
            spatial: t.spatial,
            spatial_overlap: t.spatial_overlap,
            temporal: t.temporal,
            temporal_overlap: t.temporal_overlap,
        };
        let factors = Factors {
            spatial: latent.spatial,
            temporal: i64::from(model.temporal_factor),
        };
        let component = self.acquire(index, metrics)?;
        let mut failure = None;
        let decoded = tiles::decode_tiled(&x, tiling, factors, &mut |tile| {
            component.call(&[tile]).map_err(|error| {
                let message = error.to_string();
                failure = Some(error);
                TchError::Kind(message)
            })
        });
        let (video, stats) = match decoded {
            Ok(done) => done,
            Err(_) if failure.is_some() => {
                return Err(failure.take().expect("checked").into());
            }
            Err(source) => {
                return Err(StagedError::Tiles {
                    stage: Stage::Decode,
                    source,
                });
            }
        };
        metrics.tiles = Some(stats.tiles);
        carry.video = Some(video);
        carry.decoded = Some(x);
        Ok(())
    }

    /// After the stage's step: its compute time (the load left out), what the device and
    /// the driver held, the first call's time, then frees what no later stage needs,
    /// records what stayed and the allocator's peaks, and logs the stage.
    fn finish_metrics(&mut self, index: usize, started: Instant, metrics: &mut StageMetrics) {
        let spec = &self.manifest.stages[index];
        let device = self.settings.device;
        if device.is_cuda() {
            tch::Cuda::synchronize(device_index(device));
        }
        metrics.compute_ms = ((millis(started) - metrics.load_ms) * 100.0).round() / 100.0;
        metrics.device_weight_bytes = self.live.values().map(|l| l.device_bytes).sum();
        metrics.nvml_bytes = self.settings.nvml.as_ref().and_then(ProcessMemory::sample);
        metrics.first_call_ms = self
            .live
            .get_mut(&spec.component)
            .and_then(Live::take_first_call_ms);
        self.release_after(index);
        let mut held: Vec<String> = self.live.keys().cloned().collect();
        held.sort();
        metrics.held_after = held;
        if device.is_cuda()
            && let Ok(stats) = allocator::stats(device_index(device) as i32)
        {
            metrics.peak_allocated_bytes = stats.max_allocated;
            metrics.peak_reserved_bytes = stats.max_reserved;
            metrics.reserved_after_bytes = stats.reserved;
        }
        tracing::info!(
            stage = %spec.stage,
            component = %metrics.component,
            placement = %metrics.placement,
            load_ms = metrics.load_ms,
            compute_ms = format!("{:.1}", metrics.compute_ms),
            first_call_ms = metrics.first_call_ms,
            peak_reserved = metrics.peak_reserved_bytes,
            "stage done"
        );
    }

    /// What identifies the text encoder for the cache: its weights' SHA-256 from the
    /// manifest, else the file's path, size and modification time.
    fn encoder_id(&self, name: &str) -> String {
        let Some(component) = self.manifest.components.get(name) else {
            return name.into();
        };
        if let Some(sha) = &component.sha256 {
            return sha.clone();
        }
        // The code is part of the encoder too: a changed .pt with the same weights must not
        // be served the old embeddings.
        let code = self.dir.join(&component.code);
        let weights = self.dir.join(&component.weights);
        format!(
            "{}:{}/{}:{}",
            weights.display(),
            stamp(&weights),
            code.display(),
            stamp(&code)
        )
    }

    /// The stage's component, loaded now unless an earlier stage left it loaded.
    fn acquire(
        &mut self,
        index: usize,
        metrics: &mut StageMetrics,
    ) -> Result<&mut Live, StagedError> {
        let name = self.manifest.stages[index].component.clone();
        if !self.live.contains_key(&name) {
            let spec = &self.manifest.components[&name];
            let mut placement = self.manifest.placement_of(&name, self.request.placements);
            if placement == Placement::Auto {
                let held = self.manifest.memory.context.0
                    + self.live.values().map(|l| l.device_bytes).sum::<u64>();
                // It stays for every later stage that runs it: plan for the largest.
                let activations = (index..self.manifest.stages.len())
                    .filter(|&i| self.manifest.stages[i].component == name)
                    .map(|i| self.manifest.activation_bytes(i, &self.request.shape))
                    .max()
                    .unwrap_or(0);
                let need = spec.parameter_bytes.0 + activations;
                placement = decide_auto(need, self.request.lease_bytes, held, spec.blocks);
                tracing::info!(component = %name, %placement, need, held, lease = self.request.lease_bytes, "auto placement");
            }
            let code = self.preloaded.take(self.dir, &name, spec);
            let mut live = Live::load(
                self.dir,
                &name,
                spec,
                placement,
                self.settings.device,
                &self.settings.load,
                code,
            )?;
            live.yield_to(self.settings.gate.clone());
            metrics.load_ms = (live.load.seconds * 1e5).round() / 100.0;
            metrics.load_bytes = live.load.bytes;
            metrics.load_gb_per_s = live.load.gb_per_s();
            metrics.load_source = Some(if live.load.pooled { "pool" } else { "file" }.into());
            metrics.register_ms = live
                .load
                .register_seconds
                .map(|s| (s * 1e5).round() / 100.0);
            self.live.insert(name.clone(), live);
        }
        let live = self.live.get_mut(&name).expect("inserted above");
        // A component parked between runs wakes when a stage needs it (`generate --park`
        // wakes them all first, timed and admitted).
        live.wake()?;
        metrics.placement = live.placement.name().into();
        Ok(live)
    }

    /// Frees every component no stage after `index` runs (resident ones stay), then
    /// empties the caching allocator so the bytes go back to the driver.
    fn release_after(&mut self, index: usize) {
        let later: Vec<&str> = self.manifest.stages[index + 1..]
            .iter()
            .map(|s| s.component.as_str())
            .collect();
        let before = self.live.len();
        self.live.retain(|name, live| {
            live.placement == Placement::Resident || later.contains(&name.as_str())
        });
        if self.live.len() != before {
            tracing::debug!(freed = before - self.live.len(), "components freed");
        }
        // Also after a stage that freed no component: its activations' blocks are cached.
        empty_cache(self.settings.device);
    }
}

/// The latents an earlier stage left for `stage` (`upsample`, `decode`), taken.
fn take_latents(carry: &mut Carry, stage: Stage) -> Result<Tensor, StagedError> {
    carry
        .latents
        .take()
        .ok_or_else(|| in_stage(stage)(TchError::Kind(format!("{stage} needs latents"))))
}

/// What a sampling stage is conditioned on: the text (the negative prompt's row kept only
/// when the stage guides), the audio tokens, and the image latent (zeros without a reference
/// image).
fn conditioning(
    carry: &Carry,
    guidance: f64,
    latent: &Latent,
    device: Device,
) -> Result<(Tensor, Tensor, Tensor), TchError> {
    let (text, audio) = match (&carry.text, &carry.audio) {
        (Some(t), Some(a)) => (t.shallow_clone(), a.shallow_clone()),
        _ => {
            return Err(TchError::Kind(
                "text and audio conditioning must come first".into(),
            ));
        }
    };
    let image = match &carry.image {
        Some(i) => i.shallow_clone(),
        None => Tensor::f_zeros(
            [1, latent.channels, 1, latent.height, latent.width],
            (Kind::Float, device),
        )?,
    };
    let text = if guidance > 1.0 {
        text
    } else {
        text.f_narrow(0, 0, 1)?
    };
    Ok((text, audio, image))
}

/// A file's size and modification time, which change when it is rewritten.
fn stamp(path: &Path) -> String {
    std::fs::metadata(path)
        .ok()
        .map(|m| {
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}:{modified}", m.len())
        })
        .unwrap_or_default()
}

fn empty_cache(device: Device) {
    if device.is_cuda()
        && let Err(error) = allocator::empty_cache()
    {
        tracing::warn!(%error, "cannot empty the caching allocator");
    }
}

/// Gaussian noise from `seed`, drawn on the CPU so every device and placement starts from
/// the same latents.
fn seeded_noise(shape: [i64; 5], seed: u64, device: Device) -> Result<Tensor, TchError> {
    let generator =
        super::tiny::seeded(seed, || Tensor::f_randn(shape, (Kind::Float, Device::Cpu)));
    generator?.f_to_device(device)
}

/// The soundtrack as `[1, channels, samples]`, or silence of the video's length.
fn waveform(
    audio: Option<&Audio>,
    model: &Model,
    shape: &Shape,
    device: Device,
) -> Result<Tensor, TchError> {
    let channels = i64::from(model.audio_channels);
    match audio {
        Some(audio) => {
            let frames = audio.frames() as i64;
            Tensor::from_slice(&audio.samples)
                .f_view([frames, i64::from(audio.channels)])?
                .f_transpose(0, 1)?
                .f_unsqueeze(0)?
                .f_to_device(device)
        }
        None => {
            let seconds = f64::from(shape.frames) / f64::from(shape.fps);
            let samples = (seconds * f64::from(model.audio_sample_rate)).round() as i64;
            Tensor::f_zeros([1, channels, samples], (Kind::Float, device))
        }
    }
}

/// `[1, 3, H, W]` in [-1, 1].
fn image_tensor(image: &Image, device: Device) -> Result<Tensor, TchError> {
    Tensor::from_slice(&image.rgb)
        .f_view([i64::from(image.height), i64::from(image.width), 3])?
        .f_permute([2, 0, 1])?
        .f_unsqueeze(0)?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(127.5)?
        .f_sub_scalar(1.0)?
        .f_to_device(device)
}

/// `[1, 3, F, H, W]` in [-1, 1] to rgb24 frames. On the host: each step of the conversion
/// makes a full-size temporary, which on the GPU would add several videos to the peak.
fn to_frames(video: &Tensor) -> Result<Frames, TchError> {
    let size = video.size();
    let (count, height, width) = (size[2], size[3], size[4]);
    let bytes = video
        .f_to_device(Device::Cpu)?
        .f_squeeze_dim(0)?
        .f_permute([1, 2, 3, 0])?
        .f_add_scalar(1.0)?
        .f_mul_scalar(127.5)?
        .f_round()?
        .f_clamp(0.0, 255.0)?
        .f_to_kind(Kind::Uint8)?
        .f_contiguous()?;
    let len = (count * height * width * 3) as usize;
    let mut rgb = vec![0u8; len];
    bytes.f_copy_data_u8(&mut rgb, len)?;
    Ok(Frames {
        width: width as u32,
        height: height as u32,
        count: count as u32,
        rgb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_gpu_when_the_lease_has_room() {
        assert_eq!(decide_auto(10, 100, 50, 4), Placement::Gpu);
        assert_eq!(decide_auto(60, 100, 50, 4), Placement::Stream);
        assert_eq!(decide_auto(60, 100, 50, 0), Placement::Cpu);
        assert_eq!(decide_auto(60, 0, 50, 0), Placement::Gpu);
    }
}
