//! `arbiter-tts`: the persistent text-to-speech and lip-sync service. It keeps its voices
//! resident on the GPU under one lease from the supervisor and serves gRPC clients.
//!
//! `serve` runs the gRPC service (eSpeak NG voices on the CPU, TorchScript voices from
//! `--voice-dir` on the GPU when there is one); `info` shows what
//! libtorch sees in this process (the device its TorchScript voices will load on). The
//! logic lives in the library (`arbiter_tts`); this file only parses flags and starts it.

use std::process::ExitCode;

use std::path::PathBuf;

use arbiter_tts::server::{self, Settings};
use arbiter_tts::service::Limits;
use clap::{Parser, Subcommand};

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
    /// Serve Synthesize, ListVoices and LipSync until SIGTERM/SIGINT.
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
        /// Streams speaking at once; more are refused with RESOURCE_EXHAUSTED.
        #[arg(long, default_value_t = 16)]
        max_streams: usize,
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
            let said = tokio::runtime::Runtime::new()
                .map_err(|e| e.to_string())
                .and_then(|runtime| {
                    runtime.block_on(arbiter_tts::say::say(&socket, text, voice, &out))
                });
            match said {
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
        Command::Serve {
            socket,
            listen,
            max_text_chars,
            max_streams,
            voice_dirs,
            supervisor,
            lease_bytes,
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
