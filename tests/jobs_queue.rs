//! Video jobs waiting for their leases, with the test pipeline: jobs whose leases do not fit
//! together run one after another, jobs whose leases fit run at once (as the records show),
//! and a flood of submits past `max_queue` is refused, never dropped.
//!
//! Each test starts its own supervisor on a simulated GPU (`arbiter_test_kit::jobs`
//! describes the test pipeline its jobs run), on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use std::time::{Duration, Instant};

use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::jobs::{
    JOB_TIMEOUT, SOON, TINY_LEASE, Video, assert_state, final_job, get, is_final, list,
    nothing_leased, seconds, start, state, submit, test_job, test_pipelines, time,
};
use arbiter_test_kit::leases::status;
use arbiter_test_kit::waiting::eventually;
use tonic::Code;
use vpb::JobState;

/// Polls List until every job in `ids` is final; returns the most that were in Starting or
/// Running together in one snapshot, and whether some job waited while another ran.
async fn watch_overlap(video: &Video, ids: &[String]) -> (usize, bool) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    let mut most = 0;
    let mut waited = false;
    loop {
        let jobs: Vec<vpb::Job> = list(video)
            .await
            .into_iter()
            .filter(|j| ids.contains(&j.job_id))
            .collect();
        let active = jobs
            .iter()
            .filter(|j| matches!(state(j), JobState::Starting | JobState::Running))
            .count();
        most = most.max(active);
        waited |= active > 0 && jobs.iter().any(|j| state(j) == JobState::Queued);
        if jobs.len() == ids.len() && jobs.iter().all(|j| is_final(state(j))) {
            return (most, waited);
        }
        assert!(Instant::now() < deadline, "jobs still not final: {jobs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_whose_leases_do_not_fit_together_run_one_after_another() {
    let pipelines = test_pipelines();
    // 2GiB holds one 1.25GiB lease, not two.
    let supervisor = start(&pipelines, "2GiB", "").await;
    let video = supervisor.video_client().await;

    let ids = vec![
        submit(&video, test_job("first", 15)).await,
        submit(&video, test_job("second", 15)).await,
    ];
    let (most, waited) = watch_overlap(&video, &ids).await;
    let mut jobs = Vec::new();
    for id in &ids {
        let job = get(&video, id).await;
        assert_state(&job, JobState::Succeeded);
        assert_eq!(job.lease_bytes, TINY_LEASE);
        jobs.push(job);
    }
    assert_eq!(most, 1, "two jobs ran at once on a GPU that fits one lease");
    assert!(waited, "one job should have waited in the queue");

    // From the records: the later one started only after the earlier one's worker ended
    // (its start may come before the earlier job's finished_at, which follows the memory
    // check, but not before that worker's exit).
    jobs.sort_by_key(|j| time(&j.started_at));
    let (earlier, later) = (&jobs[0], &jobs[1]);
    let earlier_exit =
        time(&earlier.started_at) + seconds(&earlier.result.as_ref().unwrap().worker);
    assert!(
        time(&later.started_at) + Duration::from_millis(100) >= earlier_exit,
        "the later job started {:?} before the earlier one's worker exited",
        earlier_exit.duration_since(time(&later.started_at))
    );
    assert!(
        seconds(&later.result.as_ref().unwrap().queued) > Duration::ZERO,
        "the later job waited for its lease"
    );
    nothing_leased(&supervisor.unix_client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_whose_leases_fit_together_run_at_once() {
    let pipelines = test_pipelines();
    // 4GiB holds two 1.25GiB leases.
    let supervisor = start(&pipelines, "4GiB", "").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;

    let ids = vec![
        submit(&video, test_job("first", 30)).await,
        submit(&video, test_job("second", 30)).await,
    ];
    // Both running in one snapshot.
    eventually(SOON, "both jobs running at once", || async {
        let running = list(&video)
            .await
            .iter()
            .filter(|j| state(j) == JobState::Running)
            .count();
        (running == 2).then_some(())
    })
    .await;
    let granted: u64 = status(&client)
        .await
        .gpus
        .iter()
        .map(|g| g.granted_bytes)
        .sum();
    assert_eq!(granted, 2 * TINY_LEASE, "both leases granted at once");

    let mut jobs = Vec::new();
    for id in &ids {
        let job = final_job(&video, id).await;
        assert_state(&job, JobState::Succeeded);
        jobs.push(job);
    }
    jobs.sort_by_key(|j| time(&j.started_at));
    let earlier_exit =
        time(&jobs[0].started_at) + seconds(&jobs[0].result.as_ref().unwrap().worker);
    assert!(
        time(&jobs[1].started_at) < earlier_exit,
        "the records should show the two workers overlapping: {jobs:#?}"
    );
    nothing_leased(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_submits_past_max_queue_is_refused_never_dropped() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "4GiB", "max_queue = 3\n").await;
    let video = supervisor.video_client().await;

    // All at once, on separate connections, so the supervisor handles them concurrently.
    const FLOOD: usize = 40;
    let mut clients = Vec::new();
    for _ in 0..FLOOD {
        clients.push(supervisor.video_client().await);
    }
    let flood: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut video)| {
            tokio::spawn(async move {
                video
                    .submit(test_job(&format!("flood {i}"), 30))
                    .await
                    .map(|r| r.into_inner().job_id)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for reply in flood {
        match reply.await.expect("the submitting task") {
            Ok(id) => accepted.push(id),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("queue is full"), "{status:?}");
                refused += 1;
            }
        }
    }
    let jobs = list(&video).await;
    assert!(
        jobs.iter().all(|j| !is_final(state(j))),
        "a job ended during the flood, so the count below would not hold: {jobs:#?}"
    );
    assert_eq!(accepted.len(), 3, "exactly max_queue accepted");
    assert_eq!(refused, FLOOD - 3);
    // Only the accepted ones exist.
    let mut listed: Vec<String> = jobs.into_iter().map(|j| j.job_id).collect();
    listed.sort();
    accepted.sort();
    assert_eq!(listed, accepted);

    for id in &accepted {
        assert_state(&final_job(&video, id).await, JobState::Succeeded);
    }
    // Their places are free again.
    let again = submit(&video, test_job("after the flood", 1)).await;
    assert_state(&final_job(&video, &again).await, JobState::Succeeded);
}
