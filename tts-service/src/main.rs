//! `arbiter-tts`: the persistent text-to-speech and lip-sync service. It keeps its voices
//! resident on the GPU under one lease from the supervisor and serves gRPC clients.
//!
//! `serve` runs the gRPC service (eSpeak NG voices on the CPU, TorchScript voices from
//! `--voice-dir` and a lip-sync model from `--lipsync-dir` on the GPU when there is one);
//! `say` and `lip-sync` are its clients, for scripts; `info` shows what libtorch sees in this
//! process (the device its TorchScript voices will load on). The logic lives in the library
//! (`arbiter_tts`), so that tests and benchmarks reach it without the binary; this file only
//! parses flags and starts it.

use std::process::ExitCode;

use std::path::PathBuf;

use arbiter::pb::supervisor::v1 as spb;
use arbiter_tts::client::lip_sync_command::{self, Speech};
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
    name = "arbiter-tts",
    version,
    about = "Text-to-speech and lip-sync, resident on a leased GPU."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
        /// scripts/make-test-voice.py writes); repeatable. Loaded on CUDA device 0 if libtorch
        /// sees one, else on the CPU.
        #[arg(long = "voice-dir")]
        voice_dirs: Vec<PathBuf>,
        /// The supervisor: its socket or host:port (default: its default socket).
        #[arg(long, env = "ARBITER_SUPERVISOR")]
        supervisor: Option<String>,
        /// Hold a lease of this size (such as 2GiB) instead of measuring what the voices
        /// hold on the GPU.
        #[arg(long)]
        lease_bytes: Option<arbiter::ByteSize>,
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
    },
    /// Speak text through a running service and write a WAV file (a client, for scripts).
    Say {
        /// The service's socket (default: the `serve` default).
        #[arg(long, env = "ARBITER_TTS_SOCKET")]
        socket: Option<PathBuf>,
        #[arg(long)]
        text: String,
        #[arg(long, default_value = "")]
        voice: String,
        /// Where to write the WAV.
        #[arg(long)]
        out: PathBuf,
    },
    /// Lip-sync a face to a WAV file or to a text through a running service, write the mouth
    /// frames as PNG files, and say where they were rendered (a client, for scripts).
    LipSync {
        /// The service's socket (default: the `serve` default).
        #[arg(long, env = "ARBITER_TTS_SOCKET")]
        socket: Option<PathBuf>,
        /// The face: a PNG or JPEG image.
        #[arg(long)]
        face: PathBuf,
        /// The audio to follow: a WAV file.
        #[arg(long, conflicts_with = "text", required_unless_present = "text")]
        audio: Option<PathBuf>,
        /// Or a text for the service to speak.
        #[arg(long)]
        text: Option<String>,
        /// The voice that speaks `--text` (default: the service's default).
        #[arg(long, default_value = "", requires = "text")]
        voice: String,
        /// The directory the frames go to (frame-00000.png, ...).
        #[arg(long)]
        out: PathBuf,
        /// Also write the report, and the service's lip-sync status after the render, as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Show what libtorch sees (CUDA, devices) and run a small self-check on the device.
    Info,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => arbiter_torch::device::info(),
        Command::Say {
            socket,
            text,
            voice,
            out,
        } => {
            let socket = socket.unwrap_or_else(server::default_socket);
            run_client(
                async move { arbiter_tts::client::say::say(&socket, text, voice, &out).await },
            )
        }
        Command::LipSync {
            socket,
            face,
            audio,
            text,
            voice,
            out,
            json,
        } => {
            let socket = socket.unwrap_or_else(server::default_socket);
            run_client(async move {
                let speech = match (audio, text) {
                    (Some(audio), _) => Speech::Audio(audio),
                    (None, Some(text)) => Speech::Text { text, voice },
                    (None, None) => {
                        return Err("give the audio (--audio FILE.wav) or a text (--text)".into());
                    }
                };
                let report = lip_sync_command::lip_sync(&socket, &face, speech, &out).await?;
                if let Some(path) = &json {
                    let text = serde_json::to_string_pretty(&report)
                        .map_err(|e| format!("cannot write the report: {e}"))?;
                    std::fs::write(path, text)
                        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                }
                Ok(report.to_string())
            })
        }
        Command::Serve {
            socket,
            listen,
            max_text_chars,
            max_streams,
            voice_dirs,
            supervisor,
            lease_bytes,
            max_audio_bytes,
            max_audio_seconds,
            max_face_bytes,
            lipsync_dir,
            lipsync_lease_bytes,
            lipsync_priority,
            lipsync_wait_ms,
        } => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            let settings = Settings {
                socket: socket.unwrap_or_else(server::default_socket),
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
                supervisor: supervisor
                    .map(|s| arbiter::endpoint::Address::parse(&s))
                    .unwrap_or_else(|| {
                        arbiter::endpoint::Address::unix(
                            arbiter::endpoint::default_supervisor_socket(),
                        )
                    }),
                lease_bytes: lease_bytes.map(|b| b.0),
                lip_sync: lipsync_dir.map(|dir| LipSyncSettings {
                    dir,
                    lease_bytes: lipsync_lease_bytes.map(|b| b.0),
                    priority: lipsync_priority.into(),
                    wait: std::time::Duration::from_millis(lipsync_wait_ms),
                }),
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

/// Runs a client command: its report on stdout, or its error on stderr and exit code 2.
fn run_client(work: impl std::future::Future<Output = Result<String, String>>) -> ExitCode {
    let done = tokio::runtime::Runtime::new()
        .map_err(|e| format!("cannot start the runtime: {e}"))
        .and_then(|runtime| runtime.block_on(work));
    match done {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("arbiter-tts: {error}");
            ExitCode::from(2)
        }
    }
}
