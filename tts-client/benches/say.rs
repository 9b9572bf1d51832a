//! `arbiter-tts say` against `espeak-ng -w`, side by side: what a script pays for one
//! sentence through the running service (a thin client without libtorch) and what it pays
//! for eSpeak NG's own command, which loads its data on every call.
//!
//! `cargo bench -p arbiter-tts-client --bench say [-- OPTIONS]` starts a real
//! `arbiter-tts serve` (the eSpeak NG voice only, no GPU, no supervisor), then alternates
//! the two commands (which goes first swaps every round, so neither always finds the caches
//! warmed by the other) and reports, per command, the median, p90 and mean wall time of a
//! call (spawn to exit), their ratio, and the peak RSS of the process. Each call runs under
//! a copy of this bench started as `--measure`, which times its one child and reads its
//! peak RSS from getrusage(RUSAGE_CHILDREN), so the numbers are the child's alone.
//!
//! The bench (release) needs `arbiter-tts` and `arbiter-tts-server` of the same profile
//! (the test kit builds what is missing) and Debian's `espeak-ng` (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use arbiter_test_kit::binaries;
use arbiter_test_kit::processes::Process;
use nix::sys::resource::{UsageWho, getrusage};

const SENTENCE: &str = "The quick brown fox jumps over the lazy dog.";
/// The service's default eSpeak NG voice and rate, given to espeak-ng too, so both speak
/// the same audio.
const VOICE: &str = "en-us";
const RATE_WPM: &str = "175";

const USAGE: &str = "\
say bench: `arbiter-tts say` through a running service against `espeak-ng -w`

  --calls N      measured calls of each command (default 30)
  --warmup N     unmeasured rounds first (default 3)
  --text TEXT    the sentence (default: \"The quick brown fox jumps over the lazy dog.\")
";

/// How long the service may take to answer its first `say`.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long one measured call may take before the bench gives up on it.
const CALL_LIMIT: Duration = Duration::from_secs(30);

struct Options {
    calls: usize,
    warmup: usize,
    text: String,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        calls: 30,
        warmup: 3,
        text: SENTENCE.into(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--calls" => {
                o.calls = value("--calls")?
                    .parse()
                    .map_err(|e| format!("--calls: {e}"))?
            }
            "--warmup" => {
                o.warmup = value("--warmup")?
                    .parse()
                    .map_err(|e| format!("--warmup: {e}"))?
            }
            "--text" => o.text = value("--text")?,
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if o.calls == 0 {
        return Err("--calls must be at least 1".into());
    }
    Ok(o)
}

/// One measured call: wall time from spawn to exit, and the child's peak RSS.
#[derive(Clone, Copy)]
struct Call {
    wall: Duration,
    peak_rss_kib: u64,
}

/// `--measure PROGRAM ARGS...`: runs the program (output discarded unless it fails), and
/// prints `<wall ns> <peak RSS KiB>` on stdout; exits 1 with its stderr if it failed. Its
/// own process, so that RUSAGE_CHILDREN covers exactly the one child.
fn measure(command: &[String]) -> ExitCode {
    let Some((program, args)) = command.split_first() else {
        eprintln!("--measure needs a program");
        return ExitCode::from(2);
    };
    let start = Instant::now();
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let wall = start.elapsed();
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            eprintln!("cannot run {program}: {e}");
            return ExitCode::from(1);
        }
    };
    if !output.status.success() {
        eprintln!(
            "{program} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        return ExitCode::from(1);
    }
    let peak = match getrusage(UsageWho::RUSAGE_CHILDREN) {
        // Linux reports ru_maxrss in KiB.
        Ok(usage) => usage.max_rss().max(0) as u64,
        Err(e) => {
            eprintln!("getrusage: {e}");
            return ExitCode::from(1);
        }
    };
    println!("{} {peak}", wall.as_nanos());
    ExitCode::SUCCESS
}

/// Runs `command` under `--measure` (this bench again) and reads what it measured.
fn timed(command: &[&std::ffi::OsStr]) -> Result<Call, String> {
    let me = std::env::current_exe().map_err(|e| format!("the bench's own path: {e}"))?;
    let mut child = Command::new(me)
        .arg("--measure")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the measuring copy of the bench: {e}"))?;
    let deadline = Instant::now() + CALL_LIMIT;
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} did not finish within {CALL_LIMIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(ns)), Some(Ok(kib))) => Ok(Call {
            wall: Duration::from_nanos(ns),
            peak_rss_kib: kib,
        }),
        _ => Err(format!("the measuring copy printed {text:?}")),
    }
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// A WAV file with audio after its header (both commands must have spoken).
fn check_wav(path: &Path, who: &str) -> Result<(), String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("{who} wrote no {}: {e}", path.display()))?;
    if bytes.len() <= arbiter::wav::HEADER_LEN || &bytes[..4] != b"RIFF" {
        return Err(format!(
            "{who} wrote {} bytes to {}, not a WAV with audio",
            bytes.len(),
            path.display()
        ));
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Median, p90, mean and max of `values`.
fn summary(values: &[f64]) -> (f64, f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        mean,
        sorted[sorted.len() - 1],
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} CPU(s), {cpu}")
}

fn run(o: &Options) -> Result<(), String> {
    let espeak = on_path("espeak-ng").ok_or(
        "espeak-ng is missing: install Debian's espeak-ng package (scripts/setup.sh does), \
         the command this bench compares against",
    )?;
    let tts = binaries::tts();
    let server = binaries::tts_server();
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let socket = dir.path().join("tts.sock");
    let mut serve = Command::new(&tts);
    serve
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .arg("--supervisor")
        .arg(dir.path().join("no-supervisor.sock"))
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("ARBITER_TTS_SOCKET");
    let mut service = Process::spawn(serve, dir.path().join("serve.log"));

    let say_wav = dir.path().join("say.wav");
    let espeak_wav = dir.path().join("espeak.wav");
    let say: Vec<&std::ffi::OsStr> = vec![
        tts.as_os_str(),
        "say".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "--text".as_ref(),
        o.text.as_ref(),
        "--out".as_ref(),
        say_wav.as_os_str(),
    ];
    let espeak_ng: Vec<&std::ffi::OsStr> = vec![
        espeak.as_os_str(),
        "-v".as_ref(),
        VOICE.as_ref(),
        "-s".as_ref(),
        RATE_WPM.as_ref(),
        "-w".as_ref(),
        espeak_wav.as_os_str(),
        o.text.as_ref(),
    ];

    // Ready: the first `say` that succeeds (the service loads its voice before listening).
    let start = Instant::now();
    loop {
        if let Some(status) = service.try_wait() {
            return Err(format!(
                "arbiter-tts serve exited ({status}) before speaking:\n{}",
                service.output()
            ));
        }
        if socket.exists() && timed(&say).is_ok() {
            break;
        }
        if start.elapsed() > START_LIMIT {
            return Err(format!(
                "arbiter-tts serve did not speak within {START_LIMIT:?}:\n{}",
                service.output()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut says = Vec::with_capacity(o.calls);
    let mut espeaks = Vec::with_capacity(o.calls);
    for round in 0..o.warmup + o.calls {
        let (a, b) = if round % 2 == 0 {
            (timed(&say)?, timed(&espeak_ng)?)
        } else {
            let b = timed(&espeak_ng)?;
            (timed(&say)?, b)
        };
        if round >= o.warmup {
            says.push(a);
            espeaks.push(b);
        }
    }
    check_wav(&say_wav, "arbiter-tts say")?;
    check_wav(&espeak_wav, "espeak-ng")?;
    service.terminate();

    let ms =
        |calls: &[Call]| -> Vec<f64> { calls.iter().map(|c| c.wall.as_secs_f64() * 1e3).collect() };
    let mib = |calls: &[Call]| -> Vec<f64> {
        calls
            .iter()
            .map(|c| c.peak_rss_kib as f64 / 1024.0)
            .collect()
    };
    let (say_med, say_p90, say_mean, _) = summary(&ms(&says));
    let (esp_med, esp_p90, esp_mean, _) = summary(&ms(&espeaks));
    let (say_rss, _, _, say_rss_max) = summary(&mib(&says));
    let (esp_rss, _, _, esp_rss_max) = summary(&mib(&espeaks));
    println!(
        "say bench: {} calls each after {} warm-up rounds, alternating",
        o.calls, o.warmup
    );
    println!("machine:   {}", machine());
    println!("sentence:  {:?} (voice {VOICE}, {RATE_WPM} wpm)", o.text);
    println!("client:    {}", tts.display());
    println!("server:    {}", server.display());
    println!("espeak-ng: {}", espeak.display());
    println!();
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "command", "median ms", "p90 ms", "mean ms", "peak RSS MiB", "max RSS MiB"
    );
    println!(
        "{:<20} {:>10.1} {:>10.1} {:>10.1} {:>14.1} {:>14.1}",
        "arbiter-tts say", say_med, say_p90, say_mean, say_rss, say_rss_max
    );
    println!(
        "{:<20} {:>10.1} {:>10.1} {:>10.1} {:>14.1} {:>14.1}",
        "espeak-ng -w", esp_med, esp_p90, esp_mean, esp_rss, esp_rss_max
    );
    println!();
    println!(
        "ratio say / espeak-ng: median {:.2}x, p90 {:.2}x (goal: within 2x)",
        say_med / esp_med,
        say_p90 / esp_p90
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure") {
        return measure(&args[1..]);
    }
    let outcome = parse(&args).and_then(|o| run(&o));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("say bench: {error}");
            ExitCode::FAILURE
        }
    }
}
