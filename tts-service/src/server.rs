//! Serves `arbiter.tts.v1.Tts` on a Unix socket (and optional TCP), with reflection and
//! health like every Arbiter server, until SIGTERM/SIGINT.
//!
//! Start-up order: voices and the lip-sync model are loaded before listening (READY means
//! they answer), the voices' lease is held in the background, and the lip-sync model's own
//! lease is asked for once at start (the model renders on the CPU until it is granted).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arbiter::listen::{UnixSocket, bind_tcp, reflection, serve, signals};
use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1::tts_server::TtsServer;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::espeak::{Espeak, EspeakError};
use crate::lip_sync::{LipSync, LipSyncModel, LipSyncModelError, Residency, ResidencySettings};
use crate::service::{Limits, TtsService};
use crate::torchscript::{self, TorchVoice, TorchVoiceError};

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
    /// The lip-sync model (`--lipsync-dir`), if any.
    pub lip_sync: Option<LipSyncSettings>,
}

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

/// The service's default socket, beside the supervisor's.
pub fn default_socket() -> PathBuf {
    arbiter::endpoint::runtime_dir().join("tts.sock")
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
}

/// Loads the lip-sync model on the CPU and sets up its lease without asking for it yet, so
/// that start-up does not wait for the supervisor: the model renders on the CPU until the
/// lease comes.
fn load_lip_sync(
    settings: &LipSyncSettings,
    supervisor: &arbiter::endpoint::Address,
    stop: &CancellationToken,
) -> Result<LipSync, ServeError> {
    let model = Arc::new(LipSyncModel::load(&settings.dir)?);
    let cuda = tch::Cuda::is_available();
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
                supervisor: supervisor.clone(),
                holder: format!("arbiter-tts/lipsync (pid {})", std::process::id()),
                bytes,
                priority: settings.priority,
                wait: settings.wait,
            },
            Arc::clone(&model),
            stop.clone(),
        )
    });
    Ok(LipSync::new(model, residency))
}

pub async fn run(settings: Settings) -> Result<(), ServeError> {
    // Start the voice before listening, so READY means it can speak.
    let espeak = Espeak::get()?;
    let device = torchscript::default_device();
    let mut voices: Vec<Arc<TorchVoice>> = Vec::new();
    for dir in &settings.voice_dirs {
        let voice = TorchVoice::load(dir, device)?;
        if voices.iter().any(|v| v.name() == voice.name()) {
            return Err(ServeError::DuplicateVoice(voice.name().to_string()));
        }
        tracing::info!(voice = voice.name(), dir = %dir.display(), ?device, "loaded a TorchScript voice");
        voices.push(Arc::new(voice));
    }
    let stop_lease = CancellationToken::new();
    let lip_sync = match &settings.lip_sync {
        Some(lip_sync_settings) => Some(Arc::new(load_lip_sync(
            lip_sync_settings,
            &settings.supervisor,
            &stop_lease,
        )?)),
        None => None,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TtsServer<TtsService>>().await;
    // GPU memory the voices hold: what libtorch's allocator reserved plus the CUDA context,
    // unless the operator says otherwise. The context stays for the process's life, so it
    // is counted here also when only the lip-sync model will use the GPU (its own lease
    // covers its weights and work, which it can give back).
    let on_gpu = voices.iter().any(|v| v.on_gpu())
        || (lip_sync.is_some() && torchscript::default_device().is_cuda());
    let lease_bytes = settings.lease_bytes.or_else(|| {
        on_gpu.then(|| {
            arbiter_torch::allocator::stats(0).map_or(0, |s| s.reserved) + CUDA_CONTEXT_BYTES
        })
    });
    let lease = lease_bytes.map(|bytes| {
        tokio::spawn(crate::lease::hold(
            crate::lease::LeaseSettings {
                supervisor: settings.supervisor.clone(),
                holder: format!("arbiter-tts (pid {})", std::process::id()),
                bytes,
            },
            health.clone(),
            stop_lease.clone(),
        ))
    });
    if let Some(residency) = lip_sync.as_ref().and_then(|l| l.residency()) {
        residency.start();
    }
    let mut service = TtsService::new(espeak, settings.limits)?.with_torch_voices(voices);
    if let Some(lip_sync) = lip_sync {
        service = service.with_lip_sync(lip_sync);
    }
    let (reflection_v1, reflection_v1alpha) = reflection();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            TtsServer::new(service).max_decoding_message_size(settings.limits.max_message_bytes()),
        );
    let tcp = match &settings.listen {
        Some(address) => Some(bind_tcp(address).await?),
        None => None,
    };
    let socket = UnixSocket {
        path: settings.socket.clone(),
        mode: settings.socket_mode,
        group: None,
    };
    let unix = socket.bind()?;
    tracing::info!(socket = %socket.path.display(), "listening on the Unix socket");
    if let Some(address) = tcp.as_ref().and_then(|t| t.local_addr().ok()) {
        tracing::info!(%address, "listening on TCP");
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let servers = serve(router, unix, tcp, stop.clone());
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let signal = async {
        signals().await;
        tracing::info!("shutting down");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        health.set_not_serving::<TtsServer<TtsService>>().await;
        stop.cancel();
        Ok::<(), tonic::transport::Error>(())
    };
    let result = tokio::try_join!(servers, signal);
    stop_lease.cancel();
    if let Some(lease) = lease {
        let _ = lease.await;
    }
    let _ = std::fs::remove_file(&socket.path);
    result.map(|_| ()).map_err(ServeError::from)
}
