//! Video jobs that end badly, with the test pipeline: a cancel stops a running worker's
//! whole process group (and ends a queued job without one), a killed worker fails its job
//! with its log's tail or is retried with `retry_on_crash`, a worker past its timeout is
//! killed, and one over its lease is killed where configured (and reported where not).
//!
//! Each test starts its own supervisor on a simulated GPU (`arbiter_test_kit::jobs`
//! describes the test pipeline its jobs run), on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::assert_refused;
use arbiter_test_kit::jobs::{
    BASE_CONFIG, FOREVER, SOON, TINY_LEASE, assert_state, cancel, child_pid, final_job, get,
    greedy_pid, is_final, nothing_leased, running, start, state, submit, test_job, test_pipelines,
    wait_for,
};
use arbiter_test_kit::leases::leases;
use arbiter_test_kit::processes::{alive, gone};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::waiting::within;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tonic::Code;
use vpb::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_worker_group_and_a_queued_job() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "2GiB", "").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;

    let runner = submit(&video, test_job("child", FOREVER)).await;
    let job = running(&video, &runner).await;
    let (worker, child) = (job.worker_pid, child_pid(&job).await);
    assert!(alive(worker) && alive(child));
    assert_eq!(leases(&client).await.len(), 1);

    // A second job waits for the lease; cancelling it ends it without a worker.
    let waiter = submit(&video, test_job("waiter", 5)).await;
    wait_for(&video, &waiter, SOON, "queued", |j| {
        state(j) == JobState::Queued
    })
    .await;
    cancel(&video, &waiter)
        .await
        .expect("Cancel the queued job");
    let waited = final_job(&video, &waiter).await;
    assert_state(&waited, JobState::Cancelled);
    assert!(
        waited.started_at.is_none() && waited.worker_pid == 0,
        "{waited:#?}"
    );
    assert_state(&get(&video, &runner).await, JobState::Running);

    // Cancelling the running job stops its whole process group and frees its lease.
    cancel(&video, &runner)
        .await
        .expect("Cancel the running job");
    let job = final_job(&video, &runner).await;
    assert_state(&job, JobState::Cancelled);
    assert!(job.error.is_empty(), "{}", job.error);
    gone(worker, "the cancelled worker").await;
    gone(child, "the cancelled worker's child").await;
    nothing_leased(&client).await;
    assert_refused(
        cancel(&video, &runner).await,
        Code::FailedPrecondition,
        &["already ended"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_fails_its_job_with_the_log_tail() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "4GiB", "").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;

    let id = submit(&video, test_job("child", FOREVER)).await;
    let job = running(&video, &id).await;
    let (worker, child) = (job.worker_pid, child_pid(&job).await);
    // Wait for a step line in the log, for the tail to show.
    wait_for(&video, &id, SOON, "a step done", |j| {
        j.progress.as_ref().is_some_and(|p| p.step >= 1)
    })
    .await;
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).expect("kill -9 the worker");

    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Failed);
    assert_eq!(job.attempt, 1, "no retry without retry_on_crash");
    for needle in ["signal 9", "Last lines", "test-pipeline: step 1 of 600"] {
        assert!(job.error.contains(needle), "{needle:?} in: {}", job.error);
    }
    // A crash is a warning in the supervisor's log, for log-based alerting.
    let log = supervisor.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("killed by signal 9")),
        "{log}"
    );
    gone(worker, "the killed worker").await;
    gone(child, "the killed worker's child").await;
    nothing_leased(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_on_crash_a_crashed_or_killed_worker_is_retried() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "4GiB", "retry_on_crash = true\n").await;
    let video = supervisor.video_client().await;

    // A script that exits 9 without a word on attempt 1, and works on attempt 2.
    let crashes = submit(&video, test_job("crash-once", 3)).await;
    // A worker killed with SIGKILL mid-job on attempt 1.
    let killed = submit(&video, test_job("hang-once", 3)).await;
    let job = running(&video, &killed).await;
    assert_eq!(job.attempt, 1);
    let worker = job.worker_pid;
    kill(Pid::from_raw(worker as i32), Signal::SIGKILL).expect("kill -9 the worker");
    gone(worker, "the killed worker").await;

    for id in [&crashes, &killed] {
        let job = final_job(&video, id).await;
        assert_state(&job, JobState::Succeeded);
        assert_eq!(job.attempt, 2, "retried once: {job:#?}");
        let metadata: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&job.result.unwrap().metadata_path).unwrap())
                .unwrap();
        assert_eq!(metadata["attempt"], 2, "the output is the second attempt's");
    }
    let log = std::fs::read_to_string(get(&video, &crashes).await.log_path).unwrap();
    assert!(log.contains("crashing on attempt 1"), "{log}");
    nothing_leased(&supervisor.unix_client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_overstays_its_timeout_is_killed() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "4GiB", "").await;
    let video = supervisor.video_client().await;

    let id = submit(
        &video,
        vpb::VideoRequest {
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            ..test_job("child", FOREVER)
        },
    )
    .await;
    let job = running(&video, &id).await;
    let (worker, child) = (job.worker_pid, child_pid(&job).await);
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Failed);
    assert!(job.error.contains("timed out after 2s"), "{}", job.error);
    assert!(job.error.contains("test-pipeline: step"), "{}", job.error);
    gone(worker, "the timed-out worker").await;
    gone(child, "the timed-out worker's child").await;
    nothing_leased(&supervisor.unix_client().await).await;
}

/// A supervisor on one 8GiB simulated GPU sampled every 100ms, with `overuse_action` set,
/// serving the test pipeline from `pipelines`.
async fn start_with_overuse_action(pipelines: &TempDir, action: &str) -> Supervisor {
    Supervisor::builder()
        .gpus("8GiB")
        .sample_interval("100ms")
        .config(&format!(
            "{BASE_CONFIG}overuse_action = \"{action}\"\nmemory_tolerance = \"64MiB\"\n"
        ))
        .pipelines_dir(pipelines.path())
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_its_lease_is_killed_when_configured() {
    let pipelines = test_pipelines();
    let supervisor = start_with_overuse_action(&pipelines, "kill").await;
    let video = supervisor.video_client().await;

    // Three times its lease, and a child in its group, until it is stopped.
    let id = submit(&video, test_job("greedy child", FOREVER)).await;
    let job = wait_for(&video, &id, SOON, "a worker", |j| {
        j.worker_pid != 0 || is_final(state(j))
    })
    .await;
    let (worker, child) = (greedy_pid(&job).await, child_pid(&job).await);
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Failed);
    assert!(job.error.contains("lease"), "{}", job.error);
    assert!(
        job.error.contains(&format!(
            "used {} of GPU memory on a {} lease",
            arbiter::ByteSize(3 * TINY_LEASE),
            arbiter::ByteSize(TINY_LEASE)
        )),
        "{}",
        job.error
    );
    gone(worker, "the greedy worker").await;
    gone(child, "the greedy worker's child").await;
    nothing_leased(&supervisor.unix_client().await).await;

    // With the default action, "log", the same job runs to the end, and the event feed
    // tells of its overuse.
    let pipelines = test_pipelines();
    let supervisor = start_with_overuse_action(&pipelines, "log").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;
    let mut events = client
        .clone()
        .watch_events(spb::WatchEventsRequest {
            include_samples: false,
        })
        .await
        .expect("WatchEvents")
        .into_inner();

    let id = submit(&video, test_job("greedy", 10)).await;
    let holder = format!("video job {id}");
    let overuse = within(SOON, "an Overuse event for the greedy job", async {
        loop {
            let event = events
                .message()
                .await
                .expect("an event")
                .expect("the event feed goes on");
            if let Some(spb::event::Kind::Overuse(overuse)) = event.kind
                && overuse.holder == holder
            {
                return overuse;
            }
        }
    })
    .await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(overuse.lease_id, job.lease_id, "{overuse:?}");
    assert_eq!(overuse.lease_bytes, TINY_LEASE, "{overuse:?}");
    assert_eq!(overuse.used_bytes, 3 * TINY_LEASE, "{overuse:?}");
    let peak = job.progress.as_ref().map_or(0, |p| p.peak_vram_bytes);
    assert_eq!(peak, 3 * TINY_LEASE, "the job saw its overuse: {job:#?}");
    gone(greedy_pid(&job).await, "the greedy worker").await;
    nothing_leased(&client).await;
}
