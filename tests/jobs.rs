//! Whole-system tests of video jobs: the real `arbiter-supervisor` binary on a simulated GPU,
//! spawning real workers: the built-in `arbiter-video` (the `tiny` pipeline, on the CPU),
//! the example external pipeline (`examples/external-pipeline`), and a small external
//! pipeline written by these tests whose steps take a known time.
//!
//! Each test starts its own supervisor. Waits are bounded by generous timeouts; nothing
//! asserts how fast something happened. Order is asserted from what the supervisor
//! recorded (job states seen together in one List, timestamps), never from sleeps.
//!
//! The test pipeline (`test-steps`, see [`SCRIPT`]) sleeps [`STEP_SECONDS`] per step of the
//! request's `steps`, so a request picks its job's length. Words in the prompt pick extra
//! behaviour: `child` (start a `sleep` in the worker's process group and write its pid to
//! `child.pid` in the output directory), `crash-once` (exit 9 without a word on attempt 1),
//! `hang-once` (hang after the first step on attempt 1), `greedy` (write its own record in the
//! simulated GPU's process table: three times its lease, and its pid to `greedy.pid` in the
//! output directory). Its lease is 1.25GiB, like tiny's.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use arbiter::pb::supervisor::v1 as spb;
use arbiter::pb::video::v1 as vpb;
use arbiter::pb::worker::v1 as wpb;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{
    Client, GIB, Supervisor, assert_refused, eventually, leases, status, within, workspace_root,
};
use tempfile::TempDir;
use tonic::Code;
use tonic::transport::Channel;
use vpb::JobState;
use vpb::video_client::VideoClient;

type Video = VideoClient<Channel>;

/// The lease of a tiny job at its default size: 1GiB peak + 256MiB margin.
const TINY_LEASE: u64 = GIB + (256 << 20);
/// The lease of the example external pipeline at its default size: 2GiB + 512MiB.
const EXAMPLE_LEASE: u64 = 2 * GIB + (512 << 20);
/// The longest a job may take to end, on a loaded 2-core machine.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Long enough for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(20);

/// The test pipeline's name, and how long each of its steps sleeps.
const TEST_PIPELINE: &str = "test-steps";
const STEP_SECONDS: f64 = 0.1;

/// Steps for a job that outlives any test unless it is stopped (60 s).
const FOREVER: u32 = 600;

const MANIFEST: &str = r#"
name = "test-steps"
description = "for the tests: sleeps per step; words in the prompt pick a behaviour"
command = ["python3", "pipeline.py", "STEP_SECONDS"]

[rules]
width_multiple = 32
height_multiple = 32
min_side = 64
max_width = 256
max_height = 256
frames_step = 8
frames_offset = 1
max_frames = 49
min_fps = 1
max_fps = 60
max_steps = 1000
max_duration_s = 20.0

[defaults]
width = 64
height = 64
frames = 9
fps = 8
steps = 5

[memory]
peak = "1GiB"
margin = "256MiB"
"#;

/// The test pipeline's script (run from its directory, as the manifest's `command`).
const SCRIPT: &str = r#"
import json, os, subprocess, sys, time

def say(**event):
    print(json.dumps(event), flush=True)

def log(text):
    print(f"test-pipeline: {text}", file=sys.stderr, flush=True)

def main():
    request = json.loads(sys.stdin.readline())
    seconds = float(sys.argv[1])
    prompt, attempt, out = request["prompt"], request["attempt"], request["output_dir"]
    os.makedirs(out, exist_ok=True)
    log(f"attempt {attempt} of {request['job_id']}: {prompt}")
    if "crash-once" in prompt and attempt == 1:
        log("crashing on attempt 1")
        os._exit(9)
    if "child" in prompt:
        child = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(out, "child.pid.tmp"), "w") as f:
            f.write(str(child.pid))
        os.rename(os.path.join(out, "child.pid.tmp"), os.path.join(out, "child.pid"))
    if "greedy" in prompt:
        # What a worker that allocates more than it was lent looks like to the supervisor.
        lease = int(os.environ["ARBITER_LEASE_BYTES"])
        table = os.path.join(os.environ["ARBITER_SIMULATED_GPU_DIR"],
                             os.environ["ARBITER_SIMULATED_GPU_INDEX"])
        record = os.path.join(table, str(os.getpid()))
        with open(record + ".tmp", "w") as f:
            f.write(str(3 * lease))
        os.rename(record + ".tmp", record)
        with open(os.path.join(out, "greedy.pid.tmp"), "w") as f:
            f.write(str(os.getpid()))
        os.rename(os.path.join(out, "greedy.pid.tmp"), os.path.join(out, "greedy.pid"))
        log(f"using {3 * lease} bytes on a lease of {lease}")
    steps = request["steps"]
    for step in range(1, steps + 1):
        # The log line first: once the supervisor shows the step, the log has it.
        log(f"step {step} of {steps}")
        say(event="progress", stage="denoise", step=step, total_steps=steps)
        if "hang-once" in prompt and attempt == 1:
            log("hanging on attempt 1")
            time.sleep(600)
        time.sleep(seconds)
    video = os.path.join(out, "video.mp4")
    with open(video, "wb") as f:
        f.write(b"a stand-in for a video")
    metadata = os.path.join(out, "metadata.json")
    with open(metadata, "w") as f:
        json.dump({"attempt": attempt, "pid": os.getpid()}, f)
    say(event="done", video_path=video, metadata_path=metadata)
    return 0

sys.exit(main())
"#;

/// A pipelines directory holding the test pipeline. Keep it alive longer than the
/// supervisor that serves it (declare it first).
fn test_pipelines() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("arbiter-pipelines-")
        .tempdir()
        .expect("a temporary directory");
    let pipeline = dir.path().join(TEST_PIPELINE);
    std::fs::create_dir(&pipeline).expect("create the pipeline directory");
    std::fs::write(
        pipeline.join("manifest.toml"),
        MANIFEST.replace("STEP_SECONDS", &STEP_SECONDS.to_string()),
    )
    .expect("write the manifest");
    std::fs::write(pipeline.join("pipeline.py"), SCRIPT).expect("write the script");
    dir
}

/// Settings every test's supervisor gets: a short kill grace, so stops are quick.
const BASE_CONFIG: &str = "[jobs]\nkill_grace = \"2s\"\n";

/// A supervisor on one simulated GPU of `gpu`, serving the test pipeline from `pipelines`.
async fn start(pipelines: &TempDir, gpu: &str, extra_jobs_config: &str) -> Supervisor {
    Supervisor::builder()
        .gpus(gpu)
        .config(&format!("{BASE_CONFIG}{extra_jobs_config}"))
        .pipelines_dir(pipelines.path())
        .start()
        .await
}

fn request(pipeline: &str, prompt: &str, steps: u32) -> vpb::VideoRequest {
    vpb::VideoRequest {
        prompt: prompt.into(),
        pipeline: pipeline.into(),
        steps,
        ..Default::default()
    }
}

/// A request for the test pipeline that takes `steps` steps.
fn test_job(prompt: &str, steps: u32) -> vpb::VideoRequest {
    request(TEST_PIPELINE, prompt, steps)
}

async fn submit(video: &Video, request: vpb::VideoRequest) -> String {
    video
        .clone()
        .submit(request)
        .await
        .expect("Submit")
        .into_inner()
        .job_id
}

async fn get(video: &Video, id: &str) -> vpb::Job {
    video
        .clone()
        .get(vpb::GetJobRequest { job_id: id.into() })
        .await
        .expect("Get")
        .into_inner()
}

async fn list(video: &Video) -> Vec<vpb::Job> {
    video
        .clone()
        .list(vpb::ListJobsRequest::default())
        .await
        .expect("List")
        .into_inner()
        .jobs
}

async fn cancel(video: &Video, id: &str) -> Result<vpb::Job, tonic::Status> {
    video
        .clone()
        .cancel(vpb::GetJobRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner())
}

fn state(job: &vpb::Job) -> JobState {
    JobState::try_from(job.state).expect("a known job state")
}

fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Polls Get until `accept` takes the job, failing the test after `limit`.
async fn wait_for(
    video: &Video,
    id: &str,
    limit: Duration,
    what: &str,
    accept: impl Fn(&vpb::Job) -> bool,
) -> vpb::Job {
    eventually(limit, &format!("job {id}: {what}"), || async {
        let job = get(video, id).await;
        accept(&job).then_some(job)
    })
    .await
}

/// Waits for the job's final state.
async fn final_job(video: &Video, id: &str) -> vpb::Job {
    wait_for(video, id, JOB_TIMEOUT, "a final state", |j| {
        is_final(state(j))
    })
    .await
}

/// Waits until the job runs (its worker has reported progress), and returns it.
async fn running(video: &Video, id: &str) -> vpb::Job {
    let job = wait_for(video, id, SOON, "Running", |j| {
        state(j) == JobState::Running || is_final(state(j))
    })
    .await;
    assert_eq!(state(&job), JobState::Running, "{job:#?}");
    assert_ne!(job.worker_pid, 0, "a running job names its worker");
    job
}

#[track_caller]
fn assert_state(job: &vpb::Job, expected: JobState) {
    assert_eq!(
        state(job),
        expected,
        "job {} error: {}\n{job:#?}",
        job.job_id,
        job.error
    );
}

/// The job's own directory (where its log, inputs and output are).
fn job_dir(job: &vpb::Job) -> PathBuf {
    Path::new(&job.log_path)
        .parent()
        .expect("the log lies in the job's directory")
        .to_path_buf()
}

/// The pid of the `sleep` a `child` job started, once it has written it.
async fn child_pid(job: &vpb::Job) -> u32 {
    let path = job_dir(job).join("output/child.pid");
    eventually(SOON, "the test pipeline's child pid", || async {
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
    .await
}

/// The pid of a `greedy` job's worker, once it has written it (the file outlives the worker).
async fn greedy_pid(job: &vpb::Job) -> u32 {
    let path = job_dir(job).join("output/greedy.pid");
    eventually(SOON, "the greedy worker's pid", || async {
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
    .await
}

/// Whether `pid` is a live process (a zombie, dead but not yet reaped by whoever adopted
/// it, counts as gone).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

async fn gone(pid: u32, what: &str) {
    eventually(SOON, &format!("{what} (pid {pid}) to be gone"), || async {
        (!alive(pid)).then_some(())
    })
    .await
}

/// No lease left, and nothing granted on any GPU.
async fn nothing_leased(client: &Client) {
    let left = leases(client).await;
    assert!(left.is_empty(), "leases left after the jobs: {left:#?}");
    for gpu in status(client).await.gpus {
        assert_eq!(gpu.granted_bytes, 0, "GPU {} still has grants", gpu.index);
    }
}

fn time(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("a timestamp")).expect("a valid timestamp")
}

fn seconds(duration: &Option<prost_types::Duration>) -> Duration {
    Duration::try_from(duration.expect("a duration")).expect("a non-negative duration")
}

/// ffprobe's view of a media file's streams: (codec_type, width, height, frames counted).
fn probe(path: &Path) -> Vec<(String, u64, u64, u64)> {
    let output = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=codec_type,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        output.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe's JSON");
    let number = |v: &serde_json::Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    };
    json["streams"]
        .as_array()
        .expect("a list of streams")
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or_default().to_string(),
                number(&s["width"]),
                number(&s["height"]),
                number(&s["nb_read_frames"]),
            )
        })
        .collect()
}

/// ffprobe's view of a file's audio track: channels and duration in seconds.
fn audio_track(path: &Path) -> (u64, f64) {
    let output = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0", "-show_entries"])
        .args(["stream=channels,duration", "-of", "json"])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("ffprobe's JSON");
    let stream = &json["streams"][0];
    let channels = stream["channels"].as_u64().unwrap_or(0);
    let duration = stream["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (channels, duration)
}

/// Checks a succeeded job's files: the video (as ffprobe sees it) and the metadata.
#[track_caller]
fn check_video(job: &vpb::Job, width: u64, height: u64, frames: u64, audio: bool) {
    let result = job.result.as_ref().expect("a succeeded job has a result");
    let video = Path::new(&result.video_path);
    assert!(video.is_file(), "{} is not a file", video.display());
    assert_eq!(
        result.video_bytes,
        std::fs::metadata(video).unwrap().len(),
        "video_bytes is the file's size"
    );
    assert!(Path::new(&result.metadata_path).is_file());
    assert!(result.metadata_bytes > 0);
    let streams = probe(video);
    let videos: Vec<_> = streams.iter().filter(|s| s.0 == "video").collect();
    assert_eq!(videos.len(), 1, "{streams:?}");
    assert_eq!(
        (videos[0].1, videos[0].2, videos[0].3),
        (width, height, frames),
        "{streams:?}"
    );
    assert_eq!(
        streams.iter().any(|s| s.0 == "audio"),
        audio,
        "audio stream expected: {audio}; streams: {streams:?}"
    );
}

/// A valid WAV file: 16-bit mono PCM at 8kHz, one second of a 440Hz tone.
fn wav() -> Vec<u8> {
    let rate: u32 = 8000;
    let samples: Vec<i16> = (0..rate)
        .map(|i| {
            let t = i as f64 / rate as f64;
            ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
        })
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVE");
    wav.extend_from_slice(b"fmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&2u16.to_le_bytes()); // block align
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

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

// === the tests ===

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
    let worker = support::binary().with_file_name("arbiter-video");
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
        log.lines().any(|l| l.contains("WARN") && l.contains("killed by signal 9")),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_external_pipeline_succeeds_crashes_and_refuses() {
    // 8GiB: the three 2.5GiB leases fit at once.
    let supervisor = Supervisor::builder()
        .gpus("8GiB")
        .config(BASE_CONFIG)
        .pipelines_dir(workspace_root().join("examples"))
        .start()
        .await;
    let video = supervisor.video_client().await;
    let pipeline = "external-example";

    let ok = submit(&video, request(pipeline, "a test pattern", 0)).await;
    let crash = submit(&video, request(pipeline, "crash now", 0)).await;
    let refuse = submit(&video, request(pipeline, "refuse this", 0)).await;

    let job = final_job(&video, &ok).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.lease_bytes, EXAMPLE_LEASE);
    check_video(&job, 256, 256, 25, false);
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&job.result.unwrap().metadata_path).unwrap())
            .unwrap();
    assert_eq!(metadata["lease_bytes"], EXAMPLE_LEASE);

    let job = final_job(&video, &crash).await;
    assert_state(&job, JobState::Failed);
    assert!(
        job.error.contains("exit status: 9") && job.error.contains("without reporting"),
        "{}",
        job.error
    );

    let job = final_job(&video, &refuse).await;
    assert_state(&job, JobState::Failed);
    assert!(
        job.error
            .contains("this example refuses prompts starting with 'refuse'"),
        "{}",
        job.error
    );
    nothing_leased(&supervisor.unix_client().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field_and_inline_wav_is_muxed() {
    let inputs = tempfile::tempdir().expect("a temporary directory");
    let allowed = inputs.path().join("allowed");
    let elsewhere = inputs.path().join("elsewhere");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("sound.wav"), wav()).unwrap();
    std::fs::write(allowed.join("not-a-wav.wav"), b"just some text, no RIFF").unwrap();
    let supervisor = Supervisor::builder()
        .gpus("4GiB")
        .config(&format!(
            "{BASE_CONFIG}allowed_input_dirs = [{:?}]\n",
            allowed.display().to_string()
        ))
        .start()
        .await;
    let video = supervisor.video_client().await;
    let tiny = |prompt: &str| request("", prompt, 0);
    let submit_raw = |request: vpb::VideoRequest| {
        let mut video = video.clone();
        async move { video.submit(request).await.map(|r| r.into_inner()) }
    };
    let invalid = Code::InvalidArgument;

    let r = vpb::VideoRequest {
        width: 100,
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["width", "100", "32"]);
    let r = vpb::VideoRequest {
        frames: 16,
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["frames", "8k+1"]);
    assert_refused(
        submit_raw(request("no-such-pipeline", "a cat", 0)).await,
        invalid,
        &["pipeline", "no-such-pipeline", "tiny"],
    );
    assert_refused(submit_raw(tiny("  ")).await, invalid, &["prompt", "empty"]);
    let r = vpb::VideoRequest {
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["timeout"]);
    let audio = |source: vpb::media::Source| {
        Some(vpb::Media {
            source: Some(source),
        })
    };
    let outside = elsewhere.join("sound.wav").display().to_string();
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(outside.clone())),
        ..tiny("a cat")
    };
    assert_refused(
        submit_raw(r).await,
        invalid,
        &["audio", &outside, "outside the allowed input directories"],
    );
    // A way out of the allowed directory through `..` is no way out.
    let sneaky = allowed.join("../elsewhere/sound.wav").display().to_string();
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(sneaky)),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["audio", "outside"]);
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(
            allowed.join("not-a-wav.wav").display().to_string(),
        )),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["audio", "WAV"]);
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Data(
            b"GIF89a: a picture, not a sound".to_vec(),
        )),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["audio", "inline", "WAV"]);
    assert!(
        list(&video).await.is_empty(),
        "no refused request became a job"
    );

    // Inline WAV is saved into the job's directory, and the video gets it as its soundtrack.
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Data(wav())),
        seed: Some(1),
        ..tiny("a cat with a tune")
    };
    let id = submit_raw(r).await.expect("Submit with inline WAV").job_id;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    let saved = match job.request.as_ref().unwrap().audio.as_ref().unwrap().source {
        Some(vpb::media::Source::Path(ref path)) => PathBuf::from(path),
        ref other => panic!("inline audio should be recorded as its saved path: {other:?}"),
    };
    assert!(saved.starts_with(job_dir(&job)), "{}", saved.display());
    assert_eq!(std::fs::read(&saved).unwrap(), wav());
    check_video(&job, 128, 128, 17, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_service_refuses_wrong_tokens_and_other_processes() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "4GiB", "").await;
    let video = supervisor.video_client().await;
    let mut worker = supervisor.worker_client().await;
    let denied = Code::PermissionDenied;

    for token in ["not-a-token", ""] {
        assert_refused(
            worker
                .claim(wpb::ClaimRequest {
                    token: token.into(),
                })
                .await,
            denied,
            &["token"],
        );
        assert_refused(
            worker
                .report(wpb::ProgressReport {
                    token: token.into(),
                    ..Default::default()
                })
                .await,
            denied,
            &["token"],
        );
        assert_refused(
            worker
                .fail(wpb::Failure {
                    token: token.into(),
                    error: "no".into(),
                })
                .await,
            denied,
            &["token"],
        );
    }

    // A job's real token, read from its worker's environment, is no use to another
    // process: the kernel's peer credentials show it is not the worker.
    let id = submit(&video, test_job("a job", FOREVER)).await;
    let job = running(&video, &id).await;
    let environ = std::fs::read(format!("/proc/{}/environ", job.worker_pid)).unwrap();
    let token = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("ARBITER_JOB_TOKEN="))
        .expect("the worker has its token")
        .to_string();
    let complete = wpb::Completion {
        token: token.clone(),
        video_path: "/etc/passwd".into(),
        metadata_path: "/etc/passwd".into(),
    };
    assert_refused(
        worker.complete(complete.clone()).await,
        denied,
        &["not the worker process"],
    );
    // Over TCP there is no peer identity at all.
    let mut tcp = supervisor.tcp_worker_client().await;
    assert_refused(tcp.complete(complete).await, denied, &[]);
    assert_refused(
        tcp.report(wpb::ProgressReport {
            token,
            ..Default::default()
        })
        .await,
        denied,
        &[],
    );

    assert_state(&get(&video, &id).await, JobState::Running);
    cancel(&video, &id).await.expect("Cancel");
    assert_state(&final_job(&video, &id).await, JobState::Cancelled);
}

/// A generated staged pipeline (`make-pipeline --preset tiny`, random weights) in a
/// pipelines directory of its own.
fn staged_pipelines() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("arbiter-staged-")
        .tempdir()
        .expect("a temporary directory");
    let worker = support::binary()
        .parent()
        .expect("the binaries' directory")
        .join("arbiter-video");
    let out = std::process::Command::new(worker)
        .args([
            "make-pipeline",
            "--preset",
            "tiny",
            "--device",
            "cpu",
            "--out",
        ])
        .arg(dir.path().join("tiny-staged"))
        .output()
        .expect("run arbiter-video make-pipeline");
    assert!(
        out.status.success(),
        "make-pipeline failed (is PyTorch on PATH? source scripts/env.sh): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// A PNG made by ffmpeg's test source.
fn png(width: u32, height: u32) -> Vec<u8> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size={width}x{height}"))
        .args(["-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A copy of the staged pipeline in `pipelines` without its image stage (and component),
/// named `no-image`.
fn without_image_stage(pipelines: &Path) {
    let from = pipelines.join("tiny-staged");
    let to = pipelines.join("no-image");
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let path = to.join("manifest.toml");
    let mut manifest: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    manifest.insert("name".into(), "no-image".into());
    manifest["components"]
        .as_table_mut()
        .unwrap()
        .remove("image_encoder");
    manifest["stages"]
        .as_array_mut()
        .unwrap()
        .retain(|stage| stage["stage"].as_str() != Some("image"));
    std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_pipeline_job_normalizes_its_inputs_and_runs_stage_by_stage() {
    let pipelines = staged_pipelines();
    without_image_stage(pipelines.path());
    let supervisor = start(&pipelines, "8GiB", "").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;

    // A reference image for a pipeline that has no stage to take it is refused up front.
    let mut with_image = request("no-image", "a fox", 2);
    with_image.reference_image = Some(vpb::Media {
        source: Some(vpb::media::Source::Data(png(64, 64))),
    });
    assert_refused(
        video.clone().submit(with_image).await,
        Code::InvalidArgument,
        &["reference_image", "no-image", "no image stage"],
    );

    // Placements are checked against the pipeline's components before anything is queued.
    for (placement, words) in [
        (
            ("nowhere", "gpu"),
            vec!["no component `nowhere`", "text_encoder"],
        ),
        (
            ("vae_decoder", "stream"),
            vec!["cannot stream", "no blocks"],
        ),
        (("text_encoder", "fast"), vec!["not a placement"]),
    ] {
        let mut request = request("tiny-staged", "a fox", 2);
        request
            .placement
            .insert(placement.0.into(), placement.1.into());
        assert_refused(
            video.clone().submit(request).await,
            Code::InvalidArgument,
            &words,
        );
    }

    let mut request = request("tiny-staged", "a red fox in the snow", 3);
    request.seed = Some(5);
    request.audio = Some(vpb::Media {
        source: Some(vpb::media::Source::Data(wav())),
    });
    request.reference_image = Some(vpb::Media {
        source: Some(vpb::media::Source::Data(png(200, 100))),
    });
    request
        .placement
        .insert("text_encoder".into(), "stream".into());
    let id = submit(&video, request).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    // One second of 8 kHz mono became 17 frames at 8 fps of 16 kHz stereo, and the MP4
    // carries it as its soundtrack, as long as the video (AAC adds at most a frame or two).
    check_video(&job, 128, 128, 17, true);
    let result = job.result.as_ref().unwrap();
    let (channels, seconds) = audio_track(Path::new(&result.video_path));
    assert_eq!(channels, 2);
    assert!(
        (seconds - 17.0 / 8.0).abs() < 0.1,
        "audio lasts {seconds} s"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result.metadata_path).unwrap()).unwrap();
    let stages: Vec<(&str, &str)> = metadata["pipeline_stages"]
        .as_array()
        .expect("per-stage records")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["placement"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("text", "stream"),
            ("audio", "gpu"),
            ("image", "gpu"),
            ("denoise", "gpu"),
            ("upsample", "gpu"),
            ("refine", "gpu"),
            ("decode", "gpu"),
        ]
    );
    let audio = &metadata["inputs"]["audio"];
    assert_eq!(
        (audio["sample_rate"].as_u64(), audio["channels"].as_u64()),
        (Some(8000), Some(1))
    );
    assert!(
        (audio["padded_s"].as_f64().unwrap() - 1.125).abs() < 1e-3,
        "{audio}"
    );
    assert_eq!(metadata["inputs"]["image"]["width"], 200);
    assert_eq!(metadata["placements"]["text_encoder"], "stream");
    // The supervisor stamped the spawn: the worker's start-up is timed from it, and the
    // first step's overhead is what is left after the model work of the stages before it.
    let ms = |key: &str| {
        metadata[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {metadata}"))
    };
    let (spawn, first, overhead) = (
        ms("spawn_ms"),
        ms("first_step_ms"),
        ms("first_step_overhead_ms"),
    );
    assert!(
        spawn > 0.0 && spawn < first,
        "spawn {spawn} ms, first step {first} ms"
    );
    let before: f64 = metadata["pipeline_stages"].as_array().unwrap()[..3]
        .iter()
        .map(|s| s["load_ms"].as_f64().unwrap() + s["compute_ms"].as_f64().unwrap())
        .sum();
    assert!(
        (first - before - overhead).abs() < 0.05 && overhead > 0.0,
        "first step {first} ms, model work before it {before} ms, overhead {overhead} ms"
    );
    nothing_leased(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prewarm_the_staged_pipelines_are_read_into_the_page_cache_at_start() {
    let pipelines = staged_pipelines();
    let supervisor = start(&pipelines, "8GiB", "prewarm = true\n").await;
    eventually(JOB_TIMEOUT, "the prewarm to be logged", || {
        let log = supervisor.log();
        async move {
            (log.contains("prewarmed") && log.contains("of pipeline tiny-staged")).then_some(())
        }
    })
    .await;
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
