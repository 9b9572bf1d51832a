//! The real `arbiter-supervisor` binary (and through it the `arbiter-video` workers it
//! spawns from beside itself) on simulated GPUs, each in its own temporary directory with
//! its own socket, simulated process table, state directory and TCP port, handing out gRPC
//! clients to it.
//!
//! Every [`Supervisor`] is stopped when dropped (SIGTERM, then SIGKILL if it lingers), and
//! its log is printed when the test that owned it fails, so a failure shows what the
//! supervisor saw (set `ARBITER_TEST_LOGS=1` to print every log, with `--nocapture`).
//!
//! Tests that start one run on a multi-threaded runtime on purpose: a `Supervisor` is
//! stopped in its `Drop`, which blocks the test's thread, and its HTTP/2 graceful shutdown
//! waits for each client connection to answer a PING, so the test's connections must keep
//! being served by other threads meanwhile (on a current-thread runtime every stop would
//! take the 3s grace).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as pb;
use arbiter::pb::video::v1::video_client::VideoClient;
use arbiter::pb::worker::v1::worker_client::WorkerClient;
use nix::sys::signal::Signal;
use pb::supervisor_client::SupervisorClient;
use tempfile::TempDir;
use tonic::transport::Channel;

use crate::binaries;
use crate::leases::Client;
use crate::processes::{Process, signal, wait_for_exit, wait_for_exit_async};
use crate::waiting::within;

/// How long a supervisor may take to answer its first Ping.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a dropped supervisor gets to exit after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A command for the supervisor's binary with an environment that cannot leak into the
/// test: no `ARBITER_*` settings from the caller's shell, no systemd journal or notify
/// socket, stdin closed.
pub fn command() -> Command {
    let mut command = Command::new(binaries::supervisor());
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("ARBITER_")) {
            command.env_remove(&key);
        }
    }
    for key in [
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
    ] {
        command.env_remove(key);
    }
    command.env("RUST_LOG", "info,arbiter_supervisor=debug");
    command.stdin(Stdio::null());
    command
}

/// Writes a simulated process-table record (`<dir>/<gpu>/<pid>` holding `bytes`).
pub fn record_usage(simulated_dir: &Path, gpu: u32, pid: u32, bytes: u64) {
    std::fs::create_dir_all(simulated_dir.join(gpu.to_string()))
        .expect("create the simulated GPU directory");
    arbiter::simulated::record(simulated_dir, gpu, pid, bytes).expect("write the usage record");
}

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// How to start a supervisor. Defaults: GPUs of 10GiB and 4GiB, no reserve, a 100ms
/// sample interval, TCP on a free port, an empty config file (so /etc is never read).
pub struct Builder {
    gpus: String,
    sample_interval: String,
    config: String,
    socket: Option<PathBuf>,
    tcp: bool,
    env: Vec<(String, String)>,
    args: Vec<OsString>,
}

impl Builder {
    /// Simulated GPU capacities, such as "10GiB,4GiB".
    pub fn gpus(mut self, gpus: &str) -> Builder {
        self.gpus = gpus.into();
        self
    }

    pub fn sample_interval(mut self, interval: &str) -> Builder {
        self.sample_interval = interval.into();
        self
    }

    /// The text of the TOML config file.
    pub fn config(mut self, toml: &str) -> Builder {
        self.config = toml.into();
        self
    }

    /// Serve on this socket instead of one in the supervisor's own temporary directory.
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Builder {
        self.socket = Some(path.into());
        self
    }

    pub fn without_tcp(mut self) -> Builder {
        self.tcp = false;
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Builder {
        self.env.push((key.into(), value.into()));
        self
    }

    /// An extra command-line argument for the supervisor.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Builder {
        self.args.push(arg.into());
        self
    }

    /// Serve the pipelines under `dir` (`<dir>/<name>/manifest.toml`) beside the built-in one.
    pub fn pipelines_dir(self, dir: impl AsRef<Path>) -> Builder {
        self.arg("--pipelines-dir").arg(dir.as_ref())
    }

    /// Starts the supervisor and waits until it answers a Ping on its socket.
    pub async fn start(self) -> Supervisor {
        let dir = tempfile::Builder::new()
            .prefix("arbiter-it-")
            .tempdir()
            .expect("a temporary directory");
        let socket = self
            .socket
            .clone()
            .unwrap_or_else(|| dir.path().join("supervisor.sock"));
        let simulated_dir = dir.path().join("simulated");
        let config = dir.path().join("supervisor.toml");
        std::fs::write(&config, &self.config).expect("write the config file");
        let log = dir.path().join("supervisor.log");
        let (child, port) = self.launch(&config, &socket, &simulated_dir, &log).await;
        Supervisor {
            child: Some(child),
            socket,
            simulated_dir,
            config,
            port,
            log,
            builder: self,
            dir,
        }
    }

    /// Spawns the supervisor and waits until it answers a Ping on its socket.
    async fn launch(
        &self,
        config: &Path,
        socket: &Path,
        simulated_dir: &Path,
        log: &Path,
    ) -> (Child, Option<u16>) {
        // The free port can be taken by someone else before the supervisor binds it; then
        // the supervisor exits at once, and a new port is tried.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = self.tcp.then(free_port);
            let mut child = self.spawn(config, socket, simulated_dir, port, log);
            match wait_ready(&mut child, socket).await {
                Ok(()) => return (child, port),
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let text = std::fs::read_to_string(log).unwrap_or_default();
                    if port.is_some() && attempt < 3 && text.contains("cannot listen on TCP") {
                        continue;
                    }
                    panic!("{why}; log:\n{text}");
                }
            }
        }
    }

    fn spawn(
        &self,
        config: &Path,
        socket: &Path,
        simulated_dir: &Path,
        port: Option<u16>,
        log: &Path,
    ) -> Child {
        let mut command = command();
        command
            .arg("--config")
            .arg(config)
            .arg("--socket")
            .arg(socket)
            .arg("--simulated-dir")
            .arg(simulated_dir)
            .arg("--state-dir")
            .arg(simulated_dir.with_file_name("state"))
            .args(["--reserve", "0B", "--sample-interval"])
            .arg(&self.sample_interval)
            .arg("--simulated-gpus")
            .arg(&self.gpus);
        if let Some(port) = port {
            command.arg("--listen").arg(format!("127.0.0.1:{port}"));
            // Tests talk plaintext over loopback unless they configure TLS themselves.
            if !self.config.contains("[server.tls]") {
                command.arg("--insecure-tcp");
            }
        }
        command.args(&self.args);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        // Appended to, so that a restarted supervisor's log follows the first one's.
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the log file");
        command
            .stdout(log_file.try_clone().expect("clone the log file"))
            .stderr(log_file);
        command.spawn().expect("spawn arbiter-supervisor")
    }
}

/// Polls until the supervisor answers a Ping on `socket`; Err says why it never will.
async fn wait_ready(child: &mut Child, socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    let address = Address::unix(socket);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "arbiter-supervisor exited ({status}) before serving"
            ));
        }
        if socket.exists() {
            let ping = async {
                let channel = connect(&address).await.ok()?;
                SupervisorClient::new(channel)
                    .ping(pb::PingRequest {})
                    .await
                    .ok()
            };
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), ping).await {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "arbiter-supervisor did not answer a Ping on {} within {START_TIMEOUT:?}",
                socket.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A running `arbiter-supervisor` on simulated GPUs.
pub struct Supervisor {
    child: Option<Child>,
    socket: PathBuf,
    simulated_dir: PathBuf,
    config: PathBuf,
    port: Option<u16>,
    log: PathBuf,
    /// How it was started, for [`Supervisor::restart`].
    builder: Builder,
    // Last, so the directory outlives everything that points into it.
    dir: TempDir,
}

impl Supervisor {
    pub fn builder() -> Builder {
        Builder {
            gpus: "10GiB,4GiB".into(),
            sample_interval: "100ms".into(),
            config: String::new(),
            socket: None,
            tcp: true,
            env: Vec::new(),
            args: Vec::new(),
        }
    }

    /// A supervisor with the defaults of [`Builder`].
    pub async fn start() -> Supervisor {
        Supervisor::builder().start().await
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn simulated_dir(&self) -> &Path {
        &self.simulated_dir
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The supervisor's own temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where it keeps its job database and job directories (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `127.0.0.1:<port>` of its TCP listener.
    /// The TCP port it listens on.
    pub fn port(&self) -> u16 {
        self.port.expect("this supervisor was started without TCP")
    }

    pub fn tcp_address(&self) -> String {
        let port = self.port.expect("this supervisor was started without TCP");
        format!("127.0.0.1:{port}")
    }

    /// Everything the supervisor has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A client over the Unix socket (the supervisor sees this test process's pid and uid).
    pub async fn unix_client(&self) -> Client {
        SupervisorClient::new(self.unix_channel().await)
    }

    /// A client over TCP (no peer identity).
    pub async fn tcp_client(&self) -> Client {
        SupervisorClient::new(self.tcp_channel().await)
    }

    /// A `arbiter.video.v1.Video` client over the Unix socket.
    pub async fn video_client(&self) -> VideoClient<Channel> {
        VideoClient::new(self.unix_channel().await)
    }

    /// A `arbiter.worker.v1.Worker` client over the Unix socket: this test process, not a
    /// worker the supervisor started.
    pub async fn worker_client(&self) -> WorkerClient<Channel> {
        WorkerClient::new(self.unix_channel().await)
    }

    /// A `arbiter.worker.v1.Worker` client over TCP (no peer identity).
    pub async fn tcp_worker_client(&self) -> WorkerClient<Channel> {
        WorkerClient::new(self.tcp_channel().await)
    }

    async fn unix_channel(&self) -> Channel {
        self.channel(Address::unix(&self.socket), "connecting to the socket")
            .await
    }

    async fn tcp_channel(&self) -> Channel {
        self.channel(Address::parse(&self.tcp_address()), "connecting over TCP")
            .await
    }

    async fn channel(&self, address: Address, what: &str) -> Channel {
        within(Duration::from_secs(10), what, connect(&address))
            .await
            .unwrap_or_else(|e| panic!("{e}\nsupervisor log:\n{}", self.log()))
    }

    /// Sends SIGTERM and waits (at most 15s) for the process to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the supervisor process");
        signal(child, Signal::SIGTERM);
        match wait_for_exit_async(child, Duration::from_secs(15)).await {
            Some(status) => {
                self.child = None;
                status
            }
            None => panic!(
                "arbiter-supervisor did not exit within 15s of SIGTERM; log:\n{}",
                self.log()
            ),
        }
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the supervisor process");
        let _ = child.kill();
        child.wait().expect("reap the supervisor")
    }

    /// Starts the supervisor again after [`terminate`](Self::terminate) or
    /// [`kill`](Self::kill), with the same flags, config, socket and state directory (and a
    /// new TCP port), and waits until it answers a Ping. Its log goes on in the same file.
    pub async fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop the supervisor before restarting it"
        );
        let (child, port) = self
            .builder
            .launch(&self.config, &self.socket, &self.simulated_dir, &self.log)
            .await;
        self.child = Some(child);
        self.port = port;
    }

    /// A command for one of the binary's client subcommands (`hold`, `status`, …), aimed at
    /// this supervisor's socket and config. `args` start with the subcommand.
    pub fn client_command(&self, args: &[&str]) -> Command {
        let mut command = command();
        command
            .args(args)
            .arg("--address")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config);
        command
    }

    /// `arbiter-supervisor run <flags> -- <command>` against this supervisor: its address
    /// and config come before `--`, after which everything is the command's.
    pub fn run_command(&self, flags: &[&str], command: &[&str]) -> Command {
        let mut run = self.client_command(&["run"]);
        run.args(flags).arg("--").args(command);
        run
    }

    /// Starts `arbiter-supervisor hold …` against this supervisor as a separate process.
    pub fn spawn_hold(&self, name: &str, args: &[&str]) -> Process {
        let mut all = vec!["hold", "--holder", name];
        all.extend_from_slice(args);
        Process::spawn(
            self.client_command(&all),
            self.dir.path().join(format!("{name}.log")),
        )
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Ok(None) = child.try_wait()
        {
            signal(&child, Signal::SIGTERM);
            if wait_for_exit(&mut child, STOP_GRACE).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() || std::env::var_os("ARBITER_TEST_LOGS").is_some() {
            eprintln!(
                "----- arbiter-supervisor log ({}) -----\n{}----- end of log -----",
                self.socket.display(),
                self.log()
            );
        }
    }
}
