//! Time to first audio and real-time factor of a voice through the real `arbiter-tts serve`
//! binary over its Unix socket, next to a no-op call (grpc.health Check) on the same server
//! in the same run.
//!
//! `cargo bench -p arbiter-tts --bench speech [-- OPTIONS]` measures the eSpeak NG voice;
//! with `--voice-dir DIR` the server loads that TorchScript voice (on CUDA device 0 when
//! libtorch sees one) and the bench speaks with it. Run `-- --help` for the options. The
//! binary also runs away from cargo (`scripts/ship-tts.sh` ships it as `tts-speech-bench`):
//! then `--server PATH` (or `ARBITER_TTS_BIN`) names the `arbiter-tts` to start.
//!
//! A voice on the GPU is held under a lease from the supervisor, as in production: with
//! `--supervisor ADDR` the server asks that supervisor for it and the bench waits until the
//! server's `arbiter.tts.v1.Tts` health says SERVING (the lease is granted) before it
//! measures. Without a supervisor a GPU voice would run unleased (its health NOT_SERVING),
//! which the bench refuses unless `--allow-unleased` is given.

use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1 as pb;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TEXT: &str = "Welcome back. Your video is rendering on the shared card and will be ready in about a minute. \
                    Meanwhile, ask me anything.";

/// The service name the server's lease drives in health.
const TTS_SERVICE: &str = "arbiter.tts.v1.Tts";

const USAGE: &str = "\
speech bench: time to first audio and real-time factor of arbiter-tts, next to a no-op call

OPTIONS
  --rounds N            measured rounds (default 30)
  --warmup N            rounds run first and not counted (default 3)
  --interval MS         a pause between rounds, so the rounds spread over a span of time
                        (as a user speaking now and then, beside other GPU work; default 0)
  --server PATH         the arbiter-tts binary (default: $ARBITER_TTS_BIN, else the one cargo built)
  --voice-dir DIR       a TorchScript voice directory for the server (repeatable)
  --voice NAME          the voice to speak with (default: the first TorchScript voice when
                        --voice-dir is given, else the service's default eSpeak NG voice)
  --supervisor ADDR     the supervisor the server asks for its GPU lease (socket or host:port)
  --lease-bytes SIZE    passed to the server (such as 2GiB) instead of its own measure
  --lease-timeout SECS  how long to wait for the lease before giving up (default 60)
  --allow-unleased      measure a voice that wants a lease without one (no supervisor)
  --require-gpu         fail unless the voice spoken with is on the GPU (libtorch saw CUDA)
  --text TEXT           the text to speak (default: a 3-sentence, 121-character text)
  --label TEXT          a name for this run in the report and the JSON
  --json PATH           also write the results (and every sample) as JSON to PATH
  --server-log PATH     the server's log (RUST_LOG=info) to PATH instead of warnings on stderr
";

struct Options {
    rounds: usize,
    warmup: usize,
    interval: Duration,
    server: PathBuf,
    voice_dirs: Vec<PathBuf>,
    voice: Option<String>,
    supervisor: Option<String>,
    lease_bytes: Option<String>,
    lease_timeout: Duration,
    allow_unleased: bool,
    require_gpu: bool,
    text: String,
    label: Option<String>,
    json: Option<PathBuf>,
    server_log: Option<PathBuf>,
}

fn parse() -> Result<Options, String> {
    let mut o = Options {
        rounds: 30,
        warmup: 3,
        interval: Duration::ZERO,
        server: std::env::var_os("ARBITER_TTS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_arbiter-tts-server"))),
        voice_dirs: Vec::new(),
        voice: None,
        supervisor: None,
        lease_bytes: None,
        lease_timeout: Duration::from_secs(60),
        allow_unleased: false,
        require_gpu: false,
        text: TEXT.into(),
        label: None,
        json: None,
        server_log: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{arg} needs a value (see --help)"))
        };
        let number = |v: String| {
            v.parse::<usize>()
                .map_err(|_| format!("{arg} takes a whole number, not {v:?}"))
        };
        match arg.as_str() {
            // cargo bench passes --bench to harness-less benches.
            "--bench" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            "--rounds" => o.rounds = number(value()?)?.max(1),
            "--warmup" => o.warmup = number(value()?)?,
            "--interval" => o.interval = Duration::from_millis(number(value()?)? as u64),
            "--server" => o.server = value()?.into(),
            "--voice-dir" => o.voice_dirs.push(value()?.into()),
            "--voice" => o.voice = Some(value()?),
            "--supervisor" => o.supervisor = Some(value()?),
            "--lease-bytes" => o.lease_bytes = Some(value()?),
            "--lease-timeout" => o.lease_timeout = Duration::from_secs(number(value()?)? as u64),
            "--allow-unleased" => o.allow_unleased = true,
            "--require-gpu" => o.require_gpu = true,
            "--text" => o.text = value()?,
            "--label" => o.label = Some(value()?),
            "--json" => o.json = Some(value()?.into()),
            "--server-log" => o.server_log = Some(value()?.into()),
            other if other.starts_with('-') => {
                return Err(format!("unknown option {other} (see --help)"));
            }
            // A bench-name filter from `cargo bench speech`: nothing to filter here.
            _ => {}
        }
    }
    if o.text.trim().is_empty() {
        return Err("--text is empty".into());
    }
    Ok(o)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile_f(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Kills the server when the bench ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so the server gives its lease back and removes its socket.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One synthesis: time to the first chunk, to the end, and the audio's length.
struct Utterance {
    first: Duration,
    whole: Duration,
    samples: usize,
    sample_rate: u32,
    chunks: usize,
}

async fn speak(
    tts: &mut pb::tts_client::TtsClient<tonic::transport::Channel>,
    text: &str,
    voice: &str,
) -> Result<Utterance, String> {
    let start = Instant::now();
    let mut stream = tts
        .synthesize(pb::SynthesizeRequest {
            text: text.into(),
            voice: voice.into(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("Synthesize: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let mut first = None;
    let (mut samples, mut sample_rate, mut chunks) = (0usize, 1u32, 0usize);
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|s| format!("a chunk: {:?}: {}", s.code(), s.message()))?
    {
        first.get_or_insert_with(|| start.elapsed());
        samples += chunk.audio.len() / 2;
        sample_rate = chunk.sample_rate.max(1);
        chunks += 1;
    }
    Ok(Utterance {
        first: first.ok_or("the stream ended without a chunk")?,
        whole: start.elapsed(),
        samples,
        sample_rate,
        chunks,
    })
}

async fn tts_status(health: &mut HealthClient<tonic::transport::Channel>) -> Option<ServingStatus> {
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: TTS_SERVICE.into(),
        })
        .await
        .ok()
        .and_then(|r| ServingStatus::try_from(r.into_inner().status).ok())
}

/// The lease the supervisor lists for the server's process, if any.
async fn server_lease(
    client: &mut spb::supervisor_client::SupervisorClient<tonic::transport::Channel>,
    pid: u32,
) -> Result<Option<spb::Lease>, String> {
    let holder = format!("arbiter-tts (pid {pid})");
    Ok(client
        .list_leases(spb::ListLeasesRequest::default())
        .await
        .map_err(|s| format!("ListLeases: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .leases
        .into_iter()
        .find(|l| l.holder == holder))
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("speech bench: {error}");
            return ExitCode::from(2);
        }
    };
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("speech bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(o: Options) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| format!("a temp dir: {e}"))?;
    let socket = dir.path().join("tts.sock");
    let mut command = Command::new(&o.server);
    command.args(["serve", "--socket"]).arg(&socket);
    for voice_dir in &o.voice_dirs {
        command.arg("--voice-dir").arg(voice_dir);
    }
    match &o.supervisor {
        Some(supervisor) => {
            command.args(["--supervisor", supervisor]);
        }
        // Somewhere nothing listens, so a server that wants a lease never finds a real
        // supervisor by accident (the default socket may have one).
        None => {
            command
                .arg("--supervisor")
                .arg(dir.path().join("no-supervisor.sock"));
        }
    }
    if let Some(bytes) = &o.lease_bytes {
        command.args(["--lease-bytes", bytes]);
    }
    command
        .env_remove("ARBITER_SUPERVISOR")
        .stdin(Stdio::null());
    match &o.server_log {
        Some(path) => {
            let log = std::fs::File::create(path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            command
                .env("RUST_LOG", "info")
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
        }
        None => {
            command.env("RUST_LOG", "warn");
        }
    }
    let spawned = Instant::now();
    let mut server = Server(
        command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", o.server.display()))?,
    );

    // Ready: the socket answers health (voices are loaded before the server listens).
    let channel = loop {
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(format!("arbiter-tts exited before listening: {status}"));
        }
        if socket.exists()
            && let Ok(channel) = connect(&Address::unix(&socket)).await
        {
            break channel;
        }
        if spawned.elapsed() > Duration::from_secs(120) {
            return Err("arbiter-tts did not listen within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut health = HealthClient::new(channel.clone());
    let mut tts = pb::tts_client::TtsClient::new(channel);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    while health.check(check()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = spawned.elapsed();

    let voices = tts
        .list_voices(pb::ListVoicesRequest {})
        .await
        .map_err(|s| format!("ListVoices: {:?}: {}", s.code(), s.message()))?
        .into_inner()
        .voices;
    let voice = match &o.voice {
        Some(name) => voices
            .iter()
            .find(|v| &v.name == name)
            .cloned()
            .ok_or_else(|| format!("the server offers no voice named {name:?}"))?,
        None if !o.voice_dirs.is_empty() => voices
            .iter()
            .find(|v| v.backend == "torchscript")
            .cloned()
            .ok_or("the server lists no TorchScript voice")?,
        // The service's default (eSpeak NG's en-us); the request names none.
        None => pb::Voice {
            name: String::new(),
            language: "en-us".into(),
            sample_rate: voices
                .iter()
                .find(|v| v.backend == "espeak-ng")
                .map_or(0, |v| v.sample_rate),
            backend: "espeak-ng".into(),
            on_gpu: false,
            residency: None,
        },
    };

    if o.require_gpu && !voice.on_gpu {
        return Err(format!(
            "--require-gpu: the voice {:?} ({}) is not on the GPU (see `arbiter-tts info` and --server-log)",
            voice.name, voice.backend
        ));
    }

    // The lease: the server holds one when a voice is on the GPU (or --lease-bytes is
    // given), and a GPU voice is measured only under it. Granted means the supervisor lists
    // a lease for the server's pid and the server's Tts health says SERVING.
    let pid = server.0.id();
    let wants_lease = voice.on_gpu || o.lease_bytes.is_some();
    let mut lease = None;
    let mut lease_wait = Duration::ZERO;
    let mut supervisor = None;
    if wants_lease {
        match &o.supervisor {
            Some(address) => {
                let channel = connect(&Address::parse(address))
                    .await
                    .map_err(|e| format!("cannot reach the supervisor at {address}: {e}"))?;
                let mut client = spb::supervisor_client::SupervisorClient::new(channel);
                let waiting = Instant::now();
                loop {
                    let held = server_lease(&mut client, pid).await?;
                    let status = tts_status(&mut health).await;
                    if held.is_some() && status == Some(ServingStatus::Serving) {
                        lease = held;
                        break;
                    }
                    if waiting.elapsed() > o.lease_timeout {
                        return Err(format!(
                            "no lease for arbiter-tts (pid {pid}) after {} s (its {TTS_SERVICE} health: {status:?}; see the supervisor's log and --server-log)",
                            o.lease_timeout.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                lease_wait = waiting.elapsed();
                supervisor = Some(client);
            }
            None if o.allow_unleased => {}
            None => {
                return Err(format!(
                    "the server wants a GPU lease (voice {:?} on the GPU: {}, --lease-bytes: {}) and no supervisor was given: give --supervisor ADDR, or --allow-unleased",
                    voice.name,
                    voice.on_gpu,
                    o.lease_bytes.as_deref().unwrap_or("none")
                ));
            }
        }
    }
    // Rounds after which the Tts health was not SERVING (the lease lost meanwhile).
    let mut unleased_rounds = 0usize;

    let (mut noop, mut first, mut whole, mut rtf) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut warm = Vec::new();
    // When each measured round started (Unix ms), to line the samples up with other work.
    let mut round_starts = Vec::new();
    let mut last = None;
    for round in 0..o.rounds + o.warmup {
        if round > 0 && !o.interval.is_zero() {
            tokio::time::sleep(o.interval).await;
        }
        let start = Instant::now();
        let started_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        health
            .check(check())
            .await
            .map_err(|s| format!("health Check: {s}"))?;
        let noop_took = start.elapsed();
        let said = speak(&mut tts, &o.text, &voice.name).await?;
        if round < o.warmup {
            warm.push((said.first, said.whole));
        } else {
            round_starts.push(started_unix_ms);
            noop.push(noop_took);
            first.push(said.first);
            whole.push(said.whole);
            rtf.push(
                said.whole.as_secs_f64() * f64::from(said.sample_rate) / said.samples.max(1) as f64,
            );
        }
        last = Some(said);
        if lease.is_some() && tts_status(&mut health).await != Some(ServingStatus::Serving) {
            unleased_rounds += 1;
        }
    }
    let end_status = tts_status(&mut health).await;
    // The lease as the supervisor sees it at the end: its bytes and what NVML says the
    // server's process uses on the GPU now.
    let lease_end = match (&mut supervisor, &lease) {
        (Some(client), Some(_)) => server_lease(client, pid).await?,
        _ => None,
    };
    let leased = lease.is_some() && lease_end.is_some() && unleased_rounds == 0;
    drop(server);
    let last = last.expect("at least one round");
    let audio_seconds = last.samples as f64 / f64::from(last.sample_rate);
    let (raw_noop, raw_first, raw_whole) = (noop.clone(), first.clone(), whole.clone());
    for v in [&mut noop, &mut first, &mut whole] {
        v.sort();
    }
    rtf.sort_by(f64::total_cmp);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let voice_name = if voice.name.is_empty() {
        "(default) en-us".to_string()
    } else {
        voice.name.clone()
    };
    let backend = match voice.backend.as_str() {
        "torchscript" if voice.on_gpu => "TorchScript voice on the GPU",
        "torchscript" => "TorchScript voice on the CPU",
        _ => "eSpeak NG voice",
    };
    let sentences = o
        .text
        .split_inclusive(['.', '!', '?'])
        .filter(|s| !s.trim().is_empty())
        .count();
    let (rounds, warmup) = (o.rounds, o.warmup);
    if let Some(label) = &o.label {
        println!("## {label}");
    }
    println!(
        "arbiter-tts, {backend} `{voice_name}`, Unix socket, {rounds} rounds after {warmup} warm-up; {cpus} CPUs ({cpu})"
    );
    println!(
        "text: {} characters, {} chunks ({sentences} sentences by punctuation), {audio_seconds:.2} s of audio at {} Hz",
        o.text.len(),
        last.chunks,
        last.sample_rate
    );
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    println!(
        "server: ready {:.0} ms after spawn; lease: {}",
        ms(ready),
        match (&lease, &lease_end) {
            (Some(l), Some(end)) if leased => format!(
                "{:.2} GiB on GPU {} held throughout (confirmed {:.0} ms after the server was ready); NVML: the server uses {} on the GPU at the end",
                gib(l.bytes),
                l.gpu_index,
                ms(lease_wait),
                end.used_bytes
                    .map_or("(unknown)".to_string(), |u| format!("{:.2} GiB", gib(u)))
            ),
            (Some(_), _) =>
                format!("lost during the run ({unleased_rounds} rounds ended without it)"),
            (None, _) if wants_lease => "none: RAN UNLEASED (--allow-unleased)".into(),
            (None, _) => "none needed (nothing on the GPU)".into(),
        }
    );
    if let Some(((first_cold, whole_cold), _)) = warm.split_first() {
        println!(
            "first (cold) round: first audio {:.2} ms, whole utterance {:.2} ms",
            ms(*first_cold),
            ms(*whole_cold)
        );
    }
    println!();
    println!("| measure | p50 | p95 | ratio to the no-op p50 |");
    println!("|---|---:|---:|---:|");
    let base = percentile(&noop, 0.5);
    for (name, v) in [
        ("no-op call (health Check)", &noop),
        ("time to first audio", &first),
        ("whole utterance", &whole),
    ] {
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.1} |",
            ms(percentile(v, 0.5)),
            ms(percentile(v, 0.95)),
            ms(percentile(v, 0.5)) / ms(base)
        );
    }
    println!();
    println!(
        "real-time factor (synthesis time / audio time): p50 {:.4}, p95 {:.4}",
        percentile_f(&rtf, 0.5),
        percentile_f(&rtf, 0.95)
    );

    if let Some(path) = &o.json {
        let stats = |v: &[Duration]| {
            json!({
                "p50_ms": ms(percentile(v, 0.5)),
                "p95_ms": ms(percentile(v, 0.95)),
                "min_ms": ms(v[0]),
                "max_ms": ms(v[v.len() - 1]),
                "p50_over_noop_p50": ms(percentile(v, 0.5)) / ms(base),
            })
        };
        let list = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>();
        let report = json!({
            "label": o.label,
            "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "machine": { "cpu": cpu, "cpus": cpus },
            "server": o.server.display().to_string(),
            "voice": {
                "name": voice_name,
                "backend": voice.backend,
                "on_gpu": voice.on_gpu,
                "sample_rate": last.sample_rate,
                "voice_dirs": o.voice_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>(),
            },
            "lease": {
                "supervisor": o.supervisor,
                "wanted": wants_lease,
                "held": leased,
                "unleased_rounds": unleased_rounds,
                "wait_ms": ms(lease_wait),
                "bytes": lease.as_ref().map(|l| l.bytes),
                "gpu_uuid": lease.as_ref().map(|l| l.gpu_uuid.clone()),
                "gpu_index": lease.as_ref().map(|l| l.gpu_index),
                "server_gpu_used_bytes_at_end": lease_end.as_ref().and_then(|l| l.used_bytes),
                "tts_health_at_end": end_status.map(|s| s.as_str_name()),
            },
            "ready_ms": ms(ready),
            "rounds": rounds,
            "warmup": warmup,
            "interval_ms": ms(o.interval),
            "text_chars": o.text.len(),
            "chunks": last.chunks,
            "audio_seconds": audio_seconds,
            "noop": stats(&noop),
            "time_to_first_audio": stats(&first),
            "whole_utterance": stats(&whole),
            "real_time_factor": { "p50": percentile_f(&rtf, 0.5), "p95": percentile_f(&rtf, 0.95) },
            "warmup_rounds_ms": warm.iter().map(|(f, w)| json!({ "first": ms(*f), "whole": ms(*w) })).collect::<Vec<_>>(),
            "samples_ms": {
                "round_started_unix_ms": round_starts,
                "noop": list(&raw_noop),
                "time_to_first_audio": list(&raw_first),
                "whole_utterance": list(&raw_whole),
            },
        });
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if lease.is_some() && !leased {
        return Err(format!(
            "the lease was lost during the run ({unleased_rounds} rounds ended without it; {TTS_SERVICE} health {end_status:?} at the end): the figures above are not all leased"
        ));
    }
    Ok(())
}
