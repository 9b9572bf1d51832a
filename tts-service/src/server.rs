//! Serves `arbiter.tts.v1.Tts` on a Unix socket (and optional TCP), with reflection and
//! health like every Arbiter server, until SIGTERM/SIGINT.
//!
//! Start-up order: the card is settled before this runs (`main`, [`crate::card`]); the
//! voices' configs are read and the lip-sync model loaded on the CPU before listening (a bad
//! one stops start-up); the service's own lease (the CUDA context) is held in the
//! background. Nothing goes on the GPU until a request wants it: each TorchScript voice and
//! the lip-sync model then asks for a lease of its own, loads, and gives both back after its
//! keep-alive ([`crate::voice_residency`], [`crate::lip_sync::residency`]). Under
//! `--lease-from-env` ([`Settings::claim`]) no lease is asked for: everything fits the
//! claim's budget, checked before listening, and health says SERVING at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arbiter::listen::{UnixSocket, bind_tcp_as, reflection, serve, signals};
use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1::tts_server::TtsServer;
use arbiter::systemd;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

pub mod callers;
mod requests;

use crate::card::{CardState, Claim, ClaimError};
use crate::espeak::{Espeak, EspeakError};
use crate::keep_alive::KeepAlive;
use crate::lip_sync::Sizing;
use crate::lip_sync::{
    Lender, LipSync, LipSyncModel, LipSyncModelError, Residency, ResidencySettings,
};
use crate::model_sizes::ModelSizes;
use crate::service::{Limits, TtsService};
use crate::torchscript::{self, TorchVoiceError, VoiceSpec};
use crate::voice_residency::{self, Lifecycle, VoiceSlot};

/// GPU memory a lip-sync model needs beyond its parameters when no size is configured:
/// the activations of a one-second window (the test model's need a few MiB; a real model's
/// at 96 px and 25 fps some tens of MiB), with room to spare.
pub const LIP_SYNC_WORKSPACE_BYTES: u64 = 256 << 20;

/// The CUDA context and libtorch's kernels, per process (about 0.7 GiB on an H100).
const CUDA_CONTEXT_BYTES: u64 = 768 << 20;

/// Where the service listens and what it allows.
#[derive(Clone, Debug)]
pub struct Settings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub listen: Option<String>,
    pub limits: Limits,
    /// TorchScript voice directories (`--voice-dir`), loaded before listening.
    pub voice_dirs: Vec<PathBuf>,
    /// Where the supervisor is.
    pub supervisor: arbiter::endpoint::Address,
    /// The lease to hold: given explicitly, or None to size it from what the voices hold on
    /// the GPU (no lease when nothing is on a GPU).
    pub lease_bytes: Option<u64>,
    /// What both leases ask the supervisor for: the card the models run on (a uuid or an
    /// index), or "" for any when nothing runs on a GPU ([`crate::card::Plan::lease_gpu`]).
    pub lease_gpu: String,
    /// Where the service runs, as `ListVoices` reports it.
    pub card: CardState,
    /// `--lease-from-env`: the lease a Kubernetes claim holds for the service; None: the
    /// service asks the supervisor for its own.
    pub claim: Option<Claim>,
    /// The lip-sync model (`--lipsync-dir`), if any.
    pub lip_sync: Option<LipSyncSettings>,
    /// The Prometheus endpoint (`--metrics-listen`), if any.
    pub metrics: Option<arbiter::scrape::Endpoint>,
    /// Who may call, and how TCP callers prove who they are.
    pub security: Security,
    /// How models load and leave.
    pub models: ModelSettings,
}

/// How the voices and the lip-sync model live on the GPU.
#[derive(Clone, Debug)]
pub struct ModelSettings {
    /// How long a model stays loaded after its last request (`--keep-alive`).
    pub keep_alive: KeepAlive,
    /// How long a load waits in the supervisor's queue for its lease (`--lease-wait`).
    pub lease_wait: Duration,
    /// A voice's first lease, before it was measured: its file plus this (`--lease-margin`).
    pub lease_margin: u64,
    /// Every voice lease this size (`--voice-lease-bytes`), measured or not; also held
    /// without CUDA.
    pub voice_lease_bytes: Option<u64>,
    /// Where measured sizes are kept (`--state-dir`); None: measured for this run only.
    pub state_dir: Option<PathBuf>,
}

impl Default for ModelSettings {
    fn default() -> ModelSettings {
        ModelSettings {
            keep_alive: crate::keep_alive::DEFAULT,
            lease_wait: Duration::from_secs(30),
            lease_margin: 256 << 20,
            voice_lease_bytes: None,
            state_dir: None,
        }
    }
}

/// TLS, tokens and the callers allowed, as `arbiter::auth` applies them.
#[derive(Clone, Debug, Default)]
pub struct Security {
    /// TLS on `listen`; None: TCP only with `insecure_tcp`.
    pub tls: Option<arbiter::listen::tls::TlsFiles>,
    pub insecure_tcp: bool,
    pub tokens_file: Option<PathBuf>,
    /// The identities that may call; empty: anyone with an identity.
    pub callers: Vec<arbiter::auth::Pattern>,
    /// Each identity's requests a second (0: no limit), and its burst.
    pub rate: f64,
    pub burst: f64,
}

/// The flag that allows a metrics address other hosts can reach, as errors name it.
pub const METRICS_ALLOW_REMOTE: &str = "--metrics-allow-remote";

/// The lip-sync model and its lease.
#[derive(Clone, Debug)]
pub struct LipSyncSettings {
    /// The directory with `lipsync.ts.pt` and `lipsync.json`.
    pub dir: PathBuf,
    /// The model's preemptible lease: given explicitly (which also holds one on a machine
    /// without CUDA, for the accounting), or None to size it from the model's parameters
    /// plus [`LIP_SYNC_WORKSPACE_BYTES`] when libtorch sees CUDA (no lease without CUDA).
    pub lease_bytes: Option<u64>,
    /// The lease's priority class: batch by default, so any higher waiter may reclaim it.
    pub priority: spb::Priority,
    /// How long a render waits for the lease before rendering on the CPU.
    pub wait: Duration,
}

/// Why the service did not start (or stopped): the operator's to fix, so `main` prints it
/// and exits 2 instead of serving without what was configured.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] arbiter::listen::ListenError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Espeak(#[from] EspeakError),
    #[error(transparent)]
    TorchVoice(#[from] TorchVoiceError),
    #[error("two TorchScript voices are named `{0}`: set `name` in one voice.json")]
    DuplicateVoice(String),
    #[error(transparent)]
    LipSyncModel(#[from] LipSyncModelError),
    #[error("{0} (--metrics-listen)")]
    Metrics(#[from] arbiter::scrape::ScrapeError),
    #[error("{0} (--tokens-file)")]
    Tokens(#[from] arbiter::auth::tokens::TokensError),
    #[error(transparent)]
    Claim(#[from] ClaimError),
}

/// Loads the lip-sync model on the CPU and sets up its lease without asking for it yet, so
/// that start-up does not wait for the supervisor: the model renders on the CPU until the
/// lease comes.
fn load_lip_sync(
    settings: &LipSyncSettings,
    lender: Lender,
    life: &Lifecycle,
) -> Result<LipSync, ServeError> {
    let model = Arc::new(LipSyncModel::load(&settings.dir)?);
    let cuda = tch::Cuda::is_available();
    // A configured size is the size; else the first lease is an estimate, replaced by what
    // renders are measured to need (model_sizes).
    let sizing = settings.lease_bytes.is_none().then(|| Sizing {
        sizes: Arc::clone(&life.sizes),
        key: ModelSizes::key(&settings.dir.join(crate::lip_sync::model::MODEL_FILE)),
    });
    let bytes = settings.lease_bytes.or_else(|| {
        cuda.then(|| (model.parameter_bytes() + LIP_SYNC_WORKSPACE_BYTES).next_multiple_of(1 << 20))
    });
    tracing::info!(
        model = model.name(),
        dir = %settings.dir.display(),
        face_size = model.face_size(),
        fps = model.fps(),
        parameter_bytes = model.parameter_bytes(),
        lease_bytes = ?bytes,
        cuda,
        "loaded the lip-sync model"
    );
    let residency = bytes.map(|bytes| {
        Residency::new(
            ResidencySettings {
                lender,
                holder: format!("arbiter-tts/lipsync (pid {})", std::process::id()),
                bytes,
                sizing,
                keep_alive: life.keep_alive,
                priority: settings.priority,
                wait: settings.wait,
            },
            Arc::clone(&model),
            life.stop.clone(),
        )
    });
    Ok(LipSync::new(model, residency))
}

pub async fn run(settings: Settings) -> Result<(), ServeError> {
    // Start the voice before listening, so READY means it can speak.
    let espeak = Espeak::get()?;
    let device = torchscript::default_device();
    let mut specs: Vec<VoiceSpec> = Vec::new();
    for dir in &settings.voice_dirs {
        let spec = VoiceSpec::read(dir)?;
        if specs.iter().any(|v| v.name == spec.name) {
            return Err(ServeError::DuplicateVoice(spec.name));
        }
        tracing::info!(voice = %spec.name, dir = %dir.display(), ?device, "a TorchScript voice, loaded on its first request");
        specs.push(spec);
    }
    let stop_lease = CancellationToken::new();
    let models = &settings.models;
    let life = Arc::new(Lifecycle {
        lender: match &settings.claim {
            Some(_) => None,
            None => Some(voice_residency::Lender {
                supervisor: settings.supervisor.clone(),
                gpu: settings.lease_gpu.clone(),
            }),
        },
        device,
        keep_alive: models.keep_alive,
        lease_wait: models.lease_wait,
        lease_margin: models.lease_margin,
        voice_lease_bytes: models.voice_lease_bytes,
        sizes: Arc::new(ModelSizes::open(models.state_dir.as_deref())),
        stop: stop_lease.clone(),
    });
    let voices: Vec<Arc<VoiceSlot>> = specs
        .into_iter()
        .map(|spec| VoiceSlot::new(spec, Arc::clone(&life)))
        .collect();
    let lender = match &settings.claim {
        Some(claim) => Lender::Claim {
            lease_id: claim.lease_id.clone(),
        },
        None => Lender::Supervisor {
            address: settings.supervisor.clone(),
            gpu: settings.lease_gpu.clone(),
        },
    };
    let lip_sync = match &settings.lip_sync {
        Some(lip_sync_settings) => Some(Arc::new(load_lip_sync(lip_sync_settings, lender, &life)?)),
        None => None,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TtsServer<TtsService>>().await;
    // The service's own lease: the CUDA context, which stays for the process's life once a
    // model has used the GPU, unless the operator says otherwise. Each model's weights and
    // work are under a lease of its own while it is loaded.
    let on_gpu = device.is_cuda() && (!voices.is_empty() || lip_sync.is_some());
    let lease_bytes = settings
        .lease_bytes
        .or_else(|| on_gpu.then_some(CUDA_CONTEXT_BYTES));
    let lease = match &settings.claim {
        Some(claim) => {
            // Everything out of the claim's budget, or no start: nobody would stop an
            // overrun. The voices count by the leases they would ask for.
            let voices_bytes =
                lease_bytes.unwrap_or(0) + voices.iter().map(|v| v.lease_bytes()).sum::<u64>();
            let lip_sync_bytes = lip_sync
                .as_ref()
                .and_then(|l| l.residency())
                .map_or(0, |r| r.snapshot().lease_bytes);
            claim.check(voices_bytes, lip_sync_bytes)?;
            tracing::info!(
                lease = %claim.lease_ids,
                budget = claim.bytes,
                voices_bytes,
                lip_sync_bytes,
                gpu = %claim.gpu,
                claim = claim.claim_uid.as_deref().unwrap_or(""),
                "running under the claim's lease (--lease-from-env): no lease of its own from the supervisor"
            );
            None
        }
        None => lease_bytes.map(|bytes| {
            tokio::spawn(crate::lease::hold(
                crate::lease::LeaseSettings {
                    supervisor: settings.supervisor.clone(),
                    holder: format!("arbiter-tts (pid {})", std::process::id()),
                    bytes,
                    gpu: settings.lease_gpu.clone(),
                    card: settings.card.clone(),
                },
                health.clone(),
                stop_lease.clone(),
            ))
        }),
    };
    let mut service = TtsService::new(espeak.clone(), settings.limits)?
        .with_torch_voices(voices, models.keep_alive)
        .with_card(settings.card.clone());
    if let Some(lip_sync) = lip_sync {
        service = service.with_lip_sync(lip_sync);
    }
    let metrics = service.metrics();
    let (reflection_v1, reflection_v1alpha) =
        reflection(&[arbiter::pb::tts::v1::tts_server::SERVICE_NAME]);
    let security = &settings.security;
    let tokens = match &security.tokens_file {
        Some(path) => arbiter::auth::Tokens::load(path)?,
        None => arbiter::auth::Tokens::default(),
    };
    let policy = callers::TtsPolicy::new(security.callers.clone(), security.rate, security.burst);
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        // Every call gets its caller's identity here, or is refused, before any handler.
        .layer(arbiter::auth::AuthLayer::new(tokens, Arc::new(policy)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(requests::Counted {
            inner: TtsServer::new(service)
                .max_decoding_message_size(settings.limits.max_message_bytes()),
            metrics: Arc::clone(&metrics),
        });
    let tcp = match &settings.listen {
        Some(address) => {
            Some(bind_tcp_as(address, security.tls.as_ref(), security.insecure_tcp).await?)
        }
        None => None,
    };
    let socket = UnixSocket {
        path: settings.socket.clone(),
        mode: settings.socket_mode,
        group: None,
    };
    // Before the socket, like TCP: a port that cannot be bound leaves no socket file.
    let scrape = match settings.metrics {
        Some(endpoint) => Some(endpoint.bind(METRICS_ALLOW_REMOTE).await?),
        None => None,
    };
    let unix = socket.bind()?;
    tracing::info!(socket = %socket.path.display(), "listening on the Unix socket");
    if let Some(address) = scrape.as_ref().and_then(|s| s.local_addr().ok()) {
        tracing::info!(%address, "serving metrics at /metrics");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(scrape) = scrape {
        let render: arbiter::scrape::Render = Arc::new(move || metrics.render_text());
        tokio::spawn(scrape.serve(render, stop.clone()));
    }
    let servers = serve(router, unix, tcp, stop.clone());
    systemd::ready("serving");
    // Beats until the process is about to exit, drain included: systemd keeps watching
    // while the service stops.
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat(espeak, stop_heartbeat.clone()));
    let signal = async {
        signals().await;
        tracing::info!("shutting down");
        systemd::stopping();
        health.set_not_serving::<TtsServer<TtsService>>().await;
        stop.cancel();
        Ok::<(), tonic::transport::Error>(())
    };
    let result = tokio::try_join!(servers, signal);
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    stop_lease.cancel();
    if let Some(lease) = lease {
        let _ = lease.await;
    }
    let _ = std::fs::remove_file(&socket.path);
    result.map(|_| ()).map_err(ServeError::from)
}

/// The systemd watchdog's heartbeat; returns at once without a watchdog (no
/// `WATCHDOG_USEC`). Every half `WatchdogSec` it asks the eSpeak NG thread to answer (in its
/// turn, behind the speech queued before it) and pings `WATCHDOG=1` only once it has. A
/// ping proves that the runtime still runs timers and tasks (this loop is one) and that the
/// one thread every eSpeak request goes through takes requests: a libespeak-ng call that
/// never returns, or a runtime that no longer schedules, stops the pings and systemd
/// restarts the service. It does not prove that a TorchScript voice's GPU answers.
async fn heartbeat(espeak: Espeak, stop: CancellationToken) {
    let Some(period) = systemd::watchdog_period() else {
        return;
    };
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let answered = tokio::select! {
            () = stop.cancelled() => return,
            answered = tokio::time::timeout(period, espeak.answer()) => answered,
        };
        match answered {
            Ok(Ok(())) => systemd::alive(),
            Ok(Err(error)) => {
                tracing::error!(%error, "no watchdog ping: the eSpeak NG thread is gone");
            }
            Err(_) => tracing::warn!(
                ?period,
                "no watchdog ping: the eSpeak NG thread did not answer in time"
            ),
        }
    }
}
