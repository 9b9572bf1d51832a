//! `arbiter-video`: the per-request video worker. The supervisor spawns one per video job,
//! under a lease sized for it, with `CUDA_VISIBLE_DEVICES` set to the leased GPU; the
//! process loads its pipeline one component at a time, writes the video and exits, so its
//! CUDA context and every byte it allocated go back to the GPU.
//!
//! What is here so far: `info`, which shows what libtorch sees in a process started the way
//! the supervisor starts workers. The job lifecycle and the staged pipeline build on it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => arbiter_torch::device::info(),
    }
}
