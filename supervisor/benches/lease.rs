//! Lease acquire+release over the Unix socket, against a no-op unary call (Ping) on the
//! same server in the same run.
//!
//! Starts the real `arbiter-supervisor` binary on one simulated 80 GiB GPU, then for each
//! client count (1 and 64 by default) runs two phases with the same clients:
//! - the limit: every client calls `Ping` twice in a row (two round trips, like the lease);
//! - the lease: every client calls unary `Acquire{64 MiB, ttl 30s}` then `Release`.
//!
//! Each client is its own tokio task with its own connection (its own HTTP/2 connection on
//! the socket), as separate holder processes would have. The measured time of each phase is
//! cut into slices that alternate with the other phase, so that whatever else the machine
//! is doing weighs on the limit and the lease alike; a pair counts when it completes inside
//! a measured slice. Alongside the latencies the bench reports the CPU time the server and
//! the bench used per pair, and how many CPUs' worth other processes took meanwhile.
//!
//! `cargo bench -p arbiter-supervisor --bench lease [-- --seconds 3 --warmup 0.5
//! --rounds 6 --clients 1,64 --out FILE --server PATH --tls]`; unknown arguments (cargo's
//! `--bench`) are ignored. `--server` measures another build of the supervisor. `--tls`
//! runs both phases over TCP with TLS instead, each client presenting its own client
//! certificate (one CA made for the run), so the limit is a no-op call over TLS too.
//!
//! The server runs with quotas raised out of the way ([quota] rate and leases far above
//! what the bench reaches): their checks run on every call, but refuse none.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as pb;
use pb::supervisor_client::SupervisorClient;
use tonic::transport::Channel;

const LEASE_BYTES: u64 = 64 << 20;
const LEASE_TTL: Duration = Duration::from_secs(30);

struct Options {
    seconds: f64,
    warmup: f64,
    rounds: u32,
    clients: Vec<usize>,
    out: Option<PathBuf>,
    /// Another supervisor binary to measure (a scratch build, say).
    server: Option<PathBuf>,
    /// Over TCP with TLS and client certificates instead of the Unix socket.
    tls: bool,
}

impl Options {
    fn parse() -> Options {
        let mut options = Options {
            seconds: 3.0,
            warmup: 0.5,
            rounds: 6,
            clients: vec![1, 64],
            out: None,
            server: None,
            tls: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .unwrap_or_else(|| panic!("{name} needs a value"))
            };
            match name.as_str() {
                "--seconds" => options.seconds = value("--seconds").parse().expect("--seconds N"),
                "--warmup" => options.warmup = value("--warmup").parse().expect("--warmup N"),
                "--rounds" => options.rounds = value("--rounds").parse().expect("--rounds N"),
                "--clients" => {
                    options.clients = value("--clients")
                        .split(',')
                        .map(|n| n.trim().parse().expect("--clients 1,64"))
                        .collect()
                }
                "--out" => options.out = Some(PathBuf::from(value("--out"))),
                "--server" => options.server = Some(PathBuf::from(value("--server"))),
                "--tls" => options.tls = true,
                _ => {} // cargo bench passes --bench; ignore whatever else comes
            }
        }
        options
    }
}

/// The supervisor under test, killed (SIGTERM, then SIGKILL) when dropped.
struct Server {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    /// With `--tls`: the CA and the TCP port.
    tls: Option<(arbiter_test_kit::tls::Pki, u16)>,
    _dir: tempfile::TempDir,
}

/// Quotas out of the bench's way (its one identity makes thousands of calls a second);
/// with `--tls`, TLS on a loopback port and the bench's certificates as holders.
fn config(dir: &Path, tls: Option<(&arbiter_test_kit::tls::Pki, u16)>) -> PathBuf {
    let mut text =
        String::from("[quota]\nrate = 1e9\nburst = 1e9\nleases = 100000\nwaiting = 100000\n");
    if let Some((pki, port)) = tls {
        let server = pki.server();
        text.push_str(&format!(
            "[auth]\nholders = [\"cert:bench\"]\n[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
            pki.server_config(&server)
        ));
    }
    let path = dir.join("supervisor.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

impl Server {
    fn start(binary: &Path, tls: bool) -> Server {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let socket = dir.path().join("s.sock");
        let log = dir.path().join("supervisor.log");
        let tls = tls.then(|| {
            (
                arbiter_test_kit::tls::Pki::new(&dir.path().join("pki")),
                arbiter_test_kit::supervisor::free_port(),
            )
        });
        let config = config(dir.path(), tls.as_ref().map(|(pki, port)| (pki, *port)));
        let child = Command::new(binary)
            .arg("--config")
            .arg(&config)
            .args(["--simulated-gpus", "80GiB", "--simulated-dir"])
            .arg(dir.path().join("gpus"))
            .arg("--socket")
            .arg(&socket)
            .args(["--log-format", "human"])
            .env("RUST_LOG", "warn")
            .env_remove("ARBITER_CONFIG")
            .env_remove("ARBITER_LISTEN")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Server {
            child,
            socket,
            log,
            tls,
            _dir: dir,
        }
    }

    /// A client of its own connection: over the socket, or TLS with the bench's certificate.
    async fn client(&self) -> SupervisorClient<Channel> {
        match &self.tls {
            None => client(&Address::unix(&self.socket)).await,
            Some((pki, port)) => {
                let cert = pki.client("bench");
                SupervisorClient::new(
                    pki.channel(*port, Some(&cert))
                        .await
                        .expect("a TLS connection to the supervisor"),
                )
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let address = Address::unix(&self.socket);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("arbiter-supervisor exited ({status}); log:\n{}", self.log());
            }
            if self.socket.exists() {
                let ping = async {
                    let mut client = SupervisorClient::new(connect(&address).await.ok()?);
                    client.ping(pb::PingRequest {}).await.ok()
                };
                if let Ok(Some(_)) = tokio::time::timeout(Duration::from_secs(2), ping).await {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "arbiter-supervisor did not answer Ping; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The supervisor binary: the one cargo built for this bench, else the one beside the
/// bench executable (target/release/deps/lease-… → target/release/arbiter-supervisor),
/// else built now (only when the bench was copied away from its target directory: inside
/// `cargo bench` the first path always exists, and cargo's build lock is held).
fn supervisor_binary() -> PathBuf {
    let cargo_built = PathBuf::from(env!("CARGO_BIN_EXE_arbiter-supervisor"));
    if cargo_built.exists() {
        return cargo_built;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let beside = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join("arbiter-supervisor"))
        .expect("a target directory");
    if beside.exists() {
        return beside;
    }
    eprintln!("building arbiter-supervisor (release)…");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "arbiter-supervisor", "--bins"])
        .status()
        .expect("cargo");
    assert!(status.success(), "cargo build failed");
    assert!(beside.exists(), "no {} after building", beside.display());
    beside
}

/// User+system CPU time of a process so far (all its threads).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis(ticks * 10)
}

/// Busy CPU time of the whole machine so far (every CPU, every process).
fn machine_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    // cpu  user nice system idle iowait irq softirq steal …: all but idle and iowait.
    let ticks: u64 = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ping,
    Lease,
}

/// What one phase measured, in nanoseconds.
struct Sample {
    first: Vec<u64>,
    second: Vec<u64>,
    pair: Vec<u64>,
    window: Duration,
    server_cpu: Duration,
    bench_cpu: Duration,
    /// Busy CPU of everything else on the machine during the window.
    other_cpu: Duration,
}

impl Sample {
    fn pairs_per_second(&self) -> f64 {
        self.pair.len() as f64 / self.window.as_secs_f64()
    }

    fn cpu_per_pair(&self, cpu: Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / self.pair.len().max(1) as f64
    }

    /// CPUs' worth of time other processes took during the window.
    fn other_cpus(&self) -> f64 {
        self.other_cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    fn empty() -> Sample {
        Sample {
            first: Vec::new(),
            second: Vec::new(),
            pair: Vec::new(),
            window: Duration::ZERO,
            server_cpu: Duration::ZERO,
            bench_cpu: Duration::ZERO,
            other_cpu: Duration::ZERO,
        }
    }

    fn add(&mut self, other: Sample) {
        self.first.extend(other.first);
        self.second.extend(other.second);
        self.pair.extend(other.pair);
        self.window += other.window;
        self.server_cpu += other.server_cpu;
        self.bench_cpu += other.bench_cpu;
        self.other_cpu += other.other_cpu;
    }

    fn sort(&mut self) {
        self.first.sort_unstable();
        self.second.sort_unstable();
        self.pair.sort_unstable();
    }
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0 // µs
}

async fn client(address: &Address) -> SupervisorClient<Channel> {
    SupervisorClient::new(
        connect(address)
            .await
            .expect("a connection to the supervisor"),
    )
}

/// Runs `clients` loops of `phase` for `warmup` + `seconds`, one connection each.
async fn run_phase(
    server: &Server,
    clients: &[SupervisorClient<Channel>],
    phase: Phase,
    warmup: Duration,
    seconds: Duration,
) -> Sample {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + seconds;
    // CPU is read at the edges of the window by a timer task, not by the clients.
    let pid = server.pid();
    let cpu = tokio::spawn(async move {
        tokio::time::sleep_until(measure_from.into()).await;
        let before = (cpu_time(pid), cpu_time(std::process::id()), machine_busy());
        tokio::time::sleep_until(end.into()).await;
        let after = (cpu_time(pid), cpu_time(std::process::id()), machine_busy());
        let (server, bench) = (after.0 - before.0, after.1 - before.1);
        let other = (after.2 - before.2).saturating_sub(server + bench);
        (server, bench, other)
    });
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let mut client = client.clone();
            let holder = format!("bench client {i}");
            tokio::spawn(async move {
                let mut pairs = Vec::new();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let t1 = match phase {
                        Phase::Ping => {
                            client.ping(pb::PingRequest {}).await.expect("Ping");
                            let t1 = Instant::now();
                            client.ping(pb::PingRequest {}).await.expect("Ping");
                            t1
                        }
                        Phase::Lease => {
                            let lease = client
                                .acquire(pb::LeaseRequest {
                                    holder: holder.clone(),
                                    bytes: LEASE_BYTES,
                                    ttl: Some(LEASE_TTL.try_into().unwrap()),
                                    ..Default::default()
                                })
                                .await
                                .expect("Acquire")
                                .into_inner();
                            let t1 = Instant::now();
                            client
                                .release(pb::ReleaseRequest {
                                    lease_id: lease.lease_id,
                                })
                                .await
                                .expect("Release");
                            t1
                        }
                    };
                    let t2 = Instant::now();
                    if t2 >= measure_from && t2 < end {
                        pairs.push((nanos(t1 - t0), nanos(t2 - t1)));
                    }
                }
                pairs
            })
        })
        .collect();
    let mut sample = Sample::empty();
    sample.window = seconds;
    for task in tasks {
        let pairs = task
            .await
            .unwrap_or_else(|e| panic!("a client failed: {e}\nsupervisor log:\n{}", server.log()));
        for (a, b) in pairs {
            sample.first.push(a);
            sample.second.push(b);
            sample.pair.push(a + b);
        }
    }
    (sample.server_cpu, sample.bench_cpu, sample.other_cpu) = cpu.await.unwrap();
    sample
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
        .map_or("unknown CPU".to_string(), |m| m.trim().to_string());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs (nproc), {model}, Linux {}", kernel.trim())
}

struct Row {
    clients: usize,
    ping: Sample,
    lease: Sample,
}

fn report(rows: &[Row], options: &Options, binary: &Path) -> String {
    let mut out = String::new();
    let us = |v: f64| format!("{v:.0}");
    out.push_str(&format!(
        "Machine: {}; client and server on it together.\n",
        machine()
    ));
    out.push_str(&format!(
        "Server: `{}` (release), one simulated 80 GiB GPU, RUST_LOG=warn. Clients: one tokio task \
         and one {} connection each, in one bench process (tokio multi-thread runtime). \
         Each phase: {} s warm-up, then {} s measured in {} slices alternating with the other phase. Lease: unary Acquire 64 MiB, ttl 30 s, then Release.\n\n",
        binary.file_name().map_or("arbiter-supervisor".into(), |n| n.to_string_lossy()),
        if options.tls {
            "TCP + TLS 1.3 (client certificate)"
        } else {
            "Unix-socket"
        },
        options.warmup,
        options.seconds,
        options.rounds
    ));
    out.push_str(
        "| clients | calls | 1st RPC p50 / p99 (µs) | 2nd RPC p50 / p99 (µs) | pair p50 (µs) | pair p99 (µs) | pairs/s | server CPU µs/pair | bench CPU µs/pair | other processes (CPUs) |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        for (name, s) in [
            ("Ping + Ping (limit)", &row.ping),
            ("Acquire + Release", &row.lease),
        ] {
            out.push_str(&format!(
                "| {} | {} | {} / {} | {} / {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.2} |\n",
                row.clients,
                name,
                us(quantile(&s.first, 0.5)),
                us(quantile(&s.first, 0.99)),
                us(quantile(&s.second, 0.5)),
                us(quantile(&s.second, 0.99)),
                us(quantile(&s.pair, 0.5)),
                us(quantile(&s.pair, 0.99)),
                s.pairs_per_second(),
                s.cpu_per_pair(s.server_cpu),
                s.cpu_per_pair(s.bench_cpu),
                s.other_cpus(),
            ));
        }
    }
    out.push_str(
        "\n| clients | lease pair ÷ ping pair, p50 (aim ≤ 2) | p99 | leases/s (aim ≥ 10,000 at 64) | leases/s ÷ ping pairs/s | server CPU per lease ÷ per ping pair |\n\
         |---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (p, l) = (&row.ping, &row.lease);
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} |\n",
            row.clients,
            quantile(&l.pair, 0.5) / quantile(&p.pair, 0.5),
            quantile(&l.pair, 0.99) / quantile(&p.pair, 0.99),
            l.pairs_per_second(),
            l.pairs_per_second() / p.pairs_per_second(),
            l.cpu_per_pair(l.server_cpu) / p.cpu_per_pair(p.server_cpu),
        ));
    }
    out
}

fn main() {
    let options = Options::parse();
    let binary = options.server.clone().unwrap_or_else(supervisor_binary);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let rows = runtime.block_on(async {
        let mut server = Server::start(&binary, options.tls);
        server.wait_ready().await;
        let warmup = Duration::from_secs_f64(options.warmup);
        let seconds = Duration::from_secs_f64(options.seconds);
        let mut rows = Vec::new();
        for &n in &options.clients {
            let mut clients = Vec::with_capacity(n);
            for _ in 0..n {
                clients.push(server.client().await);
            }
            // Short slices, alternating, so that whatever else the machine does weighs on
            // both phases alike; the first slice of each warms up longer.
            let slice = seconds / options.rounds.max(1);
            let (mut ping, mut lease) = (Sample::empty(), Sample::empty());
            for round in 0..options.rounds.max(1) {
                let settle = if round == 0 {
                    warmup
                } else {
                    Duration::from_millis(100)
                };
                ping.add(run_phase(&server, &clients, Phase::Ping, settle, slice).await);
                lease.add(run_phase(&server, &clients, Phase::Lease, settle, slice).await);
            }
            ping.sort();
            lease.sort();
            eprintln!(
                "{n} client(s): {:.0} ping pairs/s, {:.0} leases/s; other processes took {:.2} / {:.2} CPUs",
                ping.pairs_per_second(),
                lease.pairs_per_second(),
                ping.other_cpus(),
                lease.other_cpus(),
            );
            rows.push(Row {
                clients: n,
                ping,
                lease,
            });
        }
        let log = server.log();
        if !log.trim().is_empty() {
            eprintln!("supervisor log (warnings and errors):\n{log}");
        }
        rows
    });
    let table = report(&rows, &options, &binary);
    println!("{table}");
    if let Some(path) = &options.out {
        let mut file = std::fs::File::create(path)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        file.write_all(table.as_bytes()).expect("writing the table");
    }
}
