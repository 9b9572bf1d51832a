//! What the lip-sync tests share: starting the real binaries, the generated test model, a
//! face picture, and polling. (Each test file is its own crate, so not every item is used
//! by every file.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use arbiter::endpoint::{Address, connect};
use arbiter::pb::tts::v1 as pb;
use pb::tts_client::TtsClient;
use tonic::transport::Channel;

/// A child process killed (and reaped) when the test ends, however it ends.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// target/<profile>/arbiter-supervisor, built by the workspace build that runs the tests.
pub fn supervisor_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let binary = dir.join("arbiter-supervisor");
    assert!(
        binary.exists(),
        "{} is missing: build the workspace first (scripts/test.sh does: cargo build --workspace --bins)",
        binary.display()
    );
    binary
}

/// The supervisor on one simulated 10 GiB GPU with no reserve, configured by `config`
/// (TOML), on `dir/supervisor.sock`.
pub fn supervisor(dir: &Path, config: &str) -> Killed {
    let config_path = dir.join("supervisor.toml");
    std::fs::write(&config_path, config).expect("the supervisor's config is written");
    let child = Command::new(supervisor_binary())
        .arg("--config")
        .arg(&config_path)
        .args(["--simulated-gpus", "10GiB", "--reserve", "0B"])
        .arg("--socket")
        .arg(dir.join("supervisor.sock"))
        .arg("--simulated-dir")
        .arg(dir.join("sim"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the supervisor starts");
    Killed(child)
}

/// `arbiter-tts serve` on `socket` with `extra` flags; its log goes to the test's stderr.
pub fn tts(socket: &Path, extra: &[&str]) -> Killed {
    let child = Command::new(env!("CARGO_BIN_EXE_arbiter-tts"))
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("arbiter-tts starts");
    Killed(child)
}

/// A client once the service answers health checks (whatever the status: without a
/// supervisor a service with a lease to hold says NOT_SERVING and still answers).
pub async fn connected(socket: &Path) -> TtsClient<Channel> {
    for _ in 0..400 {
        if socket.exists()
            && let Ok(channel) = connect(&Address::unix(socket)).await
        {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let check = tonic_health::pb::HealthCheckRequest {
                service: "arbiter.tts.v1.Tts".into(),
            };
            if health.check(check).await.is_ok() {
                return TtsClient::new(channel);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("arbiter-tts did not come up on {}", socket.display());
}

/// Polls `probe` every 50 ms for up to 20 s.
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut probe: impl FnMut() -> F,
) -> T {
    for _ in 0..400 {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Runs one of the generators in scripts/ (random weights, the real interface) into `dir`
/// with the venv's python3 (scripts/env.sh).
pub fn generate(script: &str, dir: &Path, extra: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script);
    let out = Command::new("python3")
        .arg(&path)
        .arg(dir)
        .args(extra)
        .output()
        .expect("python3 runs: source scripts/env.sh (after scripts/setup.sh) first");
    assert!(
        out.status.success(),
        "{script} failed (is torch installed? run scripts/setup.sh and source \
         scripts/env.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A generated TorchScript lip-sync model in `dir`.
pub fn make_lipsync(dir: &Path, extra: &[&str]) {
    generate("make-test-lipsync.py", dir, extra);
}

/// A generated TorchScript (Piper-style) voice in `dir`.
pub fn make_voice(dir: &Path, extra: &[&str]) {
    generate("make-test-voice.py", dir, extra);
}

/// A `width` × `height` picture with a gradient, encoded as PNG or JPEG.
pub fn picture(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut out, format)
        .expect("the picture encodes");
    out.into_inner()
}

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

/// A 220 Hz tone of `seconds` at `rate`, loud enough to open a mouth.
pub fn tone(seconds: f64, rate: u32) -> Vec<i16> {
    (0..(seconds * f64::from(rate)).round() as usize)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            ((t * 220.0 * std::f64::consts::TAU).sin() * 12000.0) as i16
        })
        .collect()
}

/// A face image LipSyncStream request for `input`.
pub fn face_request(input: pb::lip_sync_request::Input, face: Vec<u8>) -> pb::LipSyncRequest {
    pb::LipSyncRequest {
        input: Some(input),
        face_image: face,
        ..Default::default()
    }
}
