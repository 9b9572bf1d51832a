//! Standby workers (`[jobs] standby`): a worker per staged pipeline started before its job
//! (`arbiter-video standby`), its TorchScript read, holding no lease and no GPU memory,
//! handed the next job when that job's lease is granted. The job runs as a spawned worker
//! would run it (the same video), says it was prestarted, and a fresh standby is started
//! behind it; one killed from outside is replaced; with `standby = false` jobs are spawned.
//!
//! Each test starts its own supervisor on a simulated GPU with the generated staged pipeline
//! (`arbiter_test_kit::jobs::staged_pipelines`). Standby workers are found by their command
//! line, which names the test's own pipelines directory. Waits are bounded; nothing asserts
//! how fast something happened.

use std::path::Path;
use std::time::Duration;

use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::jobs::{
    assert_state, check_video, final_job, nothing_leased, request, staged_pipelines, start, submit,
};
use arbiter_test_kit::processes::{alive, gone};
use arbiter_test_kit::waiting::eventually;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vpb::JobState;

/// How long a standby may take to start and read the pipeline on a loaded machine.
const STANDBY_READY: Duration = Duration::from_secs(120);

/// The pids of running standby workers for pipelines under `pipelines`.
fn standbys(pipelines: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = pipelines.display().to_string();
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.get(1).is_some_and(|a| a == "standby")
                && args.iter().any(|a| a.starts_with(&needle))
        })
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort();
    pids
}

/// Waits until the supervisor's log says a standby other than `except` is ready, and
/// returns its pid.
async fn ready_standby(
    supervisor: &arbiter_test_kit::supervisor::Supervisor,
    pipelines: &Path,
    except: &[u32],
) -> u32 {
    eventually(STANDBY_READY, "a ready standby worker", || async {
        let log = supervisor.log();
        let pids = standbys(pipelines);
        pids.into_iter().find(|pid| {
            !except.contains(pid)
                && log.lines().any(|l| {
                    l.contains("standby worker ready")
                        && l.split_whitespace().any(|w| w == format!("pid={pid}"))
                })
        })
    })
    .await
}

/// The same request on every run: seeded, with the stages' default sizes.
fn seeded() -> vpb::VideoRequest {
    let mut request = request("tiny-staged", "a lighthouse at dusk", 2);
    request.seed = Some(11);
    request
}

fn metadata(job: &vpb::Job) -> serde_json::Value {
    let result = job.result.as_ref().expect("a succeeded job has a result");
    serde_json::from_slice(&std::fs::read(&result.metadata_path).expect("metadata.json"))
        .expect("metadata.json is JSON")
}

fn video_bytes(job: &vpb::Job) -> Vec<u8> {
    let result = job.result.as_ref().expect("a succeeded job has a result");
    std::fs::read(&result.video_path).expect("the video")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_to_a_standby_makes_the_video_a_spawned_worker_makes() {
    let pipelines = staged_pipelines();

    // Spawned: the reference (read before its supervisor's directory goes).
    let spawned = {
        let supervisor = start(&pipelines, "8GiB", "standby = false\n").await;
        let video = supervisor.video_client().await;
        let id = submit(&video, seeded()).await;
        let job = final_job(&video, &id).await;
        assert_state(&job, JobState::Succeeded);
        assert!(!job.prestarted, "with standby off the worker is spawned");
        assert!(
            standbys(pipelines.path()).is_empty(),
            "no standby with standby = false"
        );
        assert!(metadata(&job).get("prestarted").is_none());
        video_bytes(&job)
    };

    let supervisor = start(&pipelines, "8GiB", "").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;
    let standby = ready_standby(&supervisor, pipelines.path(), &[]).await;
    // Ready, it holds nothing: no lease, no record in the simulated GPU's table.
    nothing_leased(&client).await;
    assert!(
        !supervisor
            .simulated_dir()
            .join("0")
            .join(standby.to_string())
            .exists(),
        "a standby records no GPU memory"
    );

    let id = submit(&video, seeded()).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    assert!(job.prestarted, "the job's worker was the standby: {job:#?}");
    check_video(&job, 128, 128, 17, false);
    let recorded = metadata(&job);
    assert_eq!(recorded["worker_pid"].as_u64(), Some(u64::from(standby)));
    assert_eq!(recorded["prestarted"], true);
    assert!(
        recorded["handoff_to_claim_ms"]
            .as_f64()
            .is_some_and(|ms| ms >= 0.0),
        "{recorded}"
    );
    assert!(
        recorded["spawn_ms"].as_f64().is_some(),
        "timed from the handoff"
    );
    assert_eq!(
        video_bytes(&job),
        spawned,
        "the same request makes the same video, handed over or spawned"
    );
    // The handed-over worker exited after its job, its lease returned as any worker's.
    gone(standby, "the standby that ran the job").await;
    nothing_leased(&client).await;
    let log = std::fs::read_to_string(&job.log_path).expect("the job's log");
    assert!(
        log.contains("handed a job"),
        "the worker's output went to the job's log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_is_started_again_after_its_handoff_and_after_it_is_killed() {
    let pipelines = staged_pipelines();
    let mut supervisor = start(&pipelines, "8GiB", "").await;
    let video = supervisor.video_client().await;

    let first = ready_standby(&supervisor, pipelines.path(), &[]).await;
    let id = submit(&video, seeded()).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    assert!(job.prestarted);

    // Behind the handoff, a new one.
    let second = ready_standby(&supervisor, pipelines.path(), &[first]).await;
    assert_eq!(
        standbys(pipelines.path()),
        [second],
        "one standby per pipeline"
    );

    // Killed from outside, it is replaced (after the first backoff).
    kill(Pid::from_raw(second as i32), Signal::SIGKILL).expect("kill the standby");
    gone(second, "the killed standby").await;
    let third = ready_standby(&supervisor, pipelines.path(), &[first, second]).await;

    // The replacement takes the next job.
    let id = submit(&video, seeded()).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    assert!(job.prestarted);
    assert_eq!(
        metadata(&job)["worker_pid"].as_u64(),
        Some(u64::from(third))
    );

    // At shutdown the waiting standby ends with the supervisor.
    let fourth = ready_standby(&supervisor, pipelines.path(), &[first, second, third]).await;
    supervisor.terminate().await;
    gone(fourth, "the standby of a stopped supervisor").await;
}
