//! `arbiter-tts serve --lease-from-env`, as a pod under a Kubernetes DRA claim runs it: no
//! supervisor anywhere, the budget from ARBITER_LEASE_BYTES, the card from
//! CUDA_VISIBLE_DEVICES, ARBITER_LEASE_ID reported. The card named is one CUDA does not
//! have, so nothing loads on a GPU even on a machine with one: the eSpeak NG voice (and a
//! generated lip-sync model) run on the CPU, and the budget check counts the sizes given.

use std::path::Path;
use std::process::Command;

use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::binaries;
use arbiter_test_kit::processes::{Process, run_to_end};
use arbiter_test_kit::tts::{self, SERVING, SOON, make_lipsync};

const CARD: &str = "GPU-00000000-0000-4000-8000-00000000c1a1";
const LEASE_ID: &str = "lease-of-the-claim";

/// `serve --lease-from-env` with exactly `env` of the claim's variables (and no supervisor
/// address, so nothing could be asked even by mistake).
fn under_claim(socket: &Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut args = vec!["--lease-from-env"];
    args.extend_from_slice(extra);
    let mut command = tts::serve_command(socket, &args);
    for key in [
        "ARBITER_LEASE_BYTES",
        "ARBITER_LEASE_ID",
        "ARBITER_CLAIM_UID",
        "ARBITER_SUPERVISOR",
        "ARBITER_TTS_GPU",
        "CUDA_VISIBLE_DEVICES",
    ] {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

fn claim_env(bytes: &str) -> Vec<(&str, &str)> {
    vec![
        ("ARBITER_LEASE_BYTES", bytes),
        ("ARBITER_LEASE_ID", LEASE_ID),
        ("ARBITER_CLAIM_UID", "0e1f-claim"),
        ("CUDA_VISIBLE_DEVICES", CARD),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_claim_it_serves_at_once_and_speaks_without_a_supervisor() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let service = Process::spawn(
        under_claim(&socket, &[], &claim_env("2147483648")),
        dir.path().join("tts.log"),
    );

    let (mut client, health) = tts::answering(&socket).await;
    assert_eq!(health, SERVING, "no lease to wait for: SERVING at once");

    let reply = client
        .list_voices(pb::ListVoicesRequest {})
        .await
        .expect("ListVoices")
        .into_inner();
    let gpu = reply.gpu.expect("ListVoices names the claim's card");
    assert_eq!(gpu.uuid, CARD);
    assert_eq!(gpu.index, None, "a claim names its card by uuid only");
    assert_eq!(gpu.chosen_by, "claim");
    assert_eq!(gpu.lease_id, LEASE_ID);
    assert_eq!(gpu.lease_bytes, 2 << 30);

    // `arbiter-tts say`, the CLI client, through the running service.
    let wav = dir.path().join("hello.wav");
    let mut say = Command::new(binaries::tts());
    say.arg("say")
        .arg("--socket")
        .arg(&socket)
        .args(["--text", "Hello from inside a claim."])
        .arg("--out")
        .arg(&wav);
    let out = run_to_end(say, SOON);
    assert!(
        out.status.success(),
        "say failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let audio = std::fs::read(&wav).expect("say wrote the WAV");
    assert!(
        audio.starts_with(b"RIFF") && audio.len() > 44 + 1000,
        "a WAV with speech in it ({} bytes)",
        audio.len()
    );

    assert_eq!(
        tts::health(&socket).await,
        Some(SERVING),
        "still SERVING: no lease holder to flip it"
    );
    let log = service.output();
    assert!(
        log.contains(LEASE_ID) && log.contains("no lease of its own"),
        "the log names the claim's lease:\n{log}"
    );
}

/// Runs `serve` to its exit, expecting it to refuse to start with `expected` in its error.
fn refuses(socket: &Path, extra: &[&str], env: &[(&str, &str)], expected: &str) {
    let out = run_to_end(under_claim(socket, extra, env), SOON);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit 2 for a start-up it cannot make; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(expected),
        "the error says `{expected}`:\n{stderr}"
    );
    assert!(!socket.exists(), "nothing listened");
}

#[test]
fn a_missing_or_garbled_budget_stops_it_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    refuses(
        &socket,
        &[],
        &[("CUDA_VISIBLE_DEVICES", CARD)],
        "--lease-from-env: ARBITER_LEASE_BYTES is not set",
    );
    refuses(
        &socket,
        &[],
        &[
            ("ARBITER_LEASE_BYTES", "plenty"),
            ("CUDA_VISIBLE_DEVICES", CARD),
        ],
        "ARBITER_LEASE_BYTES=`plenty` is not a byte count",
    );
    refuses(
        &socket,
        &[],
        &[("ARBITER_LEASE_BYTES", "1GiB")],
        "CUDA_VISIBLE_DEVICES is not set",
    );
    // And it does not mix with a supervisor of its own.
    refuses(
        &socket,
        &["--supervisor", "/nowhere.sock"],
        &claim_env("1GiB"),
        "--supervisor",
    );
}

/// The lip-sync model's bytes come out of the same budget: a model that does not fit beside
/// the voices stops start-up; one that fits loads under the claim's lease at its first render.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lip_sync_model_shares_the_claims_budget() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let model = dir.path().join("model");
    make_lipsync(&model, &["--face-size", "32", "--fps", "25"]);
    let model = model.to_str().expect("a UTF-8 temp path");
    let socket = dir.path().join("tts.sock");

    refuses(
        &socket,
        &[
            "--lipsync-dir",
            model,
            "--lease-bytes",
            "1536MiB",
            "--lipsync-lease-bytes",
            "1GiB",
        ],
        &claim_env("2GiB"),
        "the voices (1.5GiB) and the lip-sync model (1GiB) need 2.5GiB, more than the claim's ARBITER_LEASE_BYTES (2GiB)",
    );

    let _service = Process::spawn(
        under_claim(
            &socket,
            &[
                "--lipsync-dir",
                model,
                "--lease-bytes",
                "1GiB",
                "--lipsync-lease-bytes",
                "1GiB",
            ],
            &claim_env("2GiB"),
        ),
        dir.path().join("tts.log"),
    );
    let (mut client, health) = tts::answering(&socket).await;
    assert_eq!(health, SERVING);
    // The model loads when a render first wants it, under the claim's lease.
    let face = arbiter_test_kit::media::picture(64, 64, image::ImageFormat::Png);
    let audio = tts::pcm(&arbiter_test_kit::media::tone(0.3, 16000), 16000);
    tts::lip_sync_stream(
        &mut client,
        tts::face_request(pb::lip_sync_request::Input::Audio(audio), face),
    )
    .await
    .expect("a render");
    let status = arbiter_test_kit::waiting::eventually(SOON, "the model resident", || {
        let mut client = client.clone();
        async move {
            let status = client
                .get_lip_sync_status(pb::GetLipSyncStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (status.residency == pb::LipSyncResidency::Resident as i32).then_some(status)
        }
    })
    .await;
    assert_eq!(
        status.lease_id, LEASE_ID,
        "resident under the claim's lease"
    );
    assert_eq!(status.lease_bytes, 1 << 30);
    assert_eq!(status.leases_granted, 1);
    let gpu = client
        .list_voices(pb::ListVoicesRequest {})
        .await
        .expect("ListVoices")
        .into_inner()
        .gpu
        .expect("the claim's card");
    assert_eq!((gpu.uuid.as_str(), gpu.lease_id.as_str()), (CARD, LEASE_ID));
}
