//! Which card the service runs on and leases on, against the real supervisor binary on two
//! simulated GPUs (10 GiB and 4 GiB): `--gpu` by index, a card picked for it as the
//! supervisor's ledger would (best fit), an inherited CUDA_VISIBLE_DEVICES, and ListVoices
//! saying which card it is. Without CUDA here nothing loads on a GPU; what is checked is
//! that both leases land on the card the service says it runs on.

use std::path::Path;
use std::process::Command;

use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::leases::{Client, leases, status};
use arbiter_test_kit::processes::{Process, run_to_end};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tts::{self, SOON, make_lipsync};
use arbiter_test_kit::waiting::eventually;

/// `serve` against `supervisor`, with none of the caller's card settings.
fn serve_command(socket: &Path, supervisor: &Supervisor, extra: &[&str]) -> Command {
    let mut args = vec!["--supervisor", supervisor.socket().to_str().expect("UTF-8")];
    args.extend_from_slice(extra);
    let mut command = tts::serve_command(socket, &args);
    for key in [
        "CUDA_VISIBLE_DEVICES",
        "CUDA_DEVICE_ORDER",
        "ARBITER_TTS_GPU",
    ] {
        command.env_remove(key);
    }
    command
}

async fn lease_of(client: &Client, holder: &str) -> spb::Lease {
    eventually(SOON, &format!("the lease of {holder}"), || async {
        leases(client)
            .await
            .into_iter()
            .find(|l| l.holder.starts_with(&format!("{holder} (pid")))
    })
    .await
}

/// ListVoices' card once it names `lease_id` (the lease is granted in the background).
async fn reported(socket: &Path, lease_id: &str) -> pb::ServiceGpu {
    let client = tts::connected(socket).await;
    eventually(SOON, "ListVoices naming the lease", || {
        let mut client = client.clone();
        async move {
            let gpu = client
                .list_voices(pb::ListVoicesRequest {})
                .await
                .ok()?
                .into_inner()
                .gpu?;
            (gpu.lease_id == lease_id).then_some(gpu)
        }
    })
    .await
}

async fn uuid_of(client: &Client, index: u32) -> String {
    status(client)
        .await
        .gpus
        .into_iter()
        .find(|g| g.index == index)
        .expect("the simulated GPU")
        .uuid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_by_index_leases_there_and_says_so() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let supervisor = Supervisor::builder().gpus("10GiB,4GiB").start().await;
    let client = supervisor.unix_client().await;
    let _tts = Process::spawn(
        serve_command(
            &socket,
            &supervisor,
            &["--gpu", "1", "--lease-bytes", "1GiB"],
        ),
        dir.path().join("tts.log"),
    );

    let lease = lease_of(&client, "arbiter-tts").await;
    assert_eq!(lease.gpu_index, 1, "the lease is on --gpu 1");
    let gpu = reported(&socket, &lease.lease_id).await;
    assert_eq!(gpu.index, Some(1));
    assert_eq!(gpu.uuid, uuid_of(&client, 1).await);
    assert_eq!(gpu.chosen_by, "flag");
    assert_eq!(gpu.lease_bytes, 1 << 30);
}

/// No --gpu, models to load: the card is picked before they load, as the ledger would place
/// the lease (best fit: the 4 GiB card fits 2 GiB and keeps the 10 GiB one free), and both
/// the voices' lease and (at the first render) the lip-sync model's are asked for that card.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_gpu_is_the_best_fit_and_both_leases_follow_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let model = dir.path().join("model");
    make_lipsync(&model, &["--face-size", "32", "--fps", "25"]);
    let socket = dir.path().join("tts.sock");
    let supervisor = Supervisor::builder().gpus("10GiB,4GiB").start().await;
    let client = supervisor.unix_client().await;
    let tts = Process::spawn(
        serve_command(
            &socket,
            &supervisor,
            &[
                "--lease-bytes",
                "2GiB",
                "--lipsync-dir",
                model.to_str().expect("UTF-8"),
                "--lipsync-lease-bytes",
                "512MiB",
            ],
        ),
        dir.path().join("tts.log"),
    );

    let voices = lease_of(&client, "arbiter-tts").await;
    // The lip-sync model asks for its lease when a render first wants it.
    let mut tts_client = arbiter_test_kit::tts::connected(&socket).await;
    let face = arbiter_test_kit::media::picture(64, 64, image::ImageFormat::Png);
    let audio = arbiter_test_kit::tts::pcm(&arbiter_test_kit::media::tone(0.3, 16000), 16000);
    arbiter_test_kit::tts::lip_sync_stream(
        &mut tts_client,
        arbiter_test_kit::tts::face_request(
            arbiter::pb::tts::v1::lip_sync_request::Input::Audio(audio),
            face,
        ),
    )
    .await
    .expect("a render");
    let lip_sync = lease_of(&client, "arbiter-tts/lipsync").await;
    assert_eq!(voices.gpu_index, 1, "best fit for 2 GiB");
    assert_eq!(
        lip_sync.gpu_index, 1,
        "the lip-sync model's lease on the same card"
    );
    let uuid = uuid_of(&client, 1).await;
    let gpu = reported(&socket, &voices.lease_id).await;
    assert_eq!(
        (gpu.uuid.as_str(), gpu.index, gpu.chosen_by.as_str()),
        (uuid.as_str(), Some(1), "best-fit")
    );
    // Pinned before CUDA could start: CUDA_VISIBLE_DEVICES set to the card's uuid (which
    // /proc/PID/environ, written at exec, does not show; the start-up log does).
    let pinned = format!("(\"CUDA_VISIBLE_DEVICES\", \"{uuid}\")");
    assert!(
        tts.output().contains(&pinned),
        "the process pinned itself with {pinned}:\n{}",
        tts.output()
    );
}

/// An inherited CUDA_VISIBLE_DEVICES is the card; a --gpu naming another one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inherited_card_is_respected() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let supervisor = Supervisor::builder().gpus("10GiB,4GiB").start().await;
    let client = supervisor.unix_client().await;
    let uuid = uuid_of(&client, 1).await;

    let mut conflicting = serve_command(&socket, &supervisor, &["--gpu", "0"]);
    conflicting.env("CUDA_VISIBLE_DEVICES", &uuid);
    let out = run_to_end(conflicting, SOON);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "CUDA_VISIBLE_DEVICES={uuid} is set by the environment"
        )) && stderr.contains("--gpu 0"),
        "{stderr}"
    );

    let mut command = serve_command(&socket, &supervisor, &["--lease-bytes", "1GiB"]);
    command.env("CUDA_VISIBLE_DEVICES", &uuid);
    let _tts = Process::spawn(command, dir.path().join("tts.log"));
    let lease = lease_of(&client, "arbiter-tts").await;
    assert_eq!(lease.gpu_uuid, uuid);
    let gpu = reported(&socket, &lease.lease_id).await;
    assert_eq!((gpu.uuid.as_str(), gpu.index), (uuid.as_str(), Some(1)));
    assert_eq!(gpu.chosen_by, "environment");
}

/// --gpu with an index the supervisor does not have stops start-up, naming the ones it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_the_supervisor_lacks_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let model = dir.path().join("model");
    make_lipsync(&model, &["--face-size", "32", "--fps", "25"]);
    let socket = dir.path().join("tts.sock");
    let supervisor = Supervisor::builder().gpus("10GiB,4GiB").start().await;
    let out = run_to_end(
        serve_command(
            &socket,
            &supervisor,
            &[
                "--gpu",
                "7",
                "--lipsync-dir",
                model.to_str().expect("UTF-8"),
            ],
        ),
        SOON,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--gpu 7: the supervisor has no GPU 7 (it has 2: 0, 1)"),
        "{stderr}"
    );
}
