//! `arbiter-tts-server`: the persistent text-to-speech and lip-sync service. It keeps its
//! voices resident on the GPU under one lease from the supervisor and serves gRPC clients.
//!
//! `serve` runs the gRPC service (eSpeak NG voices on the CPU, TorchScript voices from
//! `--voice-dir` and a lip-sync model from `--lipsync-dir` on the GPU when there is one);
//! `info` shows what libtorch sees in this process (the device its TorchScript voices will
//! load on). This binary links libtorch; users run it as `arbiter-tts serve` and
//! `arbiter-tts info`, which the thin `arbiter-tts` (crate `arbiter-tts-client`, without
//! libtorch, also home of the `say` and `lip-sync` clients) exec()s, same pid and
//! arguments. The logic lives in the library (`arbiter_tts`), so that tests and benchmarks
//! reach it without the binary; this file only parses flags and starts it.

use std::process::ExitCode;

use std::path::PathBuf;

use arbiter::pb::supervisor::v1 as spb;
use arbiter_tts::card::{self, CardState, Claim, GpuChoice};
use arbiter_tts::server::{self, LipSyncSettings, Settings};
use arbiter_tts::service::Limits;
use clap::{Parser, Subcommand, ValueEnum};

/// A lease priority class, as the flag spells it.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Priority {
    Batch,
    Normal,
    Interactive,
    Critical,
}

impl From<Priority> for spb::Priority {
    fn from(p: Priority) -> spb::Priority {
        match p {
            Priority::Batch => spb::Priority::Batch,
            Priority::Normal => spb::Priority::Normal,
            Priority::Interactive => spb::Priority::Interactive,
            Priority::Critical => spb::Priority::Critical,
        }
    }
}

#[derive(Parser)]
#[command(
    name = "arbiter-tts-server",
    version,
    about = "Text-to-speech and lip-sync, resident on a leased GPU."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process, so `Serve`'s size beside `Info` costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve Synthesize, ListVoices, LipSync and LipSyncStream until SIGTERM/SIGINT.
    Serve {
        /// The Unix socket (default: $XDG_RUNTIME_DIR/arbiter/tts.sock, else /run/arbiter/tts.sock).
        #[arg(long, env = "ARBITER_TTS_SOCKET")]
        socket: Option<PathBuf>,
        /// Also serve on TCP, such as 127.0.0.1:50052.
        #[arg(long, env = "ARBITER_TTS_LISTEN")]
        listen: Option<String>,
        /// Longest text one request may speak, in characters.
        #[arg(long, default_value_t = 5000)]
        max_text_chars: usize,
        /// Streams speaking (or rendering mouths) at once; more are refused with
        /// RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = 16)]
        max_streams: usize,
        /// Largest audio a lip-sync request may send (WAV or PCM bytes).
        #[arg(long, default_value = "32MiB")]
        max_audio_bytes: arbiter::ByteSize,
        /// Longest audio a lip-sync request may send, in seconds.
        #[arg(long, default_value_t = 120)]
        max_audio_seconds: u32,
        /// Largest face image (PNG or JPEG) a lip-sync request may send.
        #[arg(long, default_value = "8MiB")]
        max_face_bytes: arbiter::ByteSize,
        /// A TorchScript voice directory (voice.ts.pt and a Piper-style voice.json, as
        /// scripts/make-test-voice.py writes); repeatable. Loaded on the GPU (see --gpu) if
        /// libtorch sees one, else on the CPU.
        #[arg(long = "voice-dir")]
        voice_dirs: Vec<PathBuf>,
        /// The supervisor: its socket or host:port (default: its default socket).
        #[arg(long, env = "ARBITER_SUPERVISOR")]
        supervisor: Option<String>,
        /// The GPU to run on and lease on: an index as the supervisor (and nvidia-smi)
        /// numbers its cards, a uuid (GPU-...), or any: the card the supervisor would place
        /// the lease on (best fit for --lease-bytes, else the most available memory) when
        /// models load on a GPU, else wherever the lease is granted. An inherited
        /// CUDA_VISIBLE_DEVICES (a container, a claim) is respected: --gpu may then only name
        /// its first card.
        #[arg(long, env = "ARBITER_TTS_GPU", default_value = "any")]
        gpu: GpuChoice,
        /// Run under a lease a Kubernetes DRA claim holds for this pod, asking the supervisor
        /// for none: the budget is ARBITER_LEASE_BYTES, the card the first in
        /// CUDA_VISIBLE_DEVICES (both required), and ARBITER_LEASE_ID is reported. The voices
        /// and the lip-sync model must fit the budget together or the service does not
        /// start; health says SERVING at once.
        #[arg(long, conflicts_with = "supervisor")]
        lease_from_env: bool,
        /// The compute gate to mark GPU work in, so video jobs on the card pause between
        /// their blocks meanwhile: a path, or `off`. Default: the gate the supervisor
        /// reports for the service's card ([compute] yield_to_interactive), if any.
        #[arg(long, env = "ARBITER_TTS_COMPUTE_GATE")]
        compute_gate: Option<String>,
        /// The service's own lease (such as 1GiB) instead of its CUDA context's 768 MiB;
        /// the models' weights and work are under leases of their own while loaded.
        #[arg(long)]
        lease_bytes: Option<arbiter::ByteSize>,
        /// How long a TorchScript voice or the lip-sync model stays on the GPU after its
        /// last request: seconds or 30s / 5m / 1h; 0 unloads at once, -1 keeps. A request's
        /// keep_alive overrides it.
        #[arg(
            long,
            env = "ARBITER_TTS_KEEP_ALIVE",
            default_value = "5m",
            allow_hyphen_values = true
        )]
        keep_alive: arbiter_tts::keep_alive::KeepAlive,
        /// How long a voice's first request waits for GPU memory for it, in seconds, before
        /// it fails with RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = 30.0)]
        lease_wait: f64,
        /// A voice's first lease, before its need was measured: its model file plus this.
        #[arg(long, default_value = "256MiB")]
        lease_margin: arbiter::ByteSize,
        /// Every TorchScript voice's lease, whatever was measured; given, the leases are
        /// held (for the accounting) even without CUDA, where voices run on the CPU.
        #[arg(long)]
        voice_lease_bytes: Option<arbiter::ByteSize>,
        /// Where the models' measured GPU memory is kept across restarts (model-sizes.json).
        /// Default: $STATE_DIRECTORY (systemd's StateDirectory=), else
        /// $XDG_STATE_HOME/arbiter/tts, else ~/.local/state/arbiter/tts (root:
        /// /var/lib/arbiter/tts); `none` keeps nothing.
        #[arg(long, env = "ARBITER_TTS_STATE_DIR")]
        state_dir: Option<PathBuf>,
        // The `lipsync_*` fields are spelled as their flags (`--lipsync-dir`, ...), which
        // scripts and docs use; the library spells the concept `lip_sync`.
        /// A TorchScript lip-sync model directory (lipsync.ts.pt and lipsync.json, as
        /// scripts/make-test-lipsync.py writes; see docs/lipsync.md). Renders mouth frames
        /// for LipSyncStream: on CUDA device 0 under its own preemptible lease, else on the
        /// CPU.
        #[arg(long)]
        lipsync_dir: Option<PathBuf>,
        /// The lip-sync model's lease (such as 1GiB) instead of its parameters plus a
        /// workspace; given, the lease is held (and given back on reclaim) even without
        /// CUDA, where the model runs on the CPU.
        #[arg(long)]
        lipsync_lease_bytes: Option<arbiter::ByteSize>,
        /// The priority class of the lip-sync lease: waiters of a higher class that cannot
        /// fit make the supervisor reclaim it.
        #[arg(long, value_enum, default_value = "batch")]
        lipsync_priority: Priority,
        /// How long a render waits for the lip-sync lease, in milliseconds, before it
        /// renders on the CPU.
        #[arg(long, default_value_t = 300)]
        lipsync_wait_ms: u64,
        /// Serve Prometheus metrics (`GET /metrics`) on this TCP address, such as
        /// 127.0.0.1:9465. Off unless given.
        #[arg(long, env = "ARBITER_TTS_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Allow a --metrics-listen address other hosts can reach (not loopback): the
        /// metrics have no authentication.
        #[arg(long, env = "ARBITER_TTS_METRICS_ALLOW_REMOTE")]
        metrics_allow_remote: bool,
        /// The server's TLS certificate (PEM) for --listen; with --tls-key.
        #[arg(long, env = "ARBITER_TTS_TLS_CERT", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The server's TLS private key (PEM).
        #[arg(long, env = "ARBITER_TTS_TLS_KEY", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The CA whose client certificates name TCP callers (`cert:NAME`).
        #[arg(long, env = "ARBITER_TTS_TLS_CLIENT_CA", requires = "tls_cert")]
        tls_client_ca: Option<PathBuf>,
        /// Bearer tokens (`NAME sha256:HEX` lines) for TCP callers without a certificate.
        #[arg(long, env = "ARBITER_TTS_TOKENS_FILE")]
        tokens_file: Option<PathBuf>,
        /// Serve --listen in plaintext: every caller there without a token is one identity,
        /// `insecure-tcp`. For loopback on a trusted host, or tests.
        #[arg(long, env = "ARBITER_TTS_INSECURE_TCP", conflicts_with = "tls_cert")]
        insecure_tcp: bool,
        /// An identity that may call (uid:N, user:NAME, group:NAME, cert:NAME, token:NAME,
        /// unix, insecure-tcp, *); repeatable. Default: anyone with an identity.
        #[arg(long = "caller", value_name = "IDENTITY")]
        callers: Vec<arbiter::auth::Pattern>,
        /// Requests a second each identity may make (0: no limit).
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Requests at once above --rate.
        #[arg(long, default_value_t = 2000.0)]
        burst: f64,
    },
    /// Show what libtorch sees (CUDA, devices) and run a small self-check on the device.
    Info,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => arbiter_torch::device::info(),
        Command::Serve {
            socket,
            listen,
            max_text_chars,
            max_streams,
            voice_dirs,
            supervisor,
            gpu,
            lease_from_env,
            compute_gate,
            lease_bytes,
            keep_alive,
            lease_wait,
            lease_margin,
            voice_lease_bytes,
            state_dir,
            max_audio_bytes,
            max_audio_seconds,
            max_face_bytes,
            lipsync_dir,
            lipsync_lease_bytes,
            lipsync_priority,
            lipsync_wait_ms,
            metrics_listen,
            metrics_allow_remote,
            tls_cert,
            tls_key,
            tls_client_ca,
            tokens_file,
            insecure_tcp,
            callers,
            rate,
            burst,
        } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let supervisor = supervisor
                .map(|s| arbiter::endpoint::Address::parse(&s))
                .unwrap_or_else(|| {
                    arbiter::endpoint::Address::unix(arbiter::endpoint::default_supervisor_socket())
                });
            let claim = if lease_from_env {
                match Claim::from_env(|name| std::env::var(name).ok()) {
                    Ok(claim) => Some(claim),
                    Err(error) => {
                        eprintln!("arbiter-tts: {error}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                None
            };
            // The card, before anything touches CUDA (see arbiter_tts::card).
            let gpu_work = !voice_dirs.is_empty() || lipsync_dir.is_some();
            let Some((lease_gpu, card)) = settle_card(
                &gpu,
                &supervisor,
                claim.as_ref(),
                gpu_work,
                lease_bytes.map(|b| b.0),
            ) else {
                return ExitCode::from(2);
            };
            join_compute_priority(compute_gate.as_deref(), &supervisor, claim.is_some(), &card);
            if !(lease_wait.is_finite() && (0.0..=3600.0).contains(&lease_wait)) {
                eprintln!("arbiter-tts: --lease-wait {lease_wait} is not 0 to 3600 seconds");
                return ExitCode::from(2);
            }
            let models = server::ModelSettings {
                keep_alive,
                lease_wait: std::time::Duration::from_secs_f64(lease_wait),
                lease_margin: lease_margin.0,
                voice_lease_bytes: voice_lease_bytes.map(|b| b.0),
                state_dir: match state_dir {
                    Some(dir) if dir.as_os_str() == "none" => None,
                    Some(dir) => Some(dir),
                    None => default_state_dir(),
                },
            };
            let settings = Settings {
                models,
                socket: socket.unwrap_or_else(arbiter::endpoint::default_tts_socket),
                socket_mode: 0o660,
                listen,
                limits: Limits {
                    max_text_chars: max_text_chars.max(1),
                    max_streams: max_streams.max(1),
                    max_audio_bytes: usize::try_from(max_audio_bytes.0)
                        .unwrap_or(usize::MAX)
                        .max(1),
                    max_audio_seconds: max_audio_seconds.max(1),
                    max_face_bytes: usize::try_from(max_face_bytes.0)
                        .unwrap_or(usize::MAX)
                        .max(1),
                },
                voice_dirs,
                supervisor,
                lease_bytes: lease_bytes.map(|b| b.0),
                lease_gpu,
                card,
                claim,
                lip_sync: lipsync_dir.map(|dir| LipSyncSettings {
                    dir,
                    lease_bytes: lipsync_lease_bytes.map(|b| b.0),
                    priority: lipsync_priority.into(),
                    wait: std::time::Duration::from_millis(lipsync_wait_ms),
                }),
                metrics: metrics_listen.map(|address| arbiter::scrape::Endpoint {
                    address,
                    allow_remote: metrics_allow_remote,
                }),
                security: server::Security {
                    tls: tls_cert
                        .zip(tls_key)
                        .map(|(cert, key)| arbiter::listen::tls::TlsFiles {
                            cert,
                            key,
                            client_ca: tls_client_ca,
                        }),
                    insecure_tcp,
                    tokens_file,
                    callers,
                    rate,
                    burst,
                },
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("arbiter-tts: cannot start the runtime: {error}");
                    return ExitCode::from(2);
                }
            };
            match runtime.block_on(server::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("arbiter-tts: {error}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Where the models' measured sizes are kept when `--state-dir` is not given (see its
/// help); None when there is nowhere sensible (no HOME, not root).
fn default_state_dir() -> Option<PathBuf> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("STATE_DIRECTORY") {
        // systemd may list several, separated by colons: the first is ours.
        let first = dir.to_string_lossy().split(':').next().map(PathBuf::from);
        return first;
    }
    if let Some(dir) = var("XDG_STATE_HOME") {
        return Some(dir.join("arbiter/tts"));
    }
    if nix::unistd::getuid().is_root() {
        return Some(PathBuf::from("/var/lib/arbiter/tts"));
    }
    var("HOME")
        .filter(|h| h.as_os_str() != "/")
        .map(|h| h.join(".local/state/arbiter/tts"))
}

/// CUDA's variable that makes a process an MPS client.
const MPS_PIPE_DIRECTORY: &str = "CUDA_MPS_PIPE_DIRECTORY";

/// Joins the supervisor's MPS, if it runs one, and marks this process's GPU work in the card's compute gate (see `arbiter_tts::compute`):
/// the one named, else the supervisor's for the card (none under a claim: the node's
/// supervisor is not asked). A gate that cannot be used is logged, never fatal: the voice
/// then runs as it would without one.
fn join_compute_priority(
    flag: Option<&str>,
    supervisor: &arbiter::endpoint::Address,
    claimed: bool,
    card: &CardState,
) {
    let asked = if claimed {
        arbiter_tts::compute::Priority::default()
    } else {
        let uuid = card.to_pb().map(|gpu| gpu.uuid).unwrap_or_default();
        arbiter_tts::compute::priority_of(supervisor, &uuid).unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot ask the supervisor how it gives the voice the GPU's time first");
            arbiter_tts::compute::Priority::default()
        })
    };
    if let Some(dir) = &asked.mps_pipe_dir
        && std::env::var_os(MPS_PIPE_DIRECTORY).is_none()
    {
        // SAFETY: as in settle_card: no other thread runs yet (priority_of joined its
        // runtime's), and nothing has touched libtorch, whose CUDA reads the variable.
        unsafe { std::env::set_var(MPS_PIPE_DIRECTORY, dir) };
        tracing::info!(pipe = %dir.display(), "an MPS client at normal priority, ahead of the video workers");
    }
    let path = match flag {
        Some("off") => return,
        Some(path) => Some(PathBuf::from(path)),
        None if claimed => std::env::var_os(arbiter::leased::COMPUTE_GATE).map(PathBuf::from),
        None => asked.gate,
    };
    let Some(path) = path else {
        tracing::info!("no compute gate: video jobs on this card do not yield to the voices");
        return;
    };
    match arbiter_tts::compute::join(&path) {
        Ok(()) => tracing::info!(gate = %path.display(), "marking GPU work in the compute gate"),
        Err(error) => {
            tracing::warn!(%error, "the compute gate cannot be used; video jobs will not yield")
        }
    }
}

/// Settles the card the models run on and pins the process to it (see `arbiter_tts::card`);
/// returns what the leases ask for and what the service reports, or None (the error printed)
/// when the flags and the environment disagree. Runs before the runtime and before anything
/// touches libtorch, because CUDA reads CUDA_VISIBLE_DEVICES once, when it starts.
fn settle_card(
    choice: &GpuChoice,
    supervisor: &arbiter::endpoint::Address,
    claim: Option<&Claim>,
    gpu_work: bool,
    lease_bytes: Option<u64>,
) -> Option<(String, CardState)> {
    let visible = std::env::var(card::VISIBLE_DEVICES).ok();
    let gpus = if claim.is_none() && card::needs_status(choice, visible.as_deref(), gpu_work) {
        match card::supervisor_gpus(supervisor) {
            Ok(gpus) => Some(gpus),
            Err(error) => {
                tracing::warn!(%error, %supervisor, gpu = %choice, "cannot ask the supervisor which card to run on; picking without it");
                None
            }
        }
    } else {
        None
    };
    let plan = match card::plan(card::Inputs {
        choice,
        visible: visible.as_deref(),
        device_order_set: std::env::var_os(card::DEVICE_ORDER).is_some(),
        gpu_work,
        lease_bytes,
        gpus: gpus.as_deref(),
    }) {
        Ok(plan) => plan,
        Err(error) => {
            eprintln!("arbiter-tts: {error}");
            return None;
        }
    };
    for (name, value) in &plan.set_env {
        // SAFETY: no other thread runs: the runtime is built after this returns,
        // supervisor_gpus joined its own before returning, and nothing has touched libtorch.
        unsafe { std::env::set_var(name, value) };
    }
    let state = match claim {
        Some(claim) => CardState::claimed(claim),
        None => CardState::new(plan.card.clone()),
    };
    match state.to_pb() {
        Some(gpu) => tracing::info!(
            uuid = %gpu.uuid,
            index = ?gpu.index,
            chosen_by = %gpu.chosen_by,
            lease = %gpu.lease_id,
            lease_gpu = %plan.lease_gpu,
            set = ?plan.set_env,
            "the card the models run on (CUDA device 0)"
        ),
        None => tracing::info!(
            lease_gpu = %plan.lease_gpu,
            "no card pinned: nothing loads on a GPU; a lease goes wherever it is granted"
        ),
    }
    Some((plan.lease_gpu, state))
}
