//! A harness for whole-system tests: runs the real `arbiter-supervisor` binary (and through
//! it the `arbiter-video` workers it spawns from beside itself) on simulated GPUs, each in
//! its own temporary directory with its own socket, simulated process table, state
//! directory and TCP port, and hands out gRPC clients to it.
//!
//! Every [`Supervisor`] is stopped when dropped (SIGTERM, then SIGKILL if it lingers), and
//! its log is printed when the test that owned it fails, so a failure shows what the
//! supervisor saw (set `ARBITER_TEST_LOGS=1` to print every log, with `--nocapture`).

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as pb;
use arbiter::pb::video::v1::video_client::VideoClient;
use arbiter::pb::worker::v1::worker_client::WorkerClient;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use pb::supervisor_client::SupervisorClient;
use tempfile::TempDir;
use tonic::transport::Channel;

pub type Client = SupervisorClient<Channel>;

pub const GIB: u64 = 1 << 30;

/// How long a supervisor may take to answer its first Ping.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a dropped supervisor gets to exit after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The root of the workspace (the `arbiter` package is the workspace root).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The binaries the tests run, each with the sources (directories and files, relative to
/// the workspace root) it is built from.
const BINARIES: &[(&str, &[&str])] = &[
    (
        "arbiter-supervisor",
        &[
            "src",
            "proto",
            "build.rs",
            "supervisor/src",
            "supervisor/Cargo.toml",
        ],
    ),
    // The video worker the supervisor spawns from beside its own binary.
    (
        "arbiter-video",
        &[
            "src",
            "proto",
            "build.rs",
            "video-service/src",
            "video-service/build.rs",
            "video-service/Cargo.toml",
            "torch/src",
            "torch/build.rs",
            "torch/Cargo.toml",
        ],
    ),
];

/// The `arbiter-supervisor` binary of the profile these tests were built with, built first
/// (with the `arbiter-video` worker it spawns beside it) if either is missing or older than
/// the sources it is made of.
///
/// `current_exe()` is `<target>/<profile>/deps/<test>-<hash>`, and cargo puts the binaries
/// at `<target>/<profile>/<name>`. `cargo test` of the root package does not build other
/// packages' binaries, hence the explicit build (once per test process).
pub fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(locate_or_build)
}

fn locate_or_build() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in <target>/<profile>/deps");
    let binary = profile_dir.join("arbiter-supervisor");
    let fresh = BINARIES.iter().all(|(name, sources)| {
        let path = profile_dir.join(name);
        path.is_file() && !stale(&path, sources)
    });
    if fresh {
        return binary;
    }
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory lives in the target directory");
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a profile directory name");
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(&cargo);
    build
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "arbiter-supervisor",
            "-p",
            "arbiter-video",
            "--bins",
            "--target-dir",
        ])
        .arg(target_dir);
    match profile {
        // `dev` and `test` both build into `debug`.
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let output = build
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build the binaries: {e}"));
    assert!(
        output.status.success(),
        "`cargo build -p arbiter-supervisor -p arbiter-video --bins` failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for (name, _) in BINARIES {
        let path = profile_dir.join(name);
        assert!(
            path.is_file(),
            "cargo built {name} but {} does not exist",
            path.display()
        );
    }
    binary
}

/// True when a source the binary is built from (a directory's files, or a file) changed
/// after the binary was linked.
fn stale(binary: &Path, sources: &[&str]) -> bool {
    let Ok(built) = binary.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let mut newest = SystemTime::UNIX_EPOCH;
    for source in sources {
        let path = root.join(source);
        newest = newest.max(if path.is_dir() {
            newest_in(&path)
        } else {
            path.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        });
    }
    newest > built
}

fn newest_in(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            newest = newest.max(newest_in(&path));
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(modified);
        }
    }
    newest
}

/// A command for the binary with an environment that cannot leak into the test: no
/// `ARBITER_*` settings from the caller's shell, no systemd journal or notify socket.
pub fn command() -> Command {
    let mut command = Command::new(binary());
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

/// Runs the binary to completion (for `check-config` and the like), with a time limit.
pub fn run_to_end(mut command: Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = command
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn arbiter-supervisor");
    let status = wait_for_exit(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{command:?} did not finish within {limit:?}; stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Polls `child` until it exits or `limit` passes (blocking; for sync contexts).
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `child` until it exits or `limit` passes, yielding to the runtime meanwhile so the
/// test's own gRPC connections keep being served.
pub async fn wait_for_exit_async(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `signal` to `child`, ignoring a child that is already gone.
pub fn signal(child: &Child, signal: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
}

/// A TCP port that was free a moment ago (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// How to start a supervisor. Defaults: GPUs of 10GiB and 4GiB, no reserve, a 100ms
/// sample interval, TCP on a free port, an empty config file (so /etc is never read).
pub struct Builder {
    gpus: Option<String>,
    reserve: String,
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
        self.gpus = Some(gpus.into());
        self
    }

    /// Starts without --simulated-gpus (only useful with a config that names some).
    pub fn no_gpu_flag(mut self) -> Builder {
        self.gpus = None;
        self
    }

    pub fn reserve(mut self, reserve: &str) -> Builder {
        self.reserve = reserve.into();
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
            .arg("--reserve")
            .arg(&self.reserve)
            .arg("--sample-interval")
            .arg(&self.sample_interval);
        if let Some(gpus) = &self.gpus {
            command.arg("--simulated-gpus").arg(gpus);
        }
        if let Some(port) = port {
            command.arg("--listen").arg(format!("127.0.0.1:{port}"));
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
            gpus: Some("10GiB,4GiB".into()),
            reserve: "0B".into(),
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

    pub fn port(&self) -> u16 {
        self.port.expect("this supervisor was started without TCP")
    }

    pub fn tcp_address(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the supervisor process").id()
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
        let address = Address::parse(&self.tcp_address());
        let channel = within(Duration::from_secs(10), "connecting over TCP", async {
            connect(&address).await
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nsupervisor log:\n{}", self.log()));
        SupervisorClient::new(channel)
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
        let address = Address::parse(&self.tcp_address());
        let channel = within(Duration::from_secs(10), "connecting over TCP", async {
            connect(&address).await
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nsupervisor log:\n{}", self.log()));
        WorkerClient::new(channel)
    }

    async fn unix_channel(&self) -> Channel {
        let address = Address::unix(&self.socket);
        within(Duration::from_secs(10), "connecting to the socket", async {
            connect(&address).await
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\nsupervisor log:\n{}", self.log()))
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

    /// Starts `arbiter-supervisor hold …` against this supervisor as a separate process.
    pub fn spawn_hold(&self, name: &str, args: &[&str]) -> ClientProcess {
        let mut all = vec!["hold", "--holder", name];
        all.extend_from_slice(args);
        ClientProcess::spawn(
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

/// A client process of the binary (such as `hold`), SIGKILLed when dropped.
pub struct ClientProcess {
    child: Option<Child>,
    log: PathBuf,
    pid: u32,
}

impl ClientProcess {
    fn spawn(mut command: Command, log: PathBuf) -> ClientProcess {
        let file = File::create(&log).expect("create the client log");
        let child = command
            .stdout(file.try_clone().expect("clone the client log"))
            .stderr(file)
            .spawn()
            .expect("spawn an arbiter-supervisor client");
        let pid = child.id();
        ClientProcess {
            child: Some(child),
            log,
            pid,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits (at most `limit`) for it to exit.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the client process");
        match wait_for_exit_async(child, limit).await {
            Some(status) => status,
            None => panic!(
                "client process {} did not exit within {limit:?}; output:\n{}",
                self.pid,
                self.output()
            ),
        }
    }

    /// SIGKILL, then reap it so its pid is really gone.
    pub fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the client process");
        let _ = child.kill();
        child.wait().expect("reap the client process")
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() || std::env::var_os("ARBITER_TEST_LOGS").is_some() {
            eprintln!(
                "----- client process {} output -----\n{}----- end of output -----",
                self.pid,
                self.output()
            );
        }
    }
}

/// A live child process (`sleep 60`) that stands in for a foreign GPU user, killed and
/// reaped when dropped.
pub struct Sleeper(Child);

impl Sleeper {
    pub fn spawn() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills and reaps it: a zombie would still have a /proc entry.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Writes a simulated process-table record (`<dir>/<gpu>/<pid>` holding `bytes`).
pub fn record_usage(simulated_dir: &Path, gpu: u32, pid: u32, bytes: u64) {
    std::fs::create_dir_all(simulated_dir.join(gpu.to_string()))
        .expect("create the simulated GPU directory");
    arbiter::simulated::record(simulated_dir, gpu, pid, bytes).expect("write the usage record");
}

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} {what}"),
    }
}

/// Polls `probe` every 50ms until it returns Some, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout(limit, probe()).await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lease request with the given holder, GPU and size; everything else default.
pub fn ask(holder: &str, gpu: &str, bytes: u64) -> pb::LeaseRequest {
    pb::LeaseRequest {
        holder: holder.into(),
        gpu: gpu.into(),
        bytes,
        ..Default::default()
    }
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).expect("a representable duration")
}

/// Waits (up to 10 s) until `holder` holds a lease, and returns it.
pub async fn lease_held_by(client: &Client, holder: &str) -> pb::Lease {
    eventually(
        Duration::from_secs(10),
        &format!("a lease held by {holder}"),
        || {
            let client = client.clone();
            async move {
                leases(&client)
                    .await
                    .into_iter()
                    .find(|l| l.holder == holder)
            }
        },
    )
    .await
}

pub async fn leases(client: &Client) -> Vec<pb::Lease> {
    client
        .clone()
        .list_leases(pb::ListLeasesRequest::default())
        .await
        .expect("ListLeases")
        .into_inner()
        .leases
}

pub async fn status(client: &Client) -> pb::SupervisorStatus {
    client
        .clone()
        .get_status(pb::GetStatusRequest {})
        .await
        .expect("GetStatus")
        .into_inner()
}

pub async fn gpu_status(client: &Client, index: u32) -> pb::GpuStatus {
    status(client)
        .await
        .gpus
        .into_iter()
        .find(|g| g.index == index)
        .unwrap_or_else(|| panic!("GetStatus lists no GPU {index}"))
}

/// The next update on a Hold stream, failing the test if none comes within 10s.
pub async fn next_update(
    stream: &mut tonic::Streaming<pb::LeaseUpdate>,
) -> Result<Option<pb::lease_update::Update>, tonic::Status> {
    within(
        Duration::from_secs(10),
        "waiting for a lease update",
        async { stream.message().await.map(|m| m.and_then(|m| m.update)) },
    )
    .await
}

/// Asserts a refusal's code, and that its message is specific: it contains each of `needles`.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needles: &[&str],
) -> tonic::Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?}, got a success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "wrong code; message: {}",
        status.message()
    );
    assert!(
        !status.message().trim().is_empty(),
        "{code:?} with an empty message"
    );
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "the {code:?} message should mention {needle:?}: {}",
            status.message()
        );
    }
    status
}
