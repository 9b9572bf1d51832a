//! The supervisor's settings: one TOML file, overridden by environment variables, overridden
//! by command-line flags (the flags and their variables are declared together in `cli`).
//!
//! `arbiter-supervisor check-config` prints the effective result, so an operator can see
//! what a unit will actually run with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use arbiter::ByteSize;
use serde::{Deserialize, Serialize};

use crate::lease::Action;

mod auth;
mod compute;
mod kubernetes;
mod pool;

pub use auth::{AuthConfig, Limits, QuotaConfig, QuotaOverride, TlsConfig};
pub use compute::{ComputeConfig, MpsConfig};
pub use kubernetes::KubernetesConfig;
pub use pool::PoolConfig;

/// Where the config is looked for when none is named.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/arbiter/supervisor.toml";

/// CUDA's variable for its on-disk cache of kernels compiled at run time.
pub const KERNEL_CACHE_ENV: &str = "CUDA_CACHE_PATH";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[derive(Default)]
pub struct Config {
    pub server: ServerConfig,
    pub gpu: GpuConfig,
    pub lease: LeaseConfig,
    pub overuse: OveruseConfig,
    pub jobs: JobsConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub auth: AuthConfig,
    pub quota: QuotaConfig,
    pub kubernetes: KubernetesConfig,
    pub compute: ComputeConfig,
    pub pool: PoolConfig,
}

/// The Prometheus endpoint (`GET /metrics`). Off unless `listen` is set.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The TCP address to serve metrics on, such as 127.0.0.1:9464. Unset: no endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Allow a `listen` address other hosts can reach (not loopback): metrics name
    /// holders, pids and leases.
    pub allow_remote: bool,
    /// Token identities (`token:prometheus`, from `[auth] tokens_file`) that may scrape;
    /// empty: anyone who can reach `listen`.
    #[serde(serialize_with = "auth::serialize_patterns")]
    pub readers: Vec<arbiter::auth::Pattern>,
}

impl MetricsConfig {
    /// The option that allows a remote address, as error messages name it.
    pub const ALLOW_REMOTE: &'static str = "metrics.allow_remote";

    /// The endpoint to serve, if one is configured.
    pub fn endpoint(&self) -> Option<arbiter::scrape::Endpoint> {
        self.listen.map(|address| arbiter::scrape::Endpoint {
            address,
            allow_remote: self.allow_remote,
        })
    }
}

/// What a holder whose processes use more GPU memory than their leases (by more than
/// `gpu.overuse_tolerance`) gets, per priority class of its lease. Whatever the action, the
/// excess is out of the budget while it lasts. A reclaim not answered by its deadline ends in
/// a revocation (a kill where the class says `kill`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OveruseConfig {
    pub batch: Action,
    pub normal: Action,
    pub interactive: Action,
    pub critical: Action,
}

impl Default for OveruseConfig {
    fn default() -> OveruseConfig {
        OveruseConfig {
            batch: Action::Log,
            normal: Action::Log,
            interactive: Action::Log,
            critical: Action::Log,
        }
    }
}

impl OveruseConfig {
    /// Indexed by priority class, lowest first, as the ledger's policy takes it.
    pub fn by_class(&self) -> [Action; 4] {
        [self.batch, self.normal, self.interactive, self.critical]
    }
}

/// What a worker that uses more VRAM than its lease (beyond the tolerance) gets; also what
/// `arbiter-supervisor run --on-overuse` does to its command.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OveruseAction {
    Log,
    Kill,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Where the job database and per-job logs live. Default: `$XDG_STATE_HOME/arbiter`,
    /// else `~/.local/state/arbiter`, else `/var/lib/arbiter`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Where videos are written, one directory per job. Default: `<state_dir>/outputs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<PathBuf>,
    /// The worker binary. Default: `arbiter-video` beside this binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<PathBuf>,
    /// Directories holding one pipeline each (`<dir>/<name>/manifest.toml`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipelines_dir: Option<PathBuf>,
    /// The pipeline a request without one gets.
    pub default_pipeline: String,
    /// Requests may name input files (audio, images) only inside these directories.
    pub allowed_input_dirs: Vec<PathBuf>,
    /// Largest inline audio or image payload.
    pub max_inline_bytes: ByteSize,
    /// Jobs waiting or running at once; more are refused with RESOURCE_EXHAUSTED.
    pub max_queue: usize,
    /// Run a job again when its worker crashes (exits without a result), up to max_attempts.
    pub retry_on_crash: bool,
    /// Attempts before a job that keeps crashing (or is cut off by restarts) fails.
    pub max_attempts: u32,
    /// How long a worker may run when the request sets no timeout.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// SIGTERM to a worker's process group, then SIGKILL after this long.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// How long to wait for a finished worker's GPU memory to show as free.
    #[serde(with = "humantime_serde")]
    pub verify_timeout: Duration,
    /// Used memory within this of its level before the spawn counts as returned.
    pub memory_tolerance: ByteSize,
    pub overuse_action: OveruseAction,
    /// Finished jobs (and their files) are deleted after this long.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The text-embedding cache the workers share (a repeated prompt skips the text
    /// encoder). Default: `<state_dir>/embeddings`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_cache_dir: Option<PathBuf>,
    /// Its size cap; least recently used entries go first. 0 turns the cache off.
    pub embedding_cache_bytes: ByteSize,
    /// Pull the staged pipelines' weights into the page cache at start (`arbiter-video
    /// prewarm`), so first jobs load at memory speed.
    pub prewarm: bool,
    /// Prewarm again this often (the kernel evicts files while the GPU is idle); 0: only
    /// at start.
    #[serde(with = "humantime_serde")]
    pub prewarm_interval: Duration,
    /// The most page cache one pipeline's prewarm may fill; 0: no limit.
    pub prewarm_cap: ByteSize,
    /// Where ffmpeg is missing, let workers write PNG frames instead of an MP4 (the result's
    /// video path is then the frames' directory). Off: such a job fails before model work.
    pub frames_without_ffmpeg: bool,
    /// Keep one worker per staged pipeline started ahead of its next job (`arbiter-video
    /// standby`): process start, libtorch and the pipeline's TorchScript done before the
    /// request arrives, with no CUDA context and no GPU memory held until a job is handed
    /// over. It still runs one job and exits; a fresh one is started behind it.
    pub standby: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// The Unix socket every local process finds the supervisor at.
    pub socket: PathBuf,
    /// Octal permission bits of the socket, as a string ("0660").
    pub socket_mode: String,
    /// A group given the socket, so its members may ask for memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Optional TCP address for remote clients and grpcurl: TLS (`[server.tls]`), or
    /// plaintext where `insecure_tcp` says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// TLS for the TCP listener: the server's certificate and key, and the client CA.
    pub tls: TlsConfig,
    /// Serve TCP in plaintext, where every caller without a token is one identity,
    /// `insecure-tcp`: only for a loopback address on a host whose users you trust, or
    /// tests. Logged as a warning, and shown by `status`.
    pub insecure_tcp: bool,
    /// How long shutdown waits for connections to drain.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// Simulated GPUs by capacity. Empty: read the real GPUs through NVML.
    pub simulated: Vec<ByteSize>,
    /// Where simulated GPUs keep their process table. Default: `<runtime dir>/simulated-gpu`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub simulated_dir: Option<PathBuf>,
    /// Memory on each GPU that is never lent out.
    pub reserve: ByteSize,
    /// How often NVML is sampled.
    #[serde(with = "humantime_serde")]
    pub sample_interval: Duration,
    /// A holder using more than its leases by this much is overusing (see `[overuse]`);
    /// given-back bytes count as back once its use is within this of what it still holds.
    pub overuse_tolerance: ByteSize,
    /// A grant is decided on a reading of the card at most this old; an older one is read
    /// again first, so a foreign process that took memory since the last sample is seen.
    #[serde(with = "humantime_serde")]
    pub fresh_reading: Duration,
    /// How often a card is read while bytes given back wait to be seen free.
    #[serde(with = "humantime_serde")]
    pub return_poll: Duration,
    /// Given-back bytes still in use after this long are reported unverified (an event, a
    /// warning, a status line); they stay out of the budget until the card shows them free.
    #[serde(with = "humantime_serde")]
    pub return_timeout: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// A waiter gains one priority class for each interval it waits.
    #[serde(with = "humantime_serde")]
    pub aging_interval: Duration,
    /// How long a holder has to give memory back when asked.
    #[serde(with = "humantime_serde")]
    pub reclaim_grace: Duration,
    /// TTL of a unary lease when the request sets none.
    #[serde(with = "humantime_serde")]
    pub default_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// The longest max_wait a request may ask for.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Leases larger than this need a holder whose processes the supervisor can see (a
    /// Unix-socket caller in its pid namespace): the others are counted by bytes alone, and
    /// their give-backs cannot be checked. Unset: any size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_visible_above: Option<ByteSize>,
    /// Callers' lease requests that may wait at once, all identities together.
    pub max_waiting: usize,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter ("info", "arbiter_supervisor=debug"); RUST_LOG overrides it.
    pub filter: String,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            socket: arbiter::endpoint::default_supervisor_socket(),
            socket_mode: "0660".into(),
            socket_group: None,
            listen: None,
            tls: TlsConfig::default(),
            insecure_tcp: false,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for GpuConfig {
    fn default() -> GpuConfig {
        GpuConfig {
            simulated: Vec::new(),
            simulated_dir: None,
            reserve: ByteSize(512 << 20),
            sample_interval: Duration::from_secs(1),
            overuse_tolerance: ByteSize(256 << 20),
            fresh_reading: Duration::from_millis(100),
            return_poll: Duration::from_millis(5),
            return_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            aging_interval: Duration::from_secs(30),
            reclaim_grace: Duration::from_secs(10),
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            max_wait: Duration::from_secs(24 * 3600),
            require_visible_above: None,
            max_waiting: 1024,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> JobsConfig {
        JobsConfig {
            state_dir: None,
            output_dir: None,
            worker: None,
            pipelines_dir: None,
            default_pipeline: arbiter::pipeline::TINY.into(),
            allowed_input_dirs: Vec::new(),
            max_inline_bytes: ByteSize(32 << 20),
            max_queue: 256,
            retry_on_crash: false,
            max_attempts: 3,
            default_timeout: Duration::from_secs(3600),
            max_timeout: Duration::from_secs(6 * 3600),
            kill_grace: Duration::from_secs(10),
            verify_timeout: Duration::from_secs(30),
            memory_tolerance: ByteSize(64 << 20),
            overuse_action: OveruseAction::Log,
            retention: Duration::from_secs(7 * 24 * 3600),
            embedding_cache_dir: None,
            embedding_cache_bytes: ByteSize(4 << 30),
            prewarm: false,
            prewarm_interval: Duration::ZERO,
            prewarm_cap: ByteSize(0),
            frames_without_ffmpeg: false,
            standby: true,
        }
    }
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            format: LogFormat::Human,
            filter: "info".into(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path`, or the default path if it exists, or nothing (defaults).
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(path) => path.to_path_buf(),
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => PathBuf::from(DEFAULT_CONFIG_PATH),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Config::parse(&text).map_err(|message| ConfigError::Parse { path, message })
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks rules that types alone do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.kubernetes.validate().map_err(ConfigError::Invalid)?;
        self.compute.validate().map_err(ConfigError::Invalid)?;
        self.pool.validate().map_err(ConfigError::Invalid)?;
        if self.socket_mode().is_none() {
            return invalid(format!(
                "server.socket_mode `{}` is not an octal mode: write it like \"0660\"",
                self.server.socket_mode
            ));
        }
        if let Some(zero) = self.gpu.simulated.iter().find(|b| b.0 == 0) {
            return invalid(format!(
                "gpu.simulated has a GPU of {zero}: give every simulated GPU a capacity such as 80GiB"
            ));
        }
        if self.gpu.sample_interval < Duration::from_millis(10) {
            return invalid("gpu.sample_interval is under 10ms: NVML sampling that often costs more than it tells; use 1s".into());
        }
        if self.lease.default_ttl > self.lease.max_ttl
            || self.lease.default_ttl < Duration::from_secs(1)
        {
            return invalid(
                "lease.default_ttl must be at least 1s and at most lease.max_ttl".into(),
            );
        }
        if self.jobs.max_queue == 0 || self.jobs.max_attempts == 0 {
            return invalid("jobs.max_queue and jobs.max_attempts must be at least 1".into());
        }
        if self.jobs.default_timeout > self.jobs.max_timeout {
            return invalid("jobs.default_timeout must be at most jobs.max_timeout".into());
        }
        if self.gpu.return_poll < Duration::from_millis(1)
            || self.gpu.return_poll > self.gpu.sample_interval
        {
            return invalid(format!(
                "gpu.return_poll is {}: it must be between 1ms and gpu.sample_interval; use 5ms",
                humantime::format_duration(self.gpu.return_poll)
            ));
        }
        if self.gpu.return_timeout.is_zero() {
            return invalid(
                "gpu.return_timeout is 0: given-back memory needs time to show free; use 10s"
                    .into(),
            );
        }
        if self.lease.reclaim_grace.is_zero() {
            return invalid(
                "lease.reclaim_grace is 0: holders need time to give memory back; use 10s".into(),
            );
        }
        if let Some(listen) = self.server.listen {
            let tls = &self.server.tls;
            match (
                tls.cert.is_some(),
                tls.key.is_some(),
                self.server.insecure_tcp,
            ) {
                (true, true, false) => {}
                (false, false, true) => {}
                (true, true, true) => {
                    return invalid(
                        "server.insecure_tcp is set, and so is server.tls: choose one (TLS, unless this is a test)".into(),
                    );
                }
                (false, false, false) => {
                    return invalid(format!(
                        "server.listen = {listen} needs TLS: set [server.tls] cert and key (docs/security.md says how to make them), or pass --insecure-tcp to serve plaintext on purpose"
                    ));
                }
                _ => {
                    return invalid(
                        "[server.tls] needs both cert and key (and client_ca to name callers by certificate)".into(),
                    );
                }
            }
        } else if self.server.tls.cert.is_some() || self.server.insecure_tcp {
            return invalid(
                "[server.tls] or server.insecure_tcp is set, but server.listen is not: set the TCP address to serve".into(),
            );
        }
        if !self.metrics.readers.is_empty() {
            if self.auth.tokens_file.is_none() {
                return invalid(
                    "metrics.readers names token identities, but [auth] tokens_file is not set: set it (the readers' tokens are there)".into(),
                );
            }
            if let Some(other) = self.metrics.readers.iter().find(|p| {
                !matches!(
                    p,
                    arbiter::auth::Pattern::Token(_) | arbiter::auth::Pattern::Anyone
                )
            }) {
                return invalid(format!(
                    "metrics.readers has `{other}`: scrapers are named by token (token:NAME), since the endpoint is HTTP without TLS"
                ));
            }
        }
        if self.lease.max_waiting == 0 {
            return invalid("lease.max_waiting is 0: no request could ever wait; use 1024".into());
        }
        if let Some(endpoint) = self.metrics.endpoint()
            && let Err(error) = endpoint.check(MetricsConfig::ALLOW_REMOTE)
        {
            return invalid(format!("metrics.listen: {error}"));
        }
        Ok(())
    }

    pub fn socket_mode(&self) -> Option<u32> {
        let text = self.server.socket_mode.trim_start_matches("0o");
        u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o777)
    }

    /// Where the job database and logs live.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.jobs.state_dir {
            return dir.clone();
        }
        if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("arbiter");
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty() && h != "/") {
            Some(home) if nix::unistd::getuid().as_raw() != 0 => {
                PathBuf::from(home).join(".local/state/arbiter")
            }
            _ => PathBuf::from("/var/lib/arbiter"),
        }
    }

    /// The working directory of every built-in worker. It must be the same for every job:
    /// cuDNN compiles its attention kernels when a process first runs them, and CUDA's
    /// on-disk JIT cache, which spares later processes that compile, misses when the working
    /// directory differs (0.5-1.5 s per attention shape, measured on the H100 and H200).
    pub fn worker_dir(&self) -> PathBuf {
        self.state_dir().join("worker")
    }

    /// Where the workers' CUDA keeps its compiled kernels (CUDA_CACHE_PATH): the
    /// supervisor's own CUDA_CACHE_PATH when set, else `<state_dir>/cuda-cache`, which is
    /// writable even where the service's home directory is not.
    pub fn kernel_cache_dir(&self) -> PathBuf {
        std::env::var_os(KERNEL_CACHE_ENV)
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.state_dir().join("cuda-cache"))
    }

    /// The workers' embedding cache, unless it is turned off.
    pub fn embedding_cache_dir(&self) -> Option<PathBuf> {
        (self.jobs.embedding_cache_bytes.0 > 0).then(|| {
            self.jobs
                .embedding_cache_dir
                .clone()
                .unwrap_or_else(|| self.state_dir().join("embeddings"))
        })
    }

    /// MPS's pipe and log directories.
    pub fn mps_dirs(&self) -> (PathBuf, PathBuf) {
        let mps = &self.compute.mps;
        (
            mps.pipe_dir
                .clone()
                .unwrap_or_else(|| self.state_dir().join("mps/pipe")),
            mps.log_dir
                .clone()
                .unwrap_or_else(|| self.state_dir().join("mps/log")),
        )
    }

    /// Where the compute gates are made.
    /// The weight pool's socket: `[pool] socket`, or `pool.sock` beside ours.
    pub fn pool_socket(&self) -> PathBuf {
        self.pool.socket.clone().unwrap_or_else(|| {
            self.server
                .socket
                .parent()
                .unwrap_or(Path::new("."))
                .join("pool.sock")
        })
    }

    pub fn compute_gate_dir(&self) -> PathBuf {
        self.compute
            .gate_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("compute"))
    }

    pub fn output_dir(&self) -> PathBuf {
        self.jobs
            .output_dir
            .clone()
            .unwrap_or_else(|| self.state_dir().join("outputs"))
    }

    /// The worker binary: configured, or `arbiter-video` beside this executable.
    pub fn worker_binary(&self) -> PathBuf {
        if let Some(worker) = &self.jobs.worker {
            return worker.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("arbiter-video")))
            .unwrap_or_else(|| PathBuf::from("arbiter-video"))
    }

    /// Where simulated GPUs keep their process tables.
    pub fn simulated_dir(&self) -> PathBuf {
        self.gpu
            .simulated_dir
            .clone()
            .unwrap_or_else(|| arbiter::endpoint::runtime_dir().join("simulated-gpu"))
    }

    /// The effective settings as TOML, for check-config.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
    }

    /// Where the supervisor keeps things, as TOML comments: paths the settings imply
    /// (defaults, the environment) rather than state, so `check-config` shows them too.
    pub fn describe_paths(&self) -> String {
        let embeddings = self
            .embedding_cache_dir()
            .map_or("off".to_string(), |dir| dir.display().to_string());
        format!(
            "\n# Where things go (from the settings above and the environment):\n\
             #   jobs database and logs:      {}\n\
             #   outputs:                     {}\n\
             #   worker binary:               {}\n\
             #   workers' working directory:  {}\n\
             #   workers' CUDA kernel cache:  {}\n\
             #   text-embedding cache:        {}\n",
            self.state_dir().display(),
            self.output_dir().display(),
            self.worker_binary().display(),
            self.worker_dir().display(),
            self.kernel_cache_dir().display(),
            embeddings,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_directory_and_kernel_cache_live_under_the_state_directory() {
        let config = Config::parse("[jobs]\nstate_dir = \"/srv/arbiter\"\n").unwrap();
        assert_eq!(config.worker_dir(), PathBuf::from("/srv/arbiter/worker"));
        if std::env::var_os(KERNEL_CACHE_ENV).is_none_or(|v| v.is_empty()) {
            assert_eq!(
                config.kernel_cache_dir(),
                PathBuf::from("/srv/arbiter/cuda-cache")
            );
        }
        let paths = config.describe_paths();
        assert!(paths.contains("/srv/arbiter/worker"), "{paths}");
        assert!(paths.contains("/srv/arbiter/embeddings"), "{paths}");
        assert!(
            paths.lines().all(|l| l.is_empty() || l.starts_with('#')),
            "comments only, so the output stays a config: {paths}"
        );
    }

    #[test]
    fn a_full_file_parses_and_round_trips() {
        let config = Config::parse(
            r#"
            [server]
            socket = "/tmp/a.sock"
            listen = "127.0.0.1:50051"
            [server.tls]
            cert = "/etc/arbiter/tls/server.pem"
            key = "/etc/arbiter/tls/server.key"
            client_ca = "/etc/arbiter/tls/clients-ca.pem"
            [auth]
            tokens_file = "/etc/arbiter/tokens"
            operators = ["user:root", "token:admin"]
            holders = ["unix", "cert:render-01"]
            [quota]
            leases = 8
            bytes = "40GiB"
            [[quota.for]]
            identities = ["token:ci"]
            leases = 2
            rate = 0
            [gpu]
            simulated = ["80GiB", "24GiB"]
            reserve = "1GiB"
            sample_interval = "500ms"
            [lease]
            aging_interval = "1m"
            [log]
            format = "json"
            "#,
        )
        .unwrap();
        assert_eq!(
            config.gpu.simulated,
            vec![ByteSize(80 << 30), ByteSize(24 << 30)]
        );
        assert_eq!(config.gpu.sample_interval, Duration::from_millis(500));
        assert_eq!(config.log.format, LogFormat::Json);
        config.validate().unwrap();
        assert_eq!(config.quota.overrides[0].leases, Some(2));
        assert_eq!(config.auth.operators.len(), 2);
        let again = Config::parse(&config.to_toml()).unwrap();
        assert_eq!(again.to_toml(), config.to_toml());
    }

    #[test]
    fn the_shipped_tls_config_parses_and_validates() {
        let text = include_str!("../../../deploy/config/supervisor-tls.toml");
        let config = Config::parse(text).unwrap();
        config.validate().unwrap();
        assert!(config.server.tls.client_ca.is_some());
        assert_eq!(config.quota.overrides.len(), 1);
    }

    #[test]
    fn tcp_is_tls_unless_plaintext_is_asked_for_and_never_both() {
        let check = |text: &str| {
            Config::parse(text)
                .unwrap()
                .validate()
                .map_err(|e| e.to_string())
        };
        let plain = check("[server]\nlisten = \"0.0.0.0:50051\"\n").unwrap_err();
        assert!(
            plain.contains("needs TLS") && plain.contains("--insecure-tcp"),
            "{plain}"
        );
        check("[server]\nlisten = \"127.0.0.1:50051\"\ninsecure_tcp = true\n").unwrap();
        let both = check(
            "[server]\nlisten = \"127.0.0.1:1\"\ninsecure_tcp = true\n[server.tls]\ncert = \"c\"\nkey = \"k\"\n",
        )
        .unwrap_err();
        assert!(both.contains("choose one"), "{both}");
        let half =
            check("[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\ncert = \"c\"\n").unwrap_err();
        assert!(half.contains("both cert and key"), "{half}");
        let unknown = Config::parse("[auth]\noperators = [\"admin\"]\n").unwrap_err();
        assert!(unknown.contains("uid:N"), "{unknown}");
    }

    #[test]
    fn the_shipped_config_parses_with_the_default_accounting() {
        let text = include_str!("../../../deploy/config/supervisor.toml");
        let config = Config::parse(text).unwrap();
        config.validate().unwrap();
        let defaults = Config::default();
        assert_eq!(config.gpu.fresh_reading, defaults.gpu.fresh_reading);
        assert_eq!(config.gpu.return_poll, defaults.gpu.return_poll);
        assert_eq!(config.gpu.return_timeout, defaults.gpu.return_timeout);
        assert_eq!(config.overuse.by_class(), defaults.overuse.by_class());
        let strict = Config::parse("[overuse]\nbatch = \"kill\"\nnormal = \"reclaim\"\n").unwrap();
        assert_eq!(
            strict.overuse.by_class(),
            [Action::Kill, Action::Reclaim, Action::Log, Action::Log]
        );
        let err = Config::parse("[overuse]\nbatch = \"shout\"\n").unwrap_err();
        assert!(err.contains("shout"), "{err}");
        let mut config = Config::default();
        config.gpu.return_poll = Duration::ZERO;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("return_poll")
        );
    }

    #[test]
    fn standby_workers_are_on_by_default_and_can_be_turned_off() {
        assert!(Config::default().jobs.standby);
        let off = Config::parse("[jobs]\nstandby = false\n").unwrap();
        off.validate().unwrap();
        assert!(!off.jobs.standby);
        let again = Config::parse(&off.to_toml()).unwrap();
        assert!(!again.jobs.standby);
    }

    #[test]
    fn metrics_are_off_by_default_and_a_remote_address_needs_allow_remote() {
        assert!(Config::default().metrics.endpoint().is_none());
        let local = Config::parse("[metrics]\nlisten = \"127.0.0.1:9464\"\n").unwrap();
        local.validate().unwrap();
        assert_eq!(
            local.metrics.endpoint().map(|e| e.address.port()),
            Some(9464)
        );
        let remote = Config::parse("[metrics]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
        let error = remote.validate().unwrap_err().to_string();
        assert!(error.contains("metrics.allow_remote"), "{error}");
        let allowed =
            Config::parse("[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_remote = true\n").unwrap();
        allowed.validate().unwrap();
        let again = Config::parse(&allowed.to_toml()).unwrap();
        assert!(again.metrics.allow_remote);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = Config::parse("[gpu]\nreserv = \"1GiB\"\n").unwrap_err();
        assert!(err.contains("reserv"), "{err}");
        let err = Config::parse("[gpu]\nreserve = \"lots\"\n").unwrap_err();
        assert!(err.contains("lots"), "{err}");
        let mut config = Config::default();
        config.server.socket_mode = "rw-rw----".into();
        assert!(config.validate().unwrap_err().to_string().contains("octal"));
    }
}
