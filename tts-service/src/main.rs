//! `arbiter-tts`: the persistent text-to-speech and lip-sync service. It keeps its voices
//! resident on the GPU under one lease from the supervisor and serves gRPC clients.
//!
//! What is here so far: `info`, which shows what libtorch sees in this process (the device
//! its TorchScript voices would load on). The service builds on it.

use std::process::ExitCode;

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
    /// Show what libtorch sees (CUDA, devices) and run a small self-check on the device.
    Info,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Info => arbiter_torch::device::info(),
    }
}
