//! Command-line flags. Each flag that overrides the config also reads an environment
//! variable (`ARBITER_…`), so precedence is: flag, then variable, then file, then default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use arbiter::ByteSize;
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "arbiter-supervisor",
    version,
    about = "Owns each GPU's memory budget and lends it out as leases over gRPC."
)]
pub struct Cli {
    /// A TOML config file (default: /etc/arbiter/supervisor.toml if it exists).
    #[arg(long, short, env = "ARBITER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Settings of the supervisor itself (each overrides the config file); of them, client
    /// commands use only --socket, to find the supervisor.
    #[command(
        flatten,
        next_help_heading = "Supervisor settings (override the config file)"
    )]
    pub overrides: Overrides,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct Overrides {
    /// The Unix socket to serve on (clients: to connect to).
    #[arg(long, env = "ARBITER_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
    /// Give the socket to this group, so its members may ask for memory.
    #[arg(long, env = "ARBITER_SOCKET_GROUP", global = true)]
    pub socket_group: Option<String>,
    /// Also serve on TCP, such as 127.0.0.1:50051.
    #[arg(long, env = "ARBITER_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,
    /// Serve --listen in plaintext, without TLS: every caller without a token there is
    /// one identity, `insecure-tcp`. For loopback on a trusted host, or tests.
    #[arg(long, env = "ARBITER_INSECURE_TCP", global = true)]
    pub insecure_tcp: bool,
    /// Run on simulated GPUs of these capacities instead of NVML: 80GiB,24GiB.
    #[arg(
        long,
        env = "ARBITER_SIMULATED_GPUS",
        value_delimiter = ',',
        global = true
    )]
    pub simulated_gpus: Option<Vec<ByteSize>>,
    /// Where simulated GPUs keep their process tables.
    #[arg(long, env = "ARBITER_SIMULATED_DIR", global = true)]
    pub simulated_dir: Option<PathBuf>,
    /// Memory on each GPU that is never lent out.
    #[arg(long, env = "ARBITER_RESERVE", global = true)]
    pub reserve: Option<ByteSize>,
    /// How often GPUs are sampled, such as 1s or 250ms.
    #[arg(long, env = "ARBITER_SAMPLE_INTERVAL", value_parser = humantime::parse_duration, global = true)]
    pub sample_interval: Option<Duration>,
    /// Where the job database, logs and videos live.
    #[arg(long, env = "ARBITER_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Directories of pipelines (`<dir>/<name>/manifest.toml`).
    #[arg(long, env = "ARBITER_PIPELINES_DIR", global = true)]
    pub pipelines_dir: Option<PathBuf>,
    /// The video worker binary (default: arbiter-video beside this one).
    #[arg(long, env = "ARBITER_WORKER", global = true)]
    pub worker: Option<PathBuf>,
    /// Log as human-readable lines or JSON.
    #[arg(long, env = "ARBITER_LOG_FORMAT", global = true)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve (the default).
    Serve,
    /// Check the configuration and print the effective settings.
    CheckConfig,
    /// What is on each GPU: budget, grants, processes, queue.
    Status(ClientArgs),
    /// Every lease granted now.
    Leases(ClientArgs),
    /// Follow the event feed.
    Events {
        #[command(flatten)]
        client: ClientArgs,
        /// Also print every NVML sample.
        #[arg(long)]
        samples: bool,
        /// Write every NVML sample, per process, to this CSV (what `plot` reads).
        #[arg(long, value_name = "FILE")]
        record: Option<std::path::PathBuf>,
    },
    /// Hold a streaming lease until interrupted, giving memory back when asked.
    Hold(HoldArgs),
    /// Run a command (a ComfyUI or diffusers server, say) for its lifetime under a lease.
    Run(RunArgs),
    /// Submit a video job and follow it to its end.
    Generate(GenerateArgs),
    /// Video jobs, newest first.
    Jobs(ClientArgs),
    /// Make a bearer token for a TCP caller: prints the token, and stores only its hash.
    Token {
        /// The caller's name: its identity becomes `token:NAME`.
        name: String,
        /// The tokens file to append to (created with mode 0600); else the line is printed.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Release a lease by id (yours; any, for an operator).
    Release {
        #[command(flatten)]
        client: ClientArgs,
        lease_id: String,
    },
    /// Cancel a video job.
    Cancel {
        #[command(flatten)]
        client: ClientArgs,
        job_id: String,
    },
    /// Draw GPU memory over time from NVML samples as an SVG, one stacked area per process.
    Plot(PlotArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// What the video shows.
    #[arg(long)]
    pub prompt: String,
    /// What it should not show (the pipeline's guidance steers away from it).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// A soundtrack (WAV, FLAC, MP3, OGG): `@file` sends it inline, a bare path lets the supervisor read it
    /// (inside its allowed input directories).
    #[arg(long)]
    pub audio: Option<String>,
    /// A reference image, `@file` or a path, like --audio.
    #[arg(long)]
    pub image: Option<String>,
    /// The pipeline to run (default: the supervisor's default pipeline).
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Width in pixels (default: the pipeline's).
    #[arg(long)]
    pub width: Option<u32>,
    /// Height in pixels (default: the pipeline's).
    #[arg(long)]
    pub height: Option<u32>,
    /// Frames (default: the pipeline's).
    #[arg(long)]
    pub frames: Option<u32>,
    /// Frames per second (default: the pipeline's).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Denoising steps (default: the pipeline's).
    #[arg(long)]
    pub steps: Option<u32>,
    /// The noise seed, for a reproducible video (default: random, recorded in metadata.json).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Where a component runs, `COMPONENT=PLACEMENT` (gpu, resident, cpu, stream, auto);
    /// repeat for several.
    #[arg(long = "placement", value_name = "COMPONENT=PLACEMENT")]
    pub placement: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The supervisor to ask: a socket path or host:port (default: the configured socket).
    #[arg(long)]
    pub address: Option<String>,
}

#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The holder's name.
    #[arg(long, default_value = "arbiter-supervisor hold")]
    pub holder: String,
    /// How much memory, such as 8GiB.
    #[arg(long)]
    pub bytes: ByteSize,
    /// A GPU uuid or index (default: any).
    #[arg(long, default_value = "")]
    pub gpu: String,
    /// batch, normal, interactive or critical.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Agree to give memory back when a higher class needs it.
    #[arg(long)]
    pub preemptible: bool,
    #[command(flatten)]
    pub reload: ReloadArgs,
    /// Ignore reclaim requests (and be revoked at the deadline) instead of giving memory back.
    #[arg(long)]
    pub ignore_reclaim: bool,
    /// Give up waiting after this long, such as 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_wait: Option<Duration>,
}

/// What a preemptible holder's bytes cost to bring back: within its class, a reclaim asks
/// the holders that reload fastest first, and those that say nothing last.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Where the bytes come back from once given back: host-pool (pinned host memory),
    /// page-cache, disk or recompute (default: not said, the slowest).
    #[arg(long, value_enum, requires = "preemptible")]
    pub reload: Option<ReloadFrom>,
    /// The reload rate measured, per second, such as 24GB (default: the source's typical
    /// rate).
    #[arg(long, value_name = "BYTES", requires = "preemptible")]
    pub reload_rate: Option<ByteSize>,
}

/// `--reload`'s sources, the wire's ReloadSource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadFrom {
    HostPool,
    PageCache,
    Disk,
    Recompute,
}

/// `run`'s flags. Exit status: the command's own (128+N when a signal N ended it, as
/// shells say); 122 when it was stopped on a reclaim request (`--on-reclaim kill`), 123 for
/// overuse (`--on-overuse kill`), 124 when its lease was revoked or lost (the supervisor
/// stopped, a reclaim deadline passed, its overuse action); 125 when `run` failed before
/// starting it (no supervisor, the lease refused or not granted in time); 126 when the
/// command cannot be executed, 127 when it is not found.
#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("size").required(true).args(["bytes", "auto"])),
    after_help = "The command starts once the lease is granted, in its own process group, with \
CUDA_VISIBLE_DEVICES (the leased GPU's uuid), ARBITER_LEASE_ID, ARBITER_LEASE_BYTES and \
ARBITER_SUPERVISOR_SOCKET set. INT, TERM, HUP, QUIT, USR1 and USR2 are passed on to its group. \
When it exits, the lease is released and its memory checked back.\n\n\
Exit status: the command's (128+N for signal N); 122 stopped on a reclaim, 123 stopped for \
overuse, 124 lease revoked or lost, 125 run failed before starting it, 126 cannot execute, \
127 not found."
)]
pub struct RunArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// How much memory to lease, such as 8GiB.
    #[arg(long)]
    pub bytes: Option<ByteSize>,
    /// Lease everything available now on the GPU (--gpu, else the one with the most
    /// available): what a server that fills the card as it goes takes anyway. Use
    /// --preemptible with it to give the card up when a higher class needs it.
    #[arg(long)]
    pub auto: bool,
    /// The holder's name in status and events (default: the command's file name).
    #[arg(long)]
    pub holder: Option<String>,
    /// A GPU uuid or index (default: any).
    #[arg(long, default_value = "")]
    pub gpu: String,
    /// batch, normal, interactive or critical.
    #[arg(long, default_value = "normal")]
    pub priority: String,
    /// Agree to give memory back when a higher class needs it; needs --on-reclaim, since a
    /// command cannot shrink its lease.
    #[arg(long, requires = "on_reclaim")]
    pub preemptible: bool,
    #[command(flatten)]
    pub reload: ReloadArgs,
    /// When asked to give memory back: `kill` stops the command and releases the lease;
    /// `signal:NAME` (such as signal:USR1) sends NAME to the command's process group and
    /// lets it free memory or exit; `ignore` (the default) lets the supervisor revoke the
    /// lease at the deadline, which stops the command then.
    #[arg(long, value_name = "kill|signal:NAME|ignore")]
    pub on_reclaim: Option<OnReclaim>,
    /// When the command's processes use more GPU memory than the lease, beyond the
    /// supervisor's `gpu.overuse_tolerance` (its Overuse event): `log` says so, `kill` stops
    /// the command. The supervisor's own `[overuse]` action applies either way.
    #[arg(long, value_enum, default_value = "log")]
    pub on_overuse: crate::config::OveruseAction,
    /// Give up waiting for the lease after this long, such as 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_wait: Option<Duration>,
    /// When stopping the command: SIGTERM to its process group, SIGKILL after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub kill_grace: Duration,
    /// After the command exits, wait at most this long for the supervisor to see its GPU
    /// memory free.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub verify_timeout: Duration,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// What `run` does with a reclaim request (see `--on-reclaim`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnReclaim {
    Ignore,
    Kill,
    Signal(nix::sys::signal::Signal),
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a reclaim action: use kill, ignore or signal:NAME (such as signal:USR1)")]
pub struct BadOnReclaim(String);

impl std::str::FromStr for OnReclaim {
    type Err = BadOnReclaim;

    fn from_str(text: &str) -> Result<OnReclaim, BadOnReclaim> {
        let bad = || BadOnReclaim(text.to_string());
        match text.to_ascii_lowercase().as_str() {
            "ignore" => return Ok(OnReclaim::Ignore),
            "kill" => return Ok(OnReclaim::Kill),
            _ => {}
        }
        let name = text
            .strip_prefix("signal:")
            .ok_or_else(bad)?
            .to_ascii_uppercase();
        let name = if name.starts_with("SIG") {
            name
        } else {
            format!("SIG{name}")
        };
        name.parse().map(OnReclaim::Signal).map_err(|_| bad())
    }
}

impl Overrides {
    /// Applies the flags (and their variables) over a config read from file.
    pub fn apply(&self, config: &mut Config) {
        if let Some(socket) = &self.socket {
            config.server.socket = socket.clone();
        }
        if let Some(group) = &self.socket_group {
            config.server.socket_group = Some(group.clone());
        }
        if let Some(listen) = self.listen {
            config.server.listen = Some(listen);
        }
        if self.insecure_tcp {
            config.server.insecure_tcp = true;
        }
        if let Some(gpus) = &self.simulated_gpus {
            config.gpu.simulated = gpus.clone();
        }
        if let Some(dir) = &self.simulated_dir {
            config.gpu.simulated_dir = Some(dir.clone());
        }
        if let Some(reserve) = self.reserve {
            config.gpu.reserve = reserve;
        }
        if let Some(interval) = self.sample_interval {
            config.gpu.sample_interval = interval;
        }
        if let Some(dir) = &self.state_dir {
            config.jobs.state_dir = Some(dir.clone());
        }
        if let Some(dir) = &self.pipelines_dir {
            config.jobs.pipelines_dir = Some(dir.clone());
        }
        if let Some(worker) = &self.worker {
            config.jobs.worker = Some(worker.clone());
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
    }
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// A CSV of per-process GPU memory samples: nvidia-smi's
    /// `--query-compute-apps=timestamp,pid,process_name,used_memory
    /// --format=csv,noheader,nounits -lms 100` output, or `t_seconds,label,bytes` rows under
    /// that header. Repeat to merge several samplers into the same plot.
    #[arg(long = "samples", value_name = "FILE", required = true)]
    pub samples: Vec<PathBuf>,
    /// Where to write the SVG.
    #[arg(long, value_name = "OUT.svg")]
    pub out: PathBuf,
    /// The plot's title.
    #[arg(long)]
    pub title: Option<String>,
    /// A lease or limit drawn as a dashed line, `LABEL=BYTES` or `BYTES`, such as
    /// tts=40GiB; repeat for several.
    #[arg(long = "lease", value_name = "LABEL=BYTES")]
    pub leases: Vec<String>,
    /// The card's memory, drawn as a dashed line, such as 80GiB.
    #[arg(long, value_name = "BYTES")]
    pub total: Option<ByteSize>,
}
