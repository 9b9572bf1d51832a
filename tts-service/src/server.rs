//! Serves `arbiter.tts.v1.Tts` on a Unix socket (and optional TCP), with reflection and
//! health like every Arbiter server, until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arbiter::listen::{UnixSocket, bind_tcp, reflection, serve, signals};
use arbiter::pb::tts::v1::tts_server::TtsServer;
use tonic::transport::Server;

use crate::espeak::Espeak;
use crate::service::{Limits, TtsService};
use crate::torchscript::{self, TorchVoice};

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
}

/// The service's default socket, beside the supervisor's.
pub fn default_socket() -> PathBuf {
    arbiter::endpoint::runtime_dir().join("tts.sock")
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Listen(#[from] arbiter::listen::ListenError),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error(transparent)]
    Voice(#[from] crate::espeak::Error),
    #[error(transparent)]
    TorchVoice(#[from] crate::torchscript::Error),
    #[error("two TorchScript voices are named `{0}`: set `name` in one voice.json")]
    DuplicateVoice(String),
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
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TtsServer<TtsService>>().await;
    // GPU memory the models hold: what libtorch's allocator reserved plus the CUDA context
    // (about 0.7 GiB per process on an H100), unless the operator says otherwise.
    let on_gpu = voices.iter().any(|v| v.on_gpu());
    let lease_bytes = settings.lease_bytes.or_else(|| {
        on_gpu.then(|| arbiter_torch::allocator::stats(0).map_or(0, |s| s.reserved) + (768 << 20))
    });
    let stop_lease = tokio_util::sync::CancellationToken::new();
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
    let (reflection_v1, reflection_v1alpha) = reflection();
    let router = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(TtsServer::new(
            TtsService::new(espeak, settings.limits)?.with_torch_voices(voices),
        ));
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
