//! `arbiter-tts`: the command users run for the tts service. `say` and `lip-sync` are
//! clients of a running service and run here, without libtorch (a call starts in
//! milliseconds); `serve` and `info` need libtorch and exec() `arbiter-tts-server` from
//! beside this executable with their arguments as given (its flags are its own: see
//! `arbiter-tts serve --help`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use arbiter_tts_client::client::lip_sync_command::{self, Speech};
use arbiter_tts_client::client::{ClientError, say};
use arbiter_tts_client::server;
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
    /// Serve Synthesize, ListVoices, LipSync and LipSyncStream until SIGTERM/SIGINT (runs
    /// arbiter-tts-server; `arbiter-tts serve --help` lists its flags).
    #[command(disable_help_flag = true)]
    Serve {
        /// The server's flags, passed on as given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
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
    /// Show what libtorch sees (CUDA, devices) and run a small self-check on the device
    /// (runs arbiter-tts-server).
    #[command(disable_help_flag = true)]
    Info {
        /// Passed on as given.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { args } => exec("serve", &args),
        Command::Info { args } => exec("info", &args),
        Command::Say {
            socket,
            text,
            voice,
            out,
        } => {
            let socket = socket.unwrap_or_else(arbiter::endpoint::default_tts_socket);
            run_client(async move { say::say(&socket, text, voice, &out).await })
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
            let socket = socket.unwrap_or_else(arbiter::endpoint::default_tts_socket);
            // clap requires one of them; `--text` is the other case.
            let speech = match audio {
                Some(audio) => Speech::Audio(audio),
                None => Speech::Text {
                    text: text.unwrap_or_default(),
                    voice,
                },
            };
            run_client(async move {
                let report = lip_sync_command::lip_sync(&socket, &face, speech, &out).await?;
                if let Some(path) = &json {
                    let text = serde_json::to_string_pretty(&report)?;
                    std::fs::write(path, text).map_err(|source| ClientError::Write {
                        path: path.clone(),
                        source,
                    })?;
                }
                Ok(report.to_string())
            })
        }
    }
}

/// Runs `arbiter-tts-server <command> <args>` in this process; returns only on failure.
fn exec(command: &str, args: &[OsString]) -> ExitCode {
    let error = server::exec(command, args);
    eprintln!("arbiter-tts: {error}");
    ExitCode::from(2)
}

/// Runs a client command on a one-thread runtime (a client has one connection to drive; a
/// thread per core would only cost start-up): its report on stdout, or its error on stderr
/// and exit code 2.
fn run_client(work: impl std::future::Future<Output = Result<String, ClientError>>) -> ExitCode {
    let done = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)
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
