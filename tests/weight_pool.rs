//! The host weight pool, whole: a supervisor with `[pool]` fills the staged pipeline's
//! weights into sealed shared memory, its video workers load every component from there
//! (the job's metadata says so) and render exactly what a worker reading the files renders,
//! and GetStatus counts the fills and hits. Without the pool nothing changes.
//!
//! On the simulated GPU the workers load onto the CPU, so the components use the pool's
//! pages in place (no driver registration: that is measured on the GPU host, see
//! docs/benchmarks.md).

use std::path::Path;

use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::jobs::{
    BASE_CONFIG, assert_state, final_job, nothing_leased, request, staged_pipelines, submit,
};
use arbiter_test_kit::leases::status;
use arbiter_test_kit::supervisor::Supervisor;
use tempfile::TempDir;
use vpb::JobState;

const POOL: &str = "[pool]\nhost_bytes = \"512MiB\"\nthreads = 2\n";

async fn supervisor(pipelines: &TempDir, extra: &str) -> Supervisor {
    Supervisor::builder()
        .gpus("8GiB")
        .config(&format!("{BASE_CONFIG}{extra}"))
        .pipelines_dir(pipelines.path())
        .start()
        .await
}

/// Runs one seeded job to success: its video's bytes, its metadata and its worker's log.
async fn render(supervisor: &Supervisor) -> (Vec<u8>, serde_json::Value, String) {
    let video = supervisor.video_client().await;
    let mut request = request("tiny-staged", "a heron at dusk", 2);
    request.seed = Some(11);
    let id = submit(&video, request).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    let result = job.result.as_ref().expect("a result");
    let metadata = serde_json::from_slice(&std::fs::read(&result.metadata_path).unwrap()).unwrap();
    let log = std::fs::read_to_string(&job.log_path).unwrap_or_default();
    (
        std::fs::read(Path::new(&result.video_path)).unwrap(),
        metadata,
        log,
    )
}

/// Each loading stage's weight source, in stage order (a stage that loaded nothing, as the
/// text stage on an embedding-cache hit, has none).
fn sources(metadata: &serde_json::Value) -> Vec<String> {
    metadata["pipeline_stages"]
        .as_array()
        .expect("per-stage records")
        .iter()
        .filter_map(|s| s["load_source"].as_str().map(String::from))
        .collect()
}

async fn pool_status(supervisor: &Supervisor) -> Option<spb::WeightPool> {
    status(&supervisor.unix_client().await).await.weight_pool
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_load_every_component_from_the_pool_and_render_the_same_video() {
    let pipelines = staged_pipelines();

    let plain = supervisor(&pipelines, "").await;
    let (expected, metadata, _) = render(&plain).await;
    let from_files = sources(&metadata);
    assert!(!from_files.is_empty(), "{metadata}");
    assert!(from_files.iter().all(|s| s == "file"), "{from_files:?}");
    assert_eq!(pool_status(&plain).await, None, "off by default");
    drop(plain);

    let pooled = supervisor(&pipelines, POOL).await;
    for round in 0..2 {
        let (video, metadata, _) = render(&pooled).await;
        let from_pool = sources(&metadata);
        assert!(
            !from_pool.is_empty() && from_pool.iter().all(|s| s == "pool"),
            "round {round}: {from_pool:?}\n{}",
            pooled.log()
        );
        assert!(video == expected, "round {round}: the video differs");
    }
    let status = pool_status(&pooled).await.expect("the pool in GetStatus");
    // Every component file read once (at start or at its first ask), then only shared.
    // Prefilled: every served file, the pipeline's components among them.
    assert!(status.files as usize >= from_files.len(), "{status:?}");
    assert_eq!(status.fills, status.files, "{status:?}");
    assert!(status.hits >= 2, "{status:?}");
    assert_eq!((status.refusals, status.evictions), (0, 0), "{status:?}");
    assert!(
        status.bytes > 0 && status.bytes <= status.budget_bytes,
        "{status:?}"
    );
    assert!(Path::new(&status.socket).exists(), "{status:?}");
    // The operator's view: `arbiter-supervisor status` prints the pool's line.
    let printed = pooled.client_command(&["status"]).output().unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(
        printed.contains(&format!("weight pool {}", status.socket))
            && printed.contains(&format!("{} fills", status.fills)),
        "{printed}"
    );
    nothing_leased(&pooled.unix_client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_too_small_for_a_file_refuses_it_and_the_worker_reads_the_file() {
    let pipelines = staged_pipelines();
    // A few KiB: below every component's weights.
    let tiny = "[pool]\nhost_bytes = \"4KiB\"\n";
    let supervisor = supervisor(&pipelines, tiny).await;
    let (_, metadata, log) = render(&supervisor).await;
    let sources = sources(&metadata);
    assert!(
        !sources.is_empty() && sources.iter().all(|s| s == "file"),
        "{sources:?}"
    );
    let status = pool_status(&supervisor)
        .await
        .expect("the pool in GetStatus");
    assert!(status.refusals as usize >= sources.len(), "{status:?}");
    assert!(
        log.contains("instead of the pool") && log.contains("budget"),
        "the worker says why it read the file: {log}"
    );
}

/// `arbiter-video generate --repeat 2 --park` against the pool of `supervisor`: its
/// output and park.json.
fn generate_parked(
    supervisor: &Supervisor,
    pipelines: &TempDir,
    pool: bool,
) -> (std::process::Output, TempDir) {
    let out = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(arbiter_test_kit::binaries::video());
    command
        .arg("generate")
        .arg("--pipeline")
        .arg(pipelines.path().join("tiny-staged"))
        .args(["--prompt", "a heron at dusk", "--seed", "3", "--steps", "2"])
        .args(["--repeat", "2", "--park", "--out"])
        .arg(out.path());
    for component in [
        "text_encoder",
        "audio_encoder",
        "image_encoder",
        "transformer",
        "upsampler",
        "vae_decoder",
    ] {
        command
            .arg("--placement")
            .arg(format!("{component}=resident"));
    }
    command.env_remove(arbiter::pool::SOCKET_ENV);
    if pool {
        command.env(
            arbiter::pool::SOCKET_ENV,
            supervisor.socket().with_file_name("pool.sock"),
        );
    }
    (command.output().expect("run arbiter-video generate"), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_process_parks_its_resident_components_on_the_pool_and_wakes_them() {
    let pipelines = staged_pipelines();
    let supervisor = supervisor(&pipelines, POOL).await;
    let (output, out) = generate_parked(&supervisor, &pipelines, true);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("park.json")).unwrap()).unwrap();
    let round = &report["rounds"][0];
    // The components the first run left loaded (an image stage without an image loads
    // nothing) park, and the same ones wake, with the same bytes.
    let parked = round["park"]["components"].as_u64().unwrap();
    assert!(parked >= 3, "{report}");
    assert_eq!(
        round["wake"]["components"], round["park"]["components"],
        "{report}"
    );
    assert_eq!(round["wake"]["bytes"], round["park"]["bytes"], "{report}");
    // Woken from the pool, the second run renders what the first did.
    let video = |run: &str| {
        let dir = out.path().join(run);
        let file = ["video.mp4", "frames/frame-0000.png"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no video in {}", dir.display()));
        std::fs::read(file).unwrap()
    };
    assert!(video("run-1") == video("run-2"), "the woken run differs");

    // Without the pool there is nothing to wake from: parking says so.
    let (output, _) = generate_parked(&supervisor, &pipelines, false);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("did not come from the host weight pool"),
        "{stderr}"
    );
}
