//! The real `arbiter-tts serve` binary over its Unix socket: starting it, waiting until it
//! answers, its health, the generated models it loads (random weights, the real
//! interfaces), and its lip-sync requests.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use arbiter::endpoint::{Address, connect};
use arbiter::pb::tts::v1 as pb;
use pb::tts_client::TtsClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::binaries;
use crate::generated;
use crate::processes::Process;

/// Long enough for anything the service should do "soon" (start, take or give back a
/// lease) on a loaded 2-core machine.
pub const SOON: Duration = Duration::from_secs(20);

/// Health's `SERVING` and `NOT_SERVING`, as the wire carries them.
pub const SERVING: i32 = 1;
pub const NOT_SERVING: i32 = 2;

/// `arbiter-tts serve` on `socket` with `extra` flags; its output goes to a log beside the
/// socket (`<socket>.log`), printed if the test fails.
pub fn serve(socket: &Path, extra: &[&str]) -> Process {
    Process::spawn(serve_command(socket, extra), socket.with_extension("log"))
}

/// The command [`serve`] runs, for a test that adds to it (an environment) before
/// spawning it with [`Process::spawn`].
pub fn serve_command(socket: &Path, extra: &[&str]) -> Command {
    // The thin `arbiter-tts` execs the server from beside it: make sure it is there.
    binaries::tts_server();
    let mut command = Command::new(binaries::tts());
    command.arg("serve").arg("--socket").arg(socket).args(extra);
    command
}

/// The service's health status on `socket`; None while it does not answer.
pub async fn health(socket: &Path) -> Option<i32> {
    let channel = connect(&Address::unix(socket)).await.ok()?;
    health_on(channel).await
}

async fn health_on(channel: Channel) -> Option<i32> {
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "arbiter.tts.v1.Tts".into(),
        })
        .await
        .ok()?;
    Some(reply.into_inner().status)
}

/// A client once the service answers health checks (within [`SOON`]), and the status of
/// the first answer: without a supervisor, a service with a lease to hold says NOT_SERVING
/// and still answers.
pub async fn answering(socket: &Path) -> (TtsClient<Channel>, i32) {
    for _ in 0..SOON.as_millis() / 50 {
        if socket.exists()
            && let Ok(channel) = connect(&Address::unix(socket)).await
            && let Some(status) = health_on(channel.clone()).await
        {
            return (TtsClient::new(channel), status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("arbiter-tts did not come up on {}", socket.display());
}

/// A client once the service answers health checks, whatever the status.
pub async fn connected(socket: &Path) -> TtsClient<Channel> {
    answering(socket).await.0
}

/// Runs one of the generators in scripts/ (random weights, the real interface) with the
/// venv's python3 (scripts/env.sh), or copies what an earlier run with the same script and
/// arguments wrote, into `dir`.
fn generate(script: &str, dir: &Path, extra: &[&str]) {
    let path = binaries::workspace_root().join("scripts").join(script);
    let source = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let args = extra.join("\0");
    let key = generated::key(script.trim_end_matches(".py"), &[&source, args.as_bytes()]);
    generated::copy_of(&binaries::cache_dir(), &key, dir, |out| {
        let output = Command::new("python3")
            .arg(&path)
            .arg(out)
            .args(extra)
            .output()
            .expect("python3 runs: source scripts/env.sh (after scripts/setup.sh) first");
        assert!(
            output.status.success(),
            "{script} failed (is torch installed? run scripts/setup.sh and source \
             scripts/env.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
}

/// A generated TorchScript lip-sync model in `dir`.
pub fn make_lipsync(dir: &Path, extra: &[&str]) {
    generate("make-test-lipsync.py", dir, extra);
}

/// A generated TorchScript (Piper-style) voice in `dir`.
pub fn make_voice(dir: &Path, extra: &[&str]) {
    generate("make-test-voice.py", dir, extra);
}

/// `arbiter-tts serve` in `dir` against the supervisor at `supervisor`, with a generated
/// lip-sync model (32 px, 25 fps) under its own 1 GiB lease and a 300 ms wait, `extra` flags
/// added; and its socket.
pub fn serve_with_lipsync(
    dir: &Path,
    supervisor: &Path,
    extra: &[&str],
) -> (Process, std::path::PathBuf) {
    let model = dir.join("tiny-lipsync");
    make_lipsync(&model, &["--face-size", "32", "--fps", "25"]);
    let socket = dir.join("tts.sock");
    let mut args = vec![
        "--supervisor",
        supervisor.to_str().expect("a UTF-8 path"),
        "--lipsync-dir",
        model.to_str().expect("a UTF-8 path"),
        "--lipsync-lease-bytes",
        "1GiB",
        "--lipsync-wait-ms",
        "300",
    ];
    args.extend_from_slice(extra);
    (serve(&socket, &args), socket)
}

/// A duration from the wire in seconds (0 when absent).
pub fn secs(d: &Option<prost_types::Duration>) -> f64 {
    d.map(|d| d.seconds as f64 + d.nanos as f64 / 1e9)
        .unwrap_or(0.0)
}

/// Every message of a LipSyncStream, or its error status.
pub async fn lip_sync_stream(
    client: &mut TtsClient<Channel>,
    request: pb::LipSyncRequest,
) -> Result<Vec<pb::LipSyncChunk>, tonic::Status> {
    let mut stream = client.lip_sync_stream(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.push(chunk);
    }
    Ok(out)
}

/// Audio input for a request: raw PCM s16le mono at `rate`.
pub fn pcm(samples: &[i16], rate: u32) -> pb::AudioInput {
    pb::AudioInput {
        data: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        format: pb::AudioFormat::PcmS16le as i32,
        sample_rate: rate,
    }
}

/// A face image LipSyncStream request for `input`.
pub fn face_request(input: pb::lip_sync_request::Input, face: Vec<u8>) -> pb::LipSyncRequest {
    pb::LipSyncRequest {
        input: Some(input),
        face_image: face,
        ..Default::default()
    }
}
