//! The lip-sync model's own lease: a second streaming lease (`arbiter-tts/lipsync`), asked
//! as *preemptible*, separate from the voices' lease ([`crate::lease`]).
//!
//! Why a lease of its own: the supervisor asks preemptible holders to give back memory when
//! a higher-priority request cannot fit, and it asks a lease for bytes up to that lease's
//! size. The voices cannot leave the GPU without the service going dark, but the lip-sync
//! model can: it renders on the CPU meanwhile (slower, still correct). So only its bytes are
//! preemptible, and a reclaim is always one the service can answer in full.
//!
//! The cycle:
//!
//! 1. **Acquire.** At start and whenever a render wants the model while no lease is held or
//!    asked for, `Hold` a lease of the configured size, preemptible, at the configured
//!    priority (batch by default, so any waiter of a higher class may reclaim it), with
//!    `max_wait` the short render wait. Renders wait at most that long (plus a 0.5 s margin
//!    for the supervisor's answer to arrive); if no grant comes,
//!    the supervisor ends the wait (DEADLINE_EXCEEDED), renders run on the CPU, and the next
//!    render asks again. A waiter that gives up this quickly never blocks the GPU's queue for
//!    long.
//! 2. **Resident.** On the grant the model is loaded on CUDA device 0 (when libtorch sees
//!    one; without CUDA the lease is still held and accounted, and renders run on the CPU).
//! 3. **Reclaim.** On `ReclaimRequested`: new render windows go to the CPU at once, the GPU
//!    copy is dropped as soon as the window rendering on it finishes, libtorch's cache is
//!    emptied ([`arbiter_torch::allocator::empty_cache`]), and the whole lease is given back
//!    with `Release` (a reclaim never asks for more than the lease holds, and the model
//!    cannot be half resident). Voices are untouched. The stream then ends.
//! 4. **Lost.** A revocation, a failed stream (the supervisor restarted) or shutdown also
//!    take the model off the GPU: no lease, no GPU memory. Back to 1 on the next render.
//!
//! Under `--lease-from-env` there is no supervisor to ask ([`Lender::Claim`]): the model's
//! bytes were checked against the claim's budget at start-up, so it goes on the GPU at once
//! and stays there, resident under the claim's lease, until the service stops.
//!
//! Every transition is logged, and counted in [`Snapshot`] (served by `GetLipSyncStatus`);
//! the supervisor's `ListLeases` and `WatchEvents` show the same grants, reclaims and
//! releases from its side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as spb;
use spb::lease_update::Update;
use spb::supervisor_client::SupervisorClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::keep_alive::{Clock, KeepAlive};
use crate::lip_sync::model::{LipSyncModel, device_name};
use crate::model_sizes::{ModelSizes, peak_during};

/// How long past the short wait a render waits for the supervisor's answer (connecting,
/// loading the model onto the GPU after the grant) before it renders on the CPU anyway.
const ANSWER_MARGIN: Duration = Duration::from_millis(500);

/// Who lends the model its GPU memory.
#[derive(Clone, Debug)]
pub enum Lender {
    /// The supervisor, as a preemptible lease of the model's own on `gpu` (a uuid, an
    /// index, or "" for any: the card the service's models run on).
    Supervisor { address: Address, gpu: String },
    /// A lease someone else holds for the service (`--lease-from-env`), whose budget the
    /// model's bytes were checked against at start-up: nobody reclaims them.
    Claim { lease_id: String },
}

#[derive(Clone, Debug)]
pub struct ResidencySettings {
    pub lender: Lender,
    /// Shown by the supervisor, such as `arbiter-tts/lipsync (pid 42)`.
    pub holder: String,
    /// The lease: `--lipsync-lease-bytes`, or the first estimate until `sizing` has a
    /// measurement.
    pub bytes: u64,
    /// Where the model's measured need is kept; None: `bytes` is the size, always.
    pub sizing: Option<Sizing>,
    /// How long the model stays on the GPU after its last render, unless a request says.
    pub keep_alive: KeepAlive,
    pub priority: spb::Priority,
    /// How long a render waits for a grant before rendering on the CPU; also the Hold's
    /// `max_wait`.
    pub wait: Duration,
}

/// The model's measured need, and its key among the measured sizes.
#[derive(Clone, Debug)]
pub struct Sizing {
    pub sizes: Arc<ModelSizes>,
    pub key: String,
}

/// Where the model is in the cycle (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Offloaded,
    Acquiring,
    Resident,
    Reclaiming,
    /// Off the GPU after sitting idle past its keep-alive; like Offloaded otherwise.
    Unloaded,
}

#[derive(Clone, Debug)]
struct State {
    phase: Phase,
    lease_id: Option<String>,
    /// Why the model is not resident, when it is not.
    note: String,
    backoff: Backoff,
}

/// Failed asks (the supervisor unreachable or refusing, the lease stream failing before a
/// grant, the model not loading on the GPU) hold the next one back: 5 s after the first, doubling, at most
/// 5 minutes; a grant clears it. Without it every render would ask again, and a model that
/// cannot load would be loaded (and fail) once per render. A lease that simply ends
/// (reclaimed, revoked, no room within the short wait) is no failure: the next render asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(5);
    const MOST: Duration = Duration::from_secs(300);

    /// Counts a failure at `now`; returns how long the next ask waits.
    fn failed(&mut self, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let wait = Self::FIRST
            .saturating_mul(1 << (self.failures - 1).min(16))
            .min(Self::MOST);
        self.until = Some(now + wait);
        wait
    }

    /// How long an ask at `now` must still wait; None once it may go.
    fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

/// How a lease ended (or why none was had), and whether that counts as a failure.
enum Ending {
    Normal(String),
    Failed(String),
    /// Idle past its keep-alive: unloaded and the lease released.
    Idle(String),
}

/// What a render is told before it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The model is resident under its lease.
    pub leased: bool,
    /// Why not, when not.
    pub note: String,
}

/// The counters and state `GetLipSyncStatus` reports.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub phase: Option<Phase>,
    pub lease_id: Option<String>,
    pub lease_bytes: u64,
    pub reclaims: u64,
    pub bytes_given_back: u64,
    pub last_reclaim_answer: Option<Duration>,
    pub leases_granted: u64,
    pub lease_timeouts: u64,
    /// Why the model is not resident, when it is not.
    pub note: String,
    /// Failed asks in a row, and how long until a render may ask again.
    pub failures: u32,
    pub retry_in: Option<Duration>,
    /// Renders using the model now, and when it unloads if none comes.
    pub in_use: u32,
    pub unload_at: Option<tokio::time::Instant>,
    pub keep_forever: bool,
    /// What the model was measured to need (its weights on the GPU and a render's peak).
    pub measured_bytes: Option<u64>,
    /// Unloads after an idle keep-alive, and how long the last load onto the GPU took.
    pub idle_unloads: u64,
    pub last_load: Option<Duration>,
}

#[derive(Default)]
struct Counters {
    reclaims: AtomicU64,
    bytes_given_back: AtomicU64,
    /// Microseconds, plus one (0: never).
    last_reclaim_answer: AtomicU64,
    leases_granted: AtomicU64,
    lease_timeouts: AtomicU64,
    idle_unloads: AtomicU64,
    /// Microseconds, plus one (0: never).
    last_load: AtomicU64,
    /// What the GPU copy keeps reserved, measured at its last load.
    weights: AtomicU64,
}

/// The lease of the lip-sync model; cheap to clone.
#[derive(Clone)]
pub struct Residency {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ResidencySettings,
    model: Arc<LipSyncModel>,
    state: watch::Sender<State>,
    counters: Counters,
    /// The renders using the model, for the keep-alive.
    clock: Clock,
    stop: CancellationToken,
}

/// A render's hold on the model; the keep-alive counts from when the last one drops.
pub struct RenderUse {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RenderUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RenderUse")
    }
}

impl Drop for RenderUse {
    fn drop(&mut self) {
        self.inner.clock.end();
    }
}

impl std::fmt::Debug for Residency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Residency")
            .field("settings", &self.inner.settings)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

impl Residency {
    /// Offloaded, holding nothing until [`Self::start`] or a render asks.
    pub fn new(
        settings: ResidencySettings,
        model: Arc<LipSyncModel>,
        stop: CancellationToken,
    ) -> Residency {
        let (state, _) = watch::channel(State {
            phase: Phase::Offloaded,
            lease_id: None,
            note: "not asked for yet".into(),
            backoff: Backoff::default(),
        });
        let clock = Clock::new(settings.keep_alive);
        Residency {
            inner: Arc::new(Inner {
                settings,
                model,
                state,
                counters: Counters::default(),
                clock,
                stop,
            }),
        }
    }

    /// The keep-alive a render gets when its request gives none.
    pub fn keep_alive(&self) -> KeepAlive {
        self.inner.settings.keep_alive
    }

    /// The lease the next ask is for: the measured need once there is one.
    pub fn lease_bytes(&self) -> u64 {
        self.inner.lease_bytes()
    }

    /// Keeps a render's measured peak: with the weights, what the model needs on the GPU.
    pub fn learn_render(&self, peak: u64) {
        let need = self.inner.counters.weights.load(Ordering::Relaxed) + peak;
        self.inner.learn(need);
    }

    /// Starts an acquisition unless one is running, the lease is held, or failed asks hold
    /// the next one back ([`Backoff`]).
    fn begin_acquire(&self) {
        let begun = self.inner.state.send_if_modified(|s| {
            if !matches!(s.phase, Phase::Offloaded | Phase::Unloaded)
                || self.inner.stop.is_cancelled()
                || s.backoff.remaining(Instant::now()).is_some()
            {
                return false;
            }
            s.phase = Phase::Acquiring;
            s.note = "asking the supervisor for GPU memory".into();
            true
        });
        if begun {
            let inner = Arc::clone(&self.inner);
            tokio::spawn(async move { inner.hold().await });
        }
    }

    /// For a render that wants the model on the GPU: brings it back under a new lease if it
    /// is not resident, waiting at most the short wait, and says where the render stands.
    /// A model being reclaimed is not waited for: the render goes to the CPU. The model
    /// stays (and its keep-alive `keep` waits) while the returned use is held.
    pub async fn ensure_for(&self, keep: KeepAlive) -> (Placement, RenderUse) {
        self.inner.clock.begin(keep);
        let held = RenderUse {
            inner: Arc::clone(&self.inner),
        };
        (self.settle().await, held)
    }

    async fn settle(&self) -> Placement {
        let mut state = self.inner.state.subscribe();
        self.begin_acquire();
        let phase = state.borrow_and_update().phase;
        if phase == Phase::Acquiring {
            let settled = state.wait_for(|s| s.phase != Phase::Acquiring);
            let _ = tokio::time::timeout(self.inner.settings.wait + ANSWER_MARGIN, settled).await;
        }
        self.placement()
    }

    /// Where a render stands now, without asking for anything.
    pub fn placement(&self) -> Placement {
        let state = self.inner.state.borrow();
        if state.phase == Phase::Resident {
            Placement {
                leased: true,
                note: String::new(),
            }
        } else {
            Placement {
                leased: false,
                note: state.note.clone(),
            }
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let state = self.inner.state.borrow().clone();
        let c = &self.inner.counters;
        let answer = c.last_reclaim_answer.load(Ordering::Relaxed);
        let load = c.last_load.load(Ordering::Relaxed);
        let clock = self.inner.clock.state();
        let resident = state.phase == Phase::Resident;
        Snapshot {
            phase: Some(state.phase),
            lease_id: state.lease_id,
            lease_bytes: self.inner.lease_bytes(),
            in_use: clock.in_use,
            unload_at: clock.unload_at.filter(|_| resident),
            keep_forever: clock.keep == KeepAlive::Forever,
            measured_bytes: self
                .inner
                .settings
                .sizing
                .as_ref()
                .and_then(|s| s.sizes.get(&s.key)),
            idle_unloads: c.idle_unloads.load(Ordering::Relaxed),
            last_load: (load > 0).then(|| Duration::from_micros(load - 1)),
            reclaims: c.reclaims.load(Ordering::Relaxed),
            bytes_given_back: c.bytes_given_back.load(Ordering::Relaxed),
            last_reclaim_answer: (answer > 0).then(|| Duration::from_micros(answer - 1)),
            leases_granted: c.leases_granted.load(Ordering::Relaxed),
            lease_timeouts: c.lease_timeouts.load(Ordering::Relaxed),
            note: state.note,
            failures: state.backoff.failures,
            retry_in: state.backoff.remaining(Instant::now()),
        }
    }
}

impl Inner {
    /// One lease, from the ask to its end; the model is off the GPU afterwards, whatever
    /// ended it.
    async fn hold(self: Arc<Self>) {
        let ending = self.hold_once().await;
        let model = Arc::clone(&self.model);
        let left_gpu = tokio::task::spawn_blocking(move || model.offload())
            .await
            .unwrap_or(false);
        self.state.send_modify(|s| {
            s.phase = Phase::Offloaded;
            s.lease_id = None;
            s.note = match ending {
                Ending::Idle(why) => {
                    s.phase = Phase::Unloaded;
                    why
                }
                Ending::Normal(why) => why,
                Ending::Failed(why) => {
                    let wait = s.backoff.failed(Instant::now());
                    tracing::warn!(why = %why, failures = s.backoff.failures, next_ask_in = ?wait, "the lip-sync model renders on the CPU until the next ask");
                    format!("{why} (asking again in {} s)", wait.as_secs())
                }
            };
            if left_gpu {
                tracing::info!(why = %s.note, "the lip-sync model left the GPU");
            }
        });
    }

    /// Holds the lease until it ends; returns why it ended (or was never granted).
    async fn hold_once(&self) -> Ending {
        let settings = &self.settings;
        let (supervisor, gpu) = match &settings.lender {
            Lender::Claim { lease_id } => return self.hold_claimed(lease_id).await,
            Lender::Supervisor { address, gpu } => (address, gpu),
        };
        let channel = match connect(supervisor).await {
            Ok(channel) => channel,
            Err(error) => {
                tracing::warn!(%error, "cannot reach the supervisor for the lip-sync lease; rendering on the CPU");
                return Ending::Failed(format!("cannot reach the supervisor: {error}"));
            }
        };
        let mut client = SupervisorClient::new(channel);
        let bytes = self.lease_bytes();
        let request = spb::LeaseRequest {
            holder: settings.holder.clone(),
            gpu: gpu.clone(),
            bytes,
            priority: settings.priority as i32,
            max_wait: prost_types::Duration::try_from(settings.wait).ok(),
            preemptible: true,
            ..Default::default()
        };
        let mut stream = match client.hold(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "the supervisor refused the lip-sync lease");
                return Ending::Failed(format!(
                    "the supervisor refused the lease: {}",
                    status.message()
                ));
            }
        };
        let mut held: Option<spb::Lease> = None;
        loop {
            let idle = async {
                match &held {
                    Some(_) => self.clock.idle_past_keep_alive().await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                () = self.stop.cancelled() => return Ending::Normal("the service is stopping".into()),
                () = idle => {
                    if let Some(lease) = held.as_ref() {
                        return self.unload_idle(&mut client, lease).await;
                    }
                    continue;
                }
                message = stream.message() => message,
            };
            let update = match message {
                Ok(Some(update)) => update,
                Ok(None) => return Ending::Normal("the supervisor ended the lease stream".into()),
                Err(status) if held.is_none() && status.code() == tonic::Code::DeadlineExceeded => {
                    self.counters.lease_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(wait = ?settings.wait, bytes, "no GPU memory for the lip-sync model within the wait; rendering on the CPU");
                    return Ending::Normal(format!(
                        "no GPU memory for it within {} ms",
                        settings.wait.as_millis()
                    ));
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "the lip-sync lease stream failed");
                    let why = format!("the lease stream failed: {}", status.message());
                    // A stream lost after a grant (the supervisor restarted) is a loss like a
                    // revocation: the next render asks again, and fails then if it must.
                    return if held.is_some() {
                        Ending::Normal(why)
                    } else {
                        Ending::Failed(why)
                    };
                }
            };
            match update.update {
                Some(Update::Queued(queued)) => {
                    tracing::debug!(
                        position = queued.position,
                        "the lip-sync model waits for GPU memory"
                    );
                }
                Some(Update::Granted(lease)) if held.is_none() => {
                    let model = Arc::clone(&self.model);
                    let began = Instant::now();
                    let moved = tokio::task::spawn_blocking(move || {
                        let (moved, peak) = peak_during(|| model.to_gpu());
                        moved.map(|device| (device, peak))
                    })
                    .await;
                    let device = match moved {
                        Ok(Ok((device, peak))) => {
                            self.counters
                                .last_load
                                .store(began.elapsed().as_micros() as u64 + 1, Ordering::Relaxed);
                            if let Some(peak) = peak {
                                self.counters.weights.store(peak.kept, Ordering::Relaxed);
                                self.learn(peak.peak);
                            }
                            device
                        }
                        Ok(Err(error)) => {
                            tracing::error!(%error, "cannot load the lip-sync model on the GPU; giving its lease back");
                            release(&mut client, &lease.lease_id).await;
                            return Ending::Failed(format!("cannot load it on the GPU: {error}"));
                        }
                        Err(error) => {
                            release(&mut client, &lease.lease_id).await;
                            return Ending::Failed(format!(
                                "loading it on the GPU failed: {error}"
                            ));
                        }
                    };
                    self.counters.leases_granted.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(lease = %lease.lease_id, bytes = lease.bytes, gpu = %lease.gpu_uuid, device = %device_name(device), "the lip-sync model is resident under its lease");
                    self.state.send_modify(|s| {
                        s.phase = Phase::Resident;
                        s.lease_id = Some(lease.lease_id.clone());
                        s.note.clear();
                        s.backoff = Backoff::default();
                    });
                    held = Some(lease);
                }
                Some(Update::Granted(lease)) => {
                    tracing::info!(lease = %lease.lease_id, "the supervisor withdrew its reclaim request; the lip-sync model stays");
                    held = Some(lease);
                }
                Some(Update::Reclaim(reclaim)) => {
                    let bytes = held.as_ref().map_or(settings.bytes, |l| l.bytes);
                    return Ending::Normal(self.give_back(&mut client, reclaim, bytes).await);
                }
                Some(Update::Revoked(revoked)) => {
                    tracing::warn!(reason = %revoked.reason, "the lip-sync lease was revoked");
                    return Ending::Normal(format!("its lease was revoked: {}", revoked.reason));
                }
                None => {}
            }
        }
    }

    /// Under a claim: on the GPU at once, resident until the service stops.
    async fn hold_claimed(&self, lease_id: &str) -> Ending {
        let model = Arc::clone(&self.model);
        let loaded = tokio::task::spawn_blocking(move || {
            let (moved, peak) = peak_during(|| model.to_gpu());
            moved.map(|device| (device, peak))
        })
        .await;
        let device = match loaded {
            Ok(Ok((device, peak))) => {
                if let Some(peak) = peak {
                    self.counters.weights.store(peak.kept, Ordering::Relaxed);
                    self.learn(peak.peak);
                }
                device
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "cannot load the lip-sync model on the GPU; it renders on the CPU");
                return Ending::Failed(format!("cannot load it on the GPU: {error}"));
            }
            Err(error) => return Ending::Failed(format!("loading it on the GPU failed: {error}")),
        };
        self.counters.leases_granted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(lease = %lease_id, bytes = self.lease_bytes(), device = %device_name(device), "the lip-sync model is resident under the claim's lease");
        self.state.send_modify(|s| {
            s.phase = Phase::Resident;
            s.lease_id = (!lease_id.is_empty()).then(|| lease_id.to_string());
            s.note.clear();
            s.backoff = Backoff::default();
        });
        tokio::select! {
            () = self.stop.cancelled() => Ending::Normal("the service is stopping".into()),
            () = self.clock.idle_past_keep_alive() => Ending::Idle(self.leave_idle().await),
        }
    }

    fn lease_bytes(&self) -> u64 {
        let measured = self
            .settings
            .sizing
            .as_ref()
            .and_then(|s| s.sizes.get(&s.key));
        measured.map_or(self.settings.bytes, |m| m.next_multiple_of(1 << 20))
    }

    fn learn(&self, need: u64) {
        if let Some(sizing) = &self.settings.sizing
            && sizing.sizes.record(&sizing.key, need)
        {
            tracing::info!(
                need,
                "measured the lip-sync model's GPU memory; its next lease asks for it"
            );
        }
    }

    /// Past the keep-alive with no render: off the GPU and the cache emptied; returns why.
    async fn leave_idle(&self) -> String {
        let keep = self.clock.state().keep;
        self.state.send_modify(|s| {
            s.phase = Phase::Reclaiming;
            s.note = "unloading after its keep-alive".into();
        });
        let model = Arc::clone(&self.model);
        let _ = tokio::task::spawn_blocking(move || model.offload()).await;
        self.counters.idle_unloads.fetch_add(1, Ordering::Relaxed);
        format!("unloaded after {keep} idle (its keep-alive); the next render loads it again")
    }

    /// [`Self::leave_idle`], and the lease released.
    async fn unload_idle(
        &self,
        client: &mut SupervisorClient<Channel>,
        lease: &spb::Lease,
    ) -> Ending {
        let why = self.leave_idle().await;
        release(client, &lease.lease_id).await;
        tracing::info!(lease = %lease.lease_id, bytes = lease.bytes, "{why}");
        Ending::Idle(why)
    }

    /// Answers a reclaim: off the GPU, cache emptied, the lease released.
    async fn give_back(
        &self,
        client: &mut SupervisorClient<Channel>,
        reclaim: spb::ReclaimRequested,
        held_bytes: u64,
    ) -> String {
        let asked = Instant::now();
        let why = format!("reclaimed by the supervisor ({})", reclaim.reason);
        self.state.send_modify(|s| {
            s.phase = Phase::Reclaiming;
            s.note = why.clone();
        });
        let model = Arc::clone(&self.model);
        let was_on_gpu = tokio::task::spawn_blocking(move || model.offload())
            .await
            .unwrap_or(false);
        let offloaded = asked.elapsed();
        let returned = match client
            .release(spb::ReleaseRequest {
                lease_id: reclaim.lease_id.clone(),
            })
            .await
        {
            Ok(reply) => reply.into_inner().bytes_returned,
            Err(status) => {
                // Closing the stream, which the caller does next, gives it back anyway.
                tracing::warn!(code = ?status.code(), message = status.message(), "Release of the lip-sync lease failed; closing its stream instead");
                held_bytes
            }
        };
        let took = asked.elapsed();
        let c = &self.counters;
        c.reclaims.fetch_add(1, Ordering::Relaxed);
        c.bytes_given_back.fetch_add(returned, Ordering::Relaxed);
        c.last_reclaim_answer
            .store(took.as_micros() as u64 + 1, Ordering::Relaxed);
        let late = reclaim
            .deadline
            .and_then(|d| SystemTime::try_from(d).ok())
            .is_some_and(|deadline| SystemTime::now() > deadline);
        tracing::info!(
            lease = %reclaim.lease_id,
            asked = reclaim.bytes,
            returned,
            took_ms = took.as_millis() as u64,
            offload_ms = offloaded.as_secs_f64() * 1e3,
            late,
            was_on_gpu,
            reason = %reclaim.reason,
            "gave the lip-sync lease back to answer a reclaim; the model renders on the CPU until a render brings it back"
        );
        why
    }
}

async fn release(client: &mut SupervisorClient<Channel>, lease_id: &str) {
    let request = spb::ReleaseRequest {
        lease_id: lease_id.to_string(),
    };
    if let Err(status) = client.release(request).await {
        tracing::warn!(code = ?status.code(), message = status.message(), "Release of the lip-sync lease failed; closing its stream instead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_asks_wait_longer_each_time_up_to_five_minutes() {
        let start = Instant::now();
        let mut backoff = Backoff::default();
        assert_eq!(backoff.remaining(start), None, "a first ask never waits");
        let waits: Vec<u64> = (0..10).map(|_| backoff.failed(start).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        assert_eq!(backoff.failures, 10);
        assert_eq!(backoff.remaining(start), Some(Duration::from_secs(300)));
        assert_eq!(
            backoff.remaining(start + Duration::from_secs(299)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(backoff.remaining(start + Duration::from_secs(300)), None);
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut backoff = Backoff {
            failures: u32::MAX - 1,
            until: None,
        };
        let now = Instant::now();
        assert_eq!(backoff.failed(now), Backoff::MOST);
        assert_eq!(backoff.failed(now), Backoff::MOST);
        assert_eq!(backoff.failures, u32::MAX);
    }
}
