//! `arbiter-video`: the per-request video worker. The supervisor spawns one per video job,
//! under a lease sized for it, with `CUDA_VISIBLE_DEVICES` set to the leased GPU; the
//! process runs its pipeline one stage at a time, writes the video and exits, so its CUDA
//! context and every byte it allocated go back to the GPU.
//!
//! Commands: `run` (what the supervisor starts: claim the job named by the token in the
//! environment, run it, exit with the outcome's code) and `info` (what libtorch sees in a
//! process started the way the supervisor starts workers). The work is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use arbiter_video::job;
use arbiter_video::worker::{SOCKET_ENV, TOKEN_ENV};
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "arbiter-video",
    version,
    about = "Runs one video job on a leased GPU, then exits."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what libtorch sees (CUDA, devices) and run a small self-check on the device.
    Info,
    /// Claim the job the supervisor spawned this process for, run it and report the result.
    /// Exit codes: 0 done, 1 failed (the supervisor was told why), 2 could not claim the
    /// job, 3 cancelled.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The supervisor's Unix socket.
    #[arg(long, env = SOCKET_ENV, value_name = "PATH")]
    supervisor_socket: PathBuf,
    /// The one-time token that stands for the job (the supervisor passes it in the
    /// environment, which other users cannot read).
    #[arg(long, env = TOKEN_ENV, hide_env_values = true)]
    token: String,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => arbiter_torch::device::info(),
        Command::Run(args) => {
            init_logging();
            let outcome = job::run(&args.supervisor_socket, args.token);
            ExitCode::from(outcome.exit_code())
        }
    }
}

/// Human lines on stderr, which the supervisor sends to the job's log file; `RUST_LOG`
/// filters (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
