//! Video jobs across a supervisor crash: accepted jobs are persisted, so after a SIGKILL
//! and a restart on the same state directory the interrupted job runs again (its old
//! worker and that worker's children gone), the queued one runs once, and finished jobs
//! keep their results.
//!
//! Each test starts its own supervisor on a simulated GPU (`arbiter_test_kit::jobs`
//! describes the test pipeline its jobs run), on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use std::path::Path;

use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::jobs::{
    SOON, assert_state, child_pid, final_job, get, list, nothing_leased, running, start, state,
    submit, test_job, test_pipelines, wait_for,
};
use arbiter_test_kit::processes::{alive, gone};
use vpb::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_supervisor_crash_the_job_is_requeued_and_finished_jobs_are_kept() {
    let pipelines = test_pipelines();
    // One lease at a time: a job runs while another waits.
    let mut supervisor = start(&pipelines, "2GiB", "").await;
    let video = supervisor.video_client().await;

    let done = submit(&video, test_job("done before the crash", 2)).await;
    let done = final_job(&video, &done).await;
    assert_state(&done, JobState::Succeeded);

    let interrupted = submit(&video, test_job("child hang-once", 3)).await;
    let job = running(&video, &interrupted).await;
    let (worker, child) = (job.worker_pid, child_pid(&job).await);
    let waiting = submit(&video, test_job("waiting at the crash", 3)).await;
    wait_for(&video, &waiting, SOON, "queued", |j| {
        state(j) == JobState::Queued
    })
    .await;

    supervisor.kill();
    // The worker dies with its parent (its parent-death signal).
    gone(worker, "the worker of the killed supervisor").await;

    supervisor.restart().await;
    let video = supervisor.video_client().await;
    // Whatever the old worker started is gone too.
    gone(child, "the old worker's child").await;

    let kept = get(&video, &done.job_id).await;
    assert_state(&kept, JobState::Succeeded);
    assert_eq!(
        kept.result, done.result,
        "the finished job keeps its result"
    );
    assert!(Path::new(&kept.result.as_ref().unwrap().video_path).is_file());

    let job = final_job(&video, &interrupted).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.attempt, 2, "re-queued after the crash: {job:#?}");
    let job = final_job(&video, &waiting).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(
        job.attempt, 1,
        "a job that never started is not counted again"
    );
    assert!(!alive(worker) && !alive(child));
    assert_eq!(list(&video).await.len(), 3);
    nothing_leased(&supervisor.unix_client().await).await;
}
