//! A TorchScript voice that loads on first use and unloads when idle: what Ollama's users
//! take for granted. An idle voice should not hold GPU memory forever, and a voice nobody
//! asks for should cost neither start-up time nor memory.
//!
//! The cycle of one voice ([`VoiceSlot`]):
//!
//! 1. **Listed, not loaded.** At start only `voice.json` is read ([`VoiceSpec`]); the voice
//!    is in ListVoices, holding nothing.
//! 2. **First use.** A request that names it takes the slot's lock (so requests that
//!    arrive during the load wait for that load, never start a second), asks the supervisor
//!    for the voice's own lease, sized from what the voice was measured to need
//!    ([`crate::model_sizes`]; until measured, its file plus `--lease-margin`), and loads
//!    the model under it, measuring the allocator's peak.
//! 3. **In use.** Each request holds a [`VoiceUse`]; its calls are measured too, and a peak
//!    above what is known is kept for the next lease.
//! 4. **Idle.** When the last request ends, the keep-alive runs ([`crate::keep_alive`]);
//!    past it the model is dropped, libtorch's cache emptied, and the lease released. A
//!    revoked or lost lease unloads it as well. The next request starts again at 2.
//!
//! Without a supervisor to ask (`--lease-from-env`: the claim's budget was checked at
//! start) or without CUDA (unless `--voice-lease-bytes` asks for the accounting anyway), a
//! voice loads and unloads the same way, holding no lease of its own.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arbiter::endpoint::Address;
use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1 as pb;
use tch::Device;
use tokio_util::sync::CancellationToken;

use crate::keep_alive::{self, Clock, KeepAlive};
use crate::lip_sync::model::device_name;
use crate::model_lease::{self, LeaseAskError, ModelLease};
use crate::model_sizes::{ModelSizes, Peak, peak_during};
use crate::torchscript::{TorchVoice, TorchVoiceError, VoiceSpec};

/// Why a request could not have its voice.
#[derive(Debug, thiserror::Error)]
pub enum VoiceLoadError {
    #[error("voice `{voice}`: {source}")]
    Lease {
        voice: String,
        source: LeaseAskError,
    },
    #[error(transparent)]
    Load(#[from] TorchVoiceError),
    #[error("voice `{voice}`: loading it failed: {detail}")]
    Task { voice: String, detail: String },
}

/// Who lends the models their memory.
#[derive(Clone, Debug)]
pub struct Lender {
    pub supervisor: Address,
    /// The card: a uuid, an index, or "" (any).
    pub gpu: String,
}

/// How the service's models live: shared by every slot.
#[derive(Debug)]
pub struct Lifecycle {
    /// None: no leases of their own (a claim, or nothing is leased).
    pub lender: Option<Lender>,
    pub device: Device,
    pub keep_alive: KeepAlive,
    /// How long a load waits in the supervisor's queue for its lease.
    pub lease_wait: Duration,
    /// Added to a model file's size for its first lease, before it was measured.
    pub lease_margin: u64,
    /// A voice lease of this size, whatever was measured; also held without CUDA.
    pub voice_lease_bytes: Option<u64>,
    pub sizes: Arc<ModelSizes>,
    pub stop: CancellationToken,
}

impl Lifecycle {
    /// Whether a model on this service holds a lease of its own while loaded.
    fn leases(&self) -> Option<&Lender> {
        self.lender
            .as_ref()
            .filter(|_| self.device.is_cuda() || self.voice_lease_bytes.is_some())
    }
}

struct Loaded {
    voice: Arc<TorchVoice>,
    clock: Arc<Clock>,
    lease: Option<ModelLease>,
    generation: u64,
    /// What the load left resident, to add to a call's peak.
    kept: u64,
}

/// What status reports, readable without waiting for a load.
#[derive(Clone, Default)]
struct View {
    clock: Option<Arc<Clock>>,
    device: Option<Device>,
    lease_id: String,
    lease_bytes: u64,
    loads: u64,
    unloads: u64,
    last_load: Option<Duration>,
    note: String,
}

/// One TorchScript voice and its life on the device (see the module docs).
pub struct VoiceSlot {
    spec: VoiceSpec,
    key: String,
    life: Arc<Lifecycle>,
    loaded: tokio::sync::Mutex<Option<Loaded>>,
    view: Mutex<View>,
}

impl std::fmt::Debug for VoiceSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceSlot")
            .field("name", &self.spec.name)
            .finish()
    }
}

/// A request's hold on a loaded voice; the keep-alive starts when the last one drops.
pub struct VoiceUse {
    voice: Arc<TorchVoice>,
    clock: Arc<Clock>,
    slot: Arc<VoiceSlot>,
    kept: u64,
}

impl std::fmt::Debug for VoiceUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceUse")
            .field("voice", &self.voice.name())
            .finish()
    }
}

impl std::ops::Deref for VoiceUse {
    type Target = TorchVoice;
    fn deref(&self) -> &TorchVoice {
        &self.voice
    }
}

impl Drop for VoiceUse {
    fn drop(&mut self) {
        self.clock.end();
    }
}

impl VoiceUse {
    /// Runs one call of the voice (blocking), measuring its peak on the GPU; a need above
    /// what is known sizes the voice's next lease.
    pub fn measured<T>(&self, call: impl FnOnce(&TorchVoice) -> T) -> T {
        if !self.voice.on_gpu() {
            return call(&self.voice);
        }
        let (value, peak) = peak_during(|| call(&self.voice));
        if let Some(peak) = peak {
            self.slot.learn(self.kept + peak.peak);
        }
        value
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why the watcher woke.
enum Wake {
    Idle,
    Lost,
    Stopping,
}

impl VoiceSlot {
    pub fn new(spec: VoiceSpec, life: Arc<Lifecycle>) -> Arc<VoiceSlot> {
        let key = ModelSizes::key(&spec.model);
        Arc::new(VoiceSlot {
            spec,
            key,
            life,
            loaded: tokio::sync::Mutex::new(None),
            view: Mutex::new(View {
                note: "not used yet: loads on the first request".into(),
                ..View::default()
            }),
        })
    }

    pub fn spec(&self) -> &VoiceSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The lease the next load asks for: the configured size, else what the voice was
    /// measured to need, else its file and the margin.
    pub fn lease_bytes(&self) -> u64 {
        if let Some(bytes) = self.life.voice_lease_bytes {
            return bytes;
        }
        let bytes = self.life.sizes.get(&self.key).unwrap_or_else(|| {
            std::fs::metadata(&self.spec.model).map_or(0, |m| m.len()) + self.life.lease_margin
        });
        bytes.max(1).next_multiple_of(1 << 20)
    }

    fn learn(&self, need: u64) {
        if self.life.sizes.record(&self.key, need) {
            let leased = lock(&self.view).lease_bytes;
            if leased > 0 && need > leased {
                tracing::warn!(voice = %self.spec.name, need, leased, "the voice needed more GPU memory than its lease; its next lease asks for what it needed");
            } else {
                tracing::debug!(voice = %self.spec.name, need, "measured the voice's GPU memory");
            }
        }
    }

    /// The voice for one request, loading it first if it is not loaded.
    pub async fn acquire(self: &Arc<Self>, keep: KeepAlive) -> Result<VoiceUse, VoiceLoadError> {
        let mut loaded = self.loaded.lock().await;
        if let Some(l) = loaded.as_ref() {
            l.clock.begin(keep);
            return Ok(VoiceUse {
                voice: Arc::clone(&l.voice),
                clock: Arc::clone(&l.clock),
                slot: Arc::clone(self),
                kept: l.kept,
            });
        }
        let began = Instant::now();
        let bytes = self.lease_bytes();
        let lease = match self.life.leases() {
            Some(lender) => {
                let ask = model_lease::Ask {
                    supervisor: lender.supervisor.clone(),
                    holder: format!(
                        "arbiter-tts/voice/{} (pid {})",
                        self.spec.name,
                        std::process::id()
                    ),
                    gpu: lender.gpu.clone(),
                    bytes,
                    priority: spb::Priority::Interactive,
                    wait: self.life.lease_wait,
                };
                match ModelLease::acquire(&ask).await {
                    Ok(lease) => Some(lease),
                    Err(source) => {
                        lock(&self.view).note = format!("no lease: {source}");
                        return Err(VoiceLoadError::Lease {
                            voice: self.spec.name.clone(),
                            source,
                        });
                    }
                }
            }
            None => None,
        };
        let spec = self.spec.clone();
        let device = self.life.device;
        let loading = tokio::task::spawn_blocking(move || {
            peak_during(|| TorchVoice::from_spec(&spec, device))
        })
        .await;
        let outcome = match loading {
            Ok((Ok(voice), peak)) => Ok((voice, peak)),
            Ok((Err(error), _)) => Err(VoiceLoadError::Load(error)),
            Err(join) => Err(VoiceLoadError::Task {
                voice: self.spec.name.clone(),
                detail: join.to_string(),
            }),
        };
        let (voice, peak) = match outcome {
            Ok(done) => done,
            Err(error) => {
                if device.is_cuda() {
                    let _ =
                        tokio::task::spawn_blocking(arbiter_torch::allocator::empty_cache).await;
                }
                if let Some(lease) = lease {
                    lease.release().await;
                }
                lock(&self.view).note = format!("the last load failed: {error}");
                return Err(error);
            }
        };
        let took = began.elapsed();
        let kept = peak.map_or(0, |p: Peak| p.kept);
        if let Some(peak) = peak {
            self.learn(peak.peak);
        }
        let clock = Arc::new(Clock::new(keep));
        clock.begin(keep);
        let lost = lease.as_ref().map(ModelLease::lost);
        {
            let mut view = lock(&self.view);
            view.clock = Some(Arc::clone(&clock));
            view.device = Some(device);
            view.lease_id = lease
                .as_ref()
                .map(|l| l.lease.lease_id.clone())
                .unwrap_or_default();
            view.lease_bytes = lease.as_ref().map_or(0, |l| l.lease.bytes);
            view.loads += 1;
            view.last_load = Some(took);
            view.note.clear();
        }
        // Loads are counted under the slot's lock: each load's count names it.
        let generation = lock(&self.view).loads;
        tracing::info!(
            voice = %self.spec.name,
            device = %device_name(device),
            lease = %lock(&self.view).lease_id,
            lease_bytes = lease.as_ref().map_or(0, |l| l.lease.bytes),
            peak = ?peak.map(|p| p.peak),
            load_ms = took.as_secs_f64() * 1e3,
            keep_alive = %keep,
            "loaded a TorchScript voice on first use"
        );
        let voice = Arc::new(voice);
        *loaded = Some(Loaded {
            voice: Arc::clone(&voice),
            clock: Arc::clone(&clock),
            lease,
            generation,
            kept,
        });
        drop(loaded);
        tokio::spawn(Arc::clone(self).watch(generation, Arc::clone(&clock), lost));
        Ok(VoiceUse {
            voice,
            clock,
            slot: Arc::clone(self),
            kept,
        })
    }

    /// Unloads the voice of `generation` once it has sat idle past its keep-alive, its lease
    /// is lost, or the service stops.
    async fn watch(
        self: Arc<Self>,
        generation: u64,
        clock: Arc<Clock>,
        lost: Option<CancellationToken>,
    ) {
        loop {
            let wake = tokio::select! {
                () = clock.idle_past_keep_alive() => Wake::Idle,
                () = async { match &lost { Some(lost) => lost.cancelled().await, None => std::future::pending().await } } => Wake::Lost,
                () = self.life.stop.cancelled() => Wake::Stopping,
            };
            let mut loaded = self.loaded.lock().await;
            if loaded.as_ref().is_none_or(|l| l.generation != generation) {
                return;
            }
            let why = match wake {
                // A request may have begun between the wake and the lock.
                Wake::Idle => match clock.state().unload_at {
                    Some(at) if at <= tokio::time::Instant::now() => {
                        format!(
                            "unloaded after {} idle (its keep-alive)",
                            clock.state().keep
                        )
                    }
                    _ => continue,
                },
                Wake::Lost => {
                    "unloaded: its lease ended (revoked, or the supervisor went away)".into()
                }
                Wake::Stopping => "unloaded: the service is stopping".into(),
            };
            let Some(gone) = loaded.take() else { return };
            drop(gone.voice);
            if self.life.device.is_cuda() {
                // Dropped tensors stay reserved in libtorch's cache until it is emptied.
                let _ = tokio::task::spawn_blocking(arbiter_torch::allocator::empty_cache).await;
            }
            let returned = match gone.lease {
                Some(lease) => Some(lease.release().await),
                None => None,
            };
            {
                let mut view = lock(&self.view);
                view.clock = None;
                view.device = None;
                view.lease_id.clear();
                view.lease_bytes = 0;
                view.unloads += 1;
                view.note = why.clone();
            }
            tracing::info!(voice = %self.spec.name, returned = ?returned, "{why}");
            return;
        }
    }

    /// The voice's residency, as ListVoices reports it.
    pub fn residency(&self) -> pb::ModelResidency {
        let view = lock(&self.view).clone();
        let state = view.clock.as_ref().map(|c| c.state());
        pb::ModelResidency {
            loaded: view.device.is_some(),
            device: view.device.map(device_name).unwrap_or_default(),
            lease_id: view.lease_id,
            lease_bytes: view.lease_bytes,
            unload_at: state
                .and_then(|s| s.unload_at)
                .map(|at| keep_alive::wall_clock(at).into()),
            keep_forever: state.is_some_and(|s| s.keep == KeepAlive::Forever),
            in_use: state.map_or(0, |s| s.in_use),
            measured_bytes: self.life.sizes.get(&self.key).unwrap_or(0),
            loads: view.loads,
            unloads: view.unloads,
            last_load: view
                .last_load
                .and_then(|d| prost_types::Duration::try_from(d).ok()),
            note: view.note,
        }
    }

    /// Whether the voice is loaded on a GPU now.
    pub fn on_gpu(&self) -> bool {
        lock(&self.view).device.is_some_and(|d| d.is_cuda())
    }
}
