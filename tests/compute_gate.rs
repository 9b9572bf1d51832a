//! Compute priority, whole-system: the supervisor makes a compute gate per GPU and reports
//! it; a video job it spawns on a staged pipeline pauses between its blocks while an
//! interactive holder has work marked there, records what that cost, and runs unpaused
//! once the holder is done; the tts service joins the gate it is given. With
//! `yield_to_interactive = false` there is no gate and no job yields. With `[compute.mps]`
//! the supervisor runs MPS's control daemon as its child (a stand-in here), restarts it,
//! reports its pipe directory (the tts service becomes a client) and tells it to quit.
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

/// A job on the staged test pipeline, submitted and followed until it succeeded.
async fn a_finished_job(supervisor: &Supervisor) -> vpb::Job {
    let video = supervisor.video_client().await;
    let id = submit(&video, request("tiny-staged", "a fox", 2)).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    job
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
    let job = a_finished_job(&supervisor).await;
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
    let job = a_finished_job(&supervisor).await;
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
    let job = a_finished_job(&supervisor).await;
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

/// A stand-in for `nvidia-cuda-mps-control` (no NVIDIA driver here): with `-f` it is the
/// daemon, making the control pipe and serving commands from it until `quit`; without, it
/// is the control program, passing its input to the daemon. Each start and command goes to
/// `$MPS_RECORD`. The real program runs in the H100 benchmark (docs/benchmarks.md).
const MPS_STAND_IN: &str = r#"#!/bin/sh
if [ "$1" = "-f" ]; then
    echo "started $$ pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY" >>"$MPS_RECORD"
    rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
    mkfifo "$CUDA_MPS_PIPE_DIRECTORY/control"
    while true; do
        while read -r line; do
            echo "command $line" >>"$MPS_RECORD"
            if [ "$line" = quit ]; then rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"; exit 0; fi
        done <"$CUDA_MPS_PIPE_DIRECTORY/control"
    done
else
    cat >"$CUDA_MPS_PIPE_DIRECTORY/control"
fi
"#;

fn record(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_runs_the_mps_daemon_restarts_it_and_tells_it_to_quit() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("nvidia-cuda-mps-control");
    std::fs::write(&control, MPS_STAND_IN).unwrap();
    std::fs::set_permissions(&control, std::fs::Permissions::from_mode(0o755)).unwrap();
    let recorded = dir.path().join("mps.record");
    let config = format!(
        "[compute]\nyield_to_interactive = false\n[compute.mps]\nenabled = true\ncontrol = \"{}\"\n",
        control.display()
    );
    let mut supervisor = Supervisor::builder()
        .gpus("8GiB")
        .config(&config)
        .env("MPS_RECORD", recorded.to_str().unwrap())
        .start()
        .await;
    let pipe = supervisor.state_dir().join("mps/pipe");
    let started = record(&recorded);
    assert_eq!(started.len(), 1, "{started:?}");
    assert!(
        started[0].ends_with(&format!(
            "pipe={} log={}",
            pipe.display(),
            supervisor.state_dir().join("mps/log").display()
        )),
        "{started:?}"
    );
    let mut client = supervisor.unix_client().await;
    let status = client
        .get_status(spb::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.mps_pipe_directory, pipe.display().to_string());
    assert!(status.compute_gates.is_empty(), "yielding is off");

    // The tts service becomes a client: it reads the pipe directory before CUDA starts.
    let tts_dir = tempfile::tempdir().unwrap();
    let socket = tts_dir.path().join("tts.sock");
    let supervisor_socket = supervisor.socket().to_str().unwrap().to_string();
    let service = tts::serve(
        &socket,
        &["--supervisor", &supervisor_socket, "--lease-bytes", "1GiB"],
    );
    tts::answering(&socket).await;
    eventually(tts::SOON, "the service an MPS client", || async {
        let log = service.output();
        (log.contains("an MPS client at normal priority")
            && log.contains(&format!("pipe={}", pipe.display())))
        .then_some(())
    })
    .await;
    drop(service);

    // The daemon dies: the supervisor starts it again.
    let pid: i32 = started[0]
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    eventually(tts::SOON, "the daemon started again", || async {
        (record(&recorded)
            .iter()
            .filter(|l| l.starts_with("started"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    eventually(tts::SOON, "its control pipe", || async {
        pipe.join("control").exists().then_some(())
    })
    .await;

    // At shutdown it is told to quit, through the control program.
    let status = supervisor.terminate().await;
    assert!(status.success(), "{status:?}\n{}", supervisor.log());
    let lines = record(&recorded);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("command quit"),
        "{lines:?}"
    );
}

#[test]
fn without_the_mps_control_program_the_supervisor_says_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("supervisor.toml");
    std::fs::write(
        &config,
        "[compute.mps]\nenabled = true\ncontrol = \"/nonexistent/nvidia-cuda-mps-control\"\n",
    )
    .unwrap();
    let mut command = arbiter_test_kit::supervisor::command();
    command
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--simulated-gpus", "8GiB"]);
    let output =
        arbiter_test_kit::processes::run_to_end(command, std::time::Duration::from_secs(30));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/nvidia-cuda-mps-control") && stderr.contains("compute.mps"),
        "{stderr}"
    );
}
