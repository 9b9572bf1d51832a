//! Time to first audio and real-time factor of the eSpeak NG voice through the real
//! `arbiter-tts serve` binary over its Unix socket, next to a no-op call (grpc.health Check)
//! on the same server in the same run.
//!
//! `cargo bench -p arbiter-tts --bench speech [-- --rounds 30]`

use std::time::{Duration, Instant};

use arbiter::endpoint::{Address, connect};
use arbiter::pb::tts::v1 as pb;

const TEXT: &str = "Welcome back. Your video is rendering on the shared card and will be ready in about a minute. \
                    Meanwhile, ask me anything.";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter-tts"))
        .args(["serve", "--socket"])
        .arg(&socket)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("arbiter-tts starts");
    let channel = loop {
        if socket.exists()
            && let Ok(channel) = connect(&Address::unix(&socket)).await
        {
            break channel;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut tts = pb::tts_client::TtsClient::new(channel);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    while health.check(check()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut noop, mut first, mut whole) = (Vec::new(), Vec::new(), Vec::new());
    let mut audio_seconds = 0.0;
    for round in 0..rounds + 3 {
        let start = Instant::now();
        health.check(check()).await.expect("health check");
        let noop_took = start.elapsed();

        let start = Instant::now();
        let mut stream = tts
            .synthesize(pb::SynthesizeRequest {
                text: TEXT.into(),
                ..Default::default()
            })
            .await
            .expect("Synthesize")
            .into_inner();
        let mut first_took = None;
        let mut samples = 0usize;
        let mut rate = 1;
        while let Some(chunk) = stream.message().await.expect("a chunk") {
            first_took.get_or_insert_with(|| start.elapsed());
            samples += chunk.audio.len() / 2;
            rate = chunk.sample_rate;
        }
        if round >= 3 {
            noop.push(noop_took);
            first.push(first_took.expect("at least one chunk"));
            whole.push(start.elapsed());
            audio_seconds = samples as f64 / f64::from(rate);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for v in [&mut noop, &mut first, &mut whole] {
        v.sort();
    }
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "arbiter-tts, eSpeak NG voice, Unix socket, {rounds} rounds; {} CPUs ({cpu})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "text: {} characters, 3 sentences, {audio_seconds:.2} s of audio",
        TEXT.len()
    );
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
        "real-time factor (synthesis time / audio time, p50): {:.4}",
        percentile(&whole, 0.5).as_secs_f64() / audio_seconds
    );
}
