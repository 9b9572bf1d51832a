//! A video job from start to end on the real supervisor and its real `arbiter-video`
//! worker (the built-in `tiny` pipeline, on the CPU): Generate's stream of states, the video
//! and metadata it writes, its lease given back, the record kept for Get, List and Watch;
//! where every worker runs (one directory, CUDA's kernel cache set); and what a job does
//! without ffmpeg.
//!
//! Each test starts its own supervisor on a simulated GPU (`arbiter_test_kit::jobs`
//! describes the test pipeline its jobs run), on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use std::path::Path;
use std::time::Duration;

use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::assert_refused;
use arbiter_test_kit::binaries;
use arbiter_test_kit::jobs::{
    BASE_CONFIG, JOB_TIMEOUT, SOON, TINY_LEASE, assert_state, cancel, check_video, final_job, get,
    is_final, list, nothing_leased, request, seconds, state, submit, time,
};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::waiting::within;
use tonic::Code;
use vpb::JobState;

/// Where a state lies on the way from Queued to a final state.
fn rank(state: JobState) -> u8 {
    match state {
        JobState::Unspecified => 0,
        JobState::Queued => 1,
        JobState::Starting => 2,
        JobState::Running => 3,
        JobState::Releasing => 4,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled => 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_job_generates_a_video_and_gives_its_lease_back() {
    let supervisor = Supervisor::builder().gpus("4GiB").start().await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;

    let mut stream = video
        .clone()
        .generate(vpb::VideoRequest {
            prompt: "a red fox in the snow".into(),
            seed: Some(7),
            ..Default::default()
        })
        .await
        .expect("Generate")
        .into_inner();
    let mut seen = Vec::new();
    let job = within(JOB_TIMEOUT, "the Generate stream to end", async {
        let mut last = None;
        while let Some(job) = stream.message().await.expect("a Generate update") {
            seen.push(state(&job));
            last = Some(job);
        }
        last.expect("Generate sent at least one update")
    })
    .await;

    // Queued → … → Succeeded, never backwards (a watch may skip states, not reorder them).
    assert_eq!(seen.first(), Some(&JobState::Queued), "{seen:?}");
    assert_state(&job, JobState::Succeeded);
    assert!(
        seen.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
        "states went backwards: {seen:?}"
    );
    assert!(
        seen[..seen.len() - 1].iter().all(|s| !is_final(*s)),
        "a final state before the end: {seen:?}"
    );

    assert_eq!(job.pipeline, "tiny");
    assert_eq!(job.seed, 7);
    assert_eq!(job.attempt, 1);
    assert_eq!(job.lease_bytes, TINY_LEASE);
    assert!(job.error.is_empty(), "{}", job.error);
    assert!(
        !job.lease_id.is_empty() && !job.gpu_uuid.is_empty(),
        "{job:#?}"
    );
    assert_eq!(job.worker_pid, 0, "no worker once the job ended");
    let request = job.request.as_ref().expect("the request as accepted");
    assert_eq!(
        (request.width, request.height, request.frames, request.fps),
        (128, 128, 17, 8),
        "defaults filled in"
    );
    let (created, started, finished) = (
        time(&job.created_at),
        time(&job.started_at),
        time(&job.finished_at),
    );
    assert!(created <= started && started <= finished, "{job:#?}");

    check_video(&job, 128, 128, 17, false);
    let result = job.result.as_ref().unwrap();
    assert!(result.memory_return.is_some(), "{result:#?}");
    assert!(seconds(&result.worker) > Duration::ZERO);
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result.metadata_path).unwrap()).unwrap();
    assert_eq!(metadata["job_id"], job.job_id.as_str());
    assert_eq!(metadata["request"]["seed"], 7);
    assert_eq!(metadata["lease_bytes"], TINY_LEASE);

    // By the time the job is final its lease is gone, and no memory is granted.
    nothing_leased(&client).await;

    // The record stays: Get, List and Watch (one final message) all show it.
    assert_eq!(get(&video, &job.job_id).await, job);
    assert!(list(&video).await.iter().any(|j| j.job_id == job.job_id));
    let mut watch = video
        .clone()
        .watch(vpb::GetJobRequest {
            job_id: job.job_id.clone(),
        })
        .await
        .expect("Watch")
        .into_inner();
    let first = within(SOON, "Watch", watch.message()).await.unwrap();
    assert_state(&first.expect("the job now"), JobState::Succeeded);
    assert!(
        within(SOON, "Watch to end", watch.message())
            .await
            .unwrap()
            .is_none()
    );

    assert_refused(
        cancel(&video, &job.job_id).await,
        Code::FailedPrecondition,
        &["already ended"],
    );
    assert_refused(
        video
            .clone()
            .get(vpb::GetJobRequest {
                job_id: "job-nope".into(),
            })
            .await,
        Code::NotFound,
        &["job-nope"],
    );
}

/// Every built-in worker runs in one working directory, with CUDA's kernel cache under the
/// state directory: cuDNN compiles its attention kernels in each new process, and CUDA's
/// on-disk cache of them misses when the working directory differs, which cost every job
/// 1-3 s on the H100 and H200 while workers ran in their job directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_runs_in_one_directory_with_the_kernel_cache_set() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let seen = dir.path().join("workers.txt");
    let wrapper = dir.path().join("worker.sh");
    let worker = binaries::video();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$(pwd -P)|$CUDA_CACHE_PATH\" >> '{}'\nexec '{}' \"$@\"\n",
            seen.display(),
            worker.display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make the wrapper executable");
    let supervisor = Supervisor::builder()
        .gpus("4GiB")
        .config(&format!(
            "{BASE_CONFIG}worker = \"{}\"\n",
            wrapper.display()
        ))
        // An empty value counts as unset, whatever the test's own environment holds.
        .env("CUDA_CACHE_PATH", "")
        .start()
        .await;
    let video = supervisor.video_client().await;
    for prompt in ["a red fox in the snow", "a grey heron in the reeds"] {
        let id = submit(
            &video,
            vpb::VideoRequest {
                prompt: prompt.into(),
                ..Default::default()
            },
        )
        .await;
        assert_state(&final_job(&video, &id).await, JobState::Succeeded);
    }
    let state = supervisor.state_dir();
    let expected = format!(
        "{}|{}",
        state
            .join("worker")
            .canonicalize()
            .expect("the workers' directory exists")
            .display(),
        state.join("cuda-cache").display()
    );
    let lines: Vec<String> = std::fs::read_to_string(&seen)
        .expect("the wrapper ran")
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines,
        vec![expected.clone(), expected],
        "{}",
        supervisor.log()
    );
    assert!(state.join("cuda-cache").is_dir(), "the kernel cache exists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ffmpeg_a_job_fails_up_front_or_writes_frames_when_allowed() {
    // Workers inherit the supervisor's PATH: one without ffmpeg on it.
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().display().to_string();
    let strict = Supervisor::builder()
        .gpus("4GiB")
        .env("PATH", &path)
        .start()
        .await;
    let video = strict.video_client().await;
    let id = submit(&video, request("tiny", "a fox", 2)).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Failed);
    assert!(job.error.contains("ffmpeg"), "{}", job.error);
    drop(strict);

    let lenient = Supervisor::builder()
        .gpus("4GiB")
        .env("PATH", &path)
        .config("[jobs]\nframes_without_ffmpeg = true\n")
        .start()
        .await;
    let video = lenient.video_client().await;
    let id = submit(&video, request("tiny", "a fox", 2)).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    let result = job.result.as_ref().unwrap();
    let frames = Path::new(&result.video_path);
    assert!(frames.ends_with("frames"), "{}", frames.display());
    let pngs = std::fs::read_dir(frames)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "png"))
        })
        .count();
    assert_eq!(pngs, 17, "one PNG per frame");
    assert!(result.video_bytes > 0, "the frames' total size");
}
