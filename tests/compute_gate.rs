//! Compute priority, whole-system: the supervisor makes a compute gate per GPU and reports
//! it; a video job it spawns on a staged pipeline pauses between its blocks while an
//! interactive holder has work marked there, records what that cost, and runs unpaused
//! once the holder is done; the tts service joins the gate it is given. With
//! `yield_to_interactive = false` there is no gate and no job yields.
//!
//! The holder here is the test process itself, marking work through `arbiter::gate` the way
//! arbiter-tts does around a GPU voice (a simulated GPU runs the voice on the CPU, where the
//! service marks nothing). Nothing asserts how long a pause took beyond "some".

use std::path::PathBuf;
use std::sync::Arc;

use arbiter::gate::Gate;
use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::jobs::{assert_state, final_job, request, staged_pipelines, submit};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::tts;
use arbiter_test_kit::waiting::eventually;
use vpb::JobState;

/// Short pauses, a share that allows every one, and a mark that lasts the whole test.
const YIELDING: &str = "[jobs]\nkill_grace = \"2s\"\n[compute]\nmax_pause = \"2ms\"\nmax_share = 1.0\nstale_after = \"10m\"\n";

async fn gates(supervisor: &Supervisor) -> Vec<spb::ComputeGate> {
    let mut client = supervisor.unix_client().await;
    client
        .get_status(spb::GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
        .compute_gates
}

fn stages(job: &vpb::Job) -> Vec<serde_json::Value> {
    let path = &job.result.as_ref().expect("a result").metadata_path;
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the metadata")).expect("JSON");
    metadata["pipeline_stages"]
        .as_array()
        .expect("per-stage records")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_yields_between_blocks_while_an_interactive_holder_works() {
    let pipelines = staged_pipelines();
    let supervisor = Supervisor::builder()
        .gpus("8GiB")
        .config(YIELDING)
        .pipelines_dir(pipelines.path())
        .start()
        .await;
    let gates = gates(&supervisor).await;
    assert_eq!(gates.len(), 1, "one gate for the one GPU: {gates:?}");
    let path = PathBuf::from(&gates[0].path);
    assert!(
        path.starts_with(supervisor.state_dir()),
        "{}",
        path.display()
    );
    let gate = Arc::new(Gate::open_holder(&path).expect("the reported gate opens"));
    let holder = gate.holder().expect("a slot");

    // Busy for the whole job: every block boundary of the text encoder and the transformer
    // is a pause.
    let work = holder.work();
    let id = submit(
        &supervisor.video_client().await,
        request("tiny-staged", "a fox", 2),
    )
    .await;
    let job = final_job(&supervisor.video_client().await, &id).await;
    assert_state(&job, JobState::Succeeded);
    let mut yielded = 0;
    for stage in stages(&job) {
        let name = stage["stage"].as_str().unwrap().to_string();
        let pauses = stage["yield_pauses"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name}: no yield record under a gate: {stage}"));
        match name.as_str() {
            "text" | "denoise" | "refine" => {
                assert!(pauses > 0, "{name} has blocks and paused {pauses} times");
                assert!(stage["yield_paused_ms"].as_f64().unwrap() > 0.0, "{stage}");
                yielded += pauses;
            }
            _ => assert_eq!(pauses, 0, "{name} has no blocks: {stage}"),
        }
    }
    assert!(yielded > 0);

    // The holder is done: the next job runs through without a pause.
    drop(work);
    let id = submit(
        &supervisor.video_client().await,
        request("tiny-staged", "a fox", 2),
    )
    .await;
    let job = final_job(&supervisor.video_client().await, &id).await;
    assert_state(&job, JobState::Succeeded);
    for stage in stages(&job) {
        assert_eq!(stage["yield_pauses"].as_u64(), Some(0), "{stage}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_yielding_there_is_no_gate_and_jobs_record_none() {
    let pipelines = staged_pipelines();
    let supervisor = Supervisor::builder()
        .gpus("8GiB")
        .config("[jobs]\nkill_grace = \"2s\"\n[compute]\nyield_to_interactive = false\n")
        .pipelines_dir(pipelines.path())
        .start()
        .await;
    assert!(gates(&supervisor).await.is_empty());
    let id = submit(
        &supervisor.video_client().await,
        request("tiny-staged", "a fox", 2),
    )
    .await;
    let job = final_job(&supervisor.video_client().await, &id).await;
    assert_state(&job, JobState::Succeeded);
    for stage in stages(&job) {
        assert!(stage.get("yield_pauses").is_none(), "{stage}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tts_service_joins_the_gate_it_is_given_and_its_slot_is_free_once_it_is_gone() {
    let supervisor = Supervisor::builder()
        .gpus("8GiB")
        .config(YIELDING)
        .start()
        .await;
    let path = PathBuf::from(&gates(&supervisor).await[0].path);
    let gate = Gate::open_worker(&path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tts.sock");
    let supervisor_socket = supervisor.socket().to_str().unwrap().to_string();
    let path_arg = path.to_str().unwrap().to_string();
    let mut service = tts::serve(
        &socket,
        &[
            "--supervisor",
            &supervisor_socket,
            "--lease-bytes",
            "1GiB",
            "--compute-gate",
            &path_arg,
        ],
    );
    let pid = service.pid();
    eventually(tts::SOON, "the service's slot", || async {
        gate.holders().contains(&pid).then_some(())
    })
    .await;
    // Killed, so nothing of its own gives the slot back: a dead owner's slot is free.
    service.kill();
    eventually(tts::SOON, "the slot free", || async {
        (!gate.holders().contains(&pid)).then_some(())
    })
    .await;

    // `off`: it marks nothing.
    let socket = dir.path().join("tts-off.sock");
    let service = tts::serve(
        &socket,
        &[
            "--supervisor",
            &supervisor_socket,
            "--lease-bytes",
            "1GiB",
            "--compute-gate",
            "off",
        ],
    );
    tts::answering(&socket).await;
    assert!(!gate.holders().contains(&service.pid()));
}
