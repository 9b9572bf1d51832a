//! Video jobs on the real supervisor: the test pipeline, the generated staged pipeline,
//! submitting jobs and waiting for them, and checking what a finished job wrote.
//!
//! The test pipeline (`test-steps`, a Python script) sleeps 0.1 s per step of the
//! request's `steps`, so a request picks its job's length. Words in the prompt pick extra
//! behaviour: `child` (start a `sleep` in the worker's process group and write its pid to
//! `child.pid` in the output directory), `crash-once` (exit 9 without a word on attempt 1),
//! `hang-once` (hang after the first step on attempt 1), `greedy` (write its own record in the
//! simulated GPU's process table: three times its lease, and its pid to `greedy.pid` in the
//! output directory). Its lease is 1.25GiB, like tiny's.
//!
//! Order is asserted from what the supervisor recorded (job states seen together in one
//! List, timestamps), never from sleeps.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use arbiter::pb::video::v1 as vpb;
use tempfile::TempDir;
use tonic::transport::Channel;
use vpb::JobState;
use vpb::video_client::VideoClient;

use crate::GIB;
use crate::binaries;
use crate::generated;
use crate::leases::{Client, leases, status};
use crate::media::streams;
use crate::supervisor::Supervisor;
use crate::waiting::eventually;

pub type Video = VideoClient<Channel>;

/// The lease of a tiny job at its default size: 1GiB peak + 256MiB margin.
pub const TINY_LEASE: u64 = GIB + (256 << 20);
/// The lease of the example external pipeline at its default size: 2GiB + 512MiB.
pub const EXAMPLE_LEASE: u64 = 2 * GIB + (512 << 20);
/// The longest a job may take to end, on a loaded 2-core machine.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(120);
/// Long enough for anything about a job that should happen "soon" (a worker starting,
/// a process ending).
pub const SOON: Duration = Duration::from_secs(20);

/// The test pipeline's name, and how long each of its steps sleeps.
const TEST_PIPELINE: &str = "test-steps";
const STEP_SECONDS: f64 = 0.1;

/// Steps for a job that outlives any test unless it is stopped (60 s).
pub const FOREVER: u32 = 600;

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
pub fn test_pipelines() -> TempDir {
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
pub const BASE_CONFIG: &str = "[jobs]\nkill_grace = \"2s\"\n";

/// A supervisor on one simulated GPU of `gpu`, serving the test pipeline from `pipelines`.
pub async fn start(pipelines: &TempDir, gpu: &str, extra_jobs_config: &str) -> Supervisor {
    Supervisor::builder()
        .gpus(gpu)
        .config(&format!("{BASE_CONFIG}{extra_jobs_config}"))
        .pipelines_dir(pipelines.path())
        .start()
        .await
}

pub fn request(pipeline: &str, prompt: &str, steps: u32) -> vpb::VideoRequest {
    vpb::VideoRequest {
        prompt: prompt.into(),
        pipeline: pipeline.into(),
        steps,
        ..Default::default()
    }
}

/// A request for the test pipeline that takes `steps` steps.
pub fn test_job(prompt: &str, steps: u32) -> vpb::VideoRequest {
    request(TEST_PIPELINE, prompt, steps)
}

pub async fn submit(video: &Video, request: vpb::VideoRequest) -> String {
    video
        .clone()
        .submit(request)
        .await
        .expect("Submit")
        .into_inner()
        .job_id
}

pub async fn get(video: &Video, id: &str) -> vpb::Job {
    video
        .clone()
        .get(vpb::GetJobRequest { job_id: id.into() })
        .await
        .expect("Get")
        .into_inner()
}

pub async fn list(video: &Video) -> Vec<vpb::Job> {
    video
        .clone()
        .list(vpb::ListJobsRequest::default())
        .await
        .expect("List")
        .into_inner()
        .jobs
}

pub async fn cancel(video: &Video, id: &str) -> Result<vpb::Job, tonic::Status> {
    video
        .clone()
        .cancel(vpb::GetJobRequest { job_id: id.into() })
        .await
        .map(|r| r.into_inner())
}

pub fn state(job: &vpb::Job) -> JobState {
    JobState::try_from(job.state).expect("a known job state")
}

pub fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Polls Get until `accept` takes the job, failing the test after `limit`.
pub async fn wait_for(
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
pub async fn final_job(video: &Video, id: &str) -> vpb::Job {
    wait_for(video, id, JOB_TIMEOUT, "a final state", |j| {
        is_final(state(j))
    })
    .await
}

/// Waits until the job runs (its worker has reported progress), and returns it.
pub async fn running(video: &Video, id: &str) -> vpb::Job {
    let job = wait_for(video, id, SOON, "Running", |j| {
        state(j) == JobState::Running || is_final(state(j))
    })
    .await;
    assert_eq!(state(&job), JobState::Running, "{job:#?}");
    assert_ne!(job.worker_pid, 0, "a running job names its worker");
    job
}

#[track_caller]
pub fn assert_state(job: &vpb::Job, expected: JobState) {
    assert_eq!(
        state(job),
        expected,
        "job {} error: {}\n{job:#?}",
        job.job_id,
        job.error
    );
}

/// The job's own directory (where its log, inputs and output are).
pub fn job_dir(job: &vpb::Job) -> PathBuf {
    Path::new(&job.log_path)
        .parent()
        .expect("the log lies in the job's directory")
        .to_path_buf()
}

/// The pid of the `sleep` a `child` job started, once it has written it.
pub async fn child_pid(job: &vpb::Job) -> u32 {
    let path = job_dir(job).join("output/child.pid");
    eventually(SOON, "the test pipeline's child pid", || async {
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
    .await
}

/// The pid of a `greedy` job's worker, once it has written it (the file outlives the worker).
pub async fn greedy_pid(job: &vpb::Job) -> u32 {
    let path = job_dir(job).join("output/greedy.pid");
    eventually(SOON, "the greedy worker's pid", || async {
        std::fs::read_to_string(&path).ok()?.trim().parse().ok()
    })
    .await
}

/// No lease left, and nothing granted on any GPU.
pub async fn nothing_leased(client: &Client) {
    let left = leases(client).await;
    assert!(left.is_empty(), "leases left after the jobs: {left:#?}");
    for gpu in status(client).await.gpus {
        assert_eq!(gpu.granted_bytes, 0, "GPU {} still has grants", gpu.index);
    }
}

pub fn time(timestamp: &Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("a timestamp")).expect("a valid timestamp")
}

pub fn seconds(duration: &Option<prost_types::Duration>) -> Duration {
    Duration::try_from(duration.expect("a duration")).expect("a non-negative duration")
}

/// A generated staged pipeline (`make-pipeline --preset tiny`, random weights, seeded) in a
/// pipelines directory of its own, as `tiny-staged`: generated once per `arbiter-video`
/// binary, copied for each test.
pub fn staged_pipelines() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("arbiter-staged-")
        .tempdir()
        .expect("a temporary directory");
    let worker = binaries::video();
    let built = std::fs::metadata(&worker)
        .and_then(|m| Ok(format!("{} bytes, {:?}", m.len(), m.modified()?)))
        .unwrap_or_else(|e| panic!("{}: {e}", worker.display()));
    let key = generated::key("tiny-staged", &[built.as_bytes()]);
    generated::copy_of(&binaries::cache_dir(), &key, dir.path(), |out| {
        let output = std::process::Command::new(&worker)
            .args([
                "make-pipeline",
                "--preset",
                "tiny",
                "--device",
                "cpu",
                "--out",
            ])
            .arg(out.join("tiny-staged"))
            .output()
            .expect("run arbiter-video make-pipeline");
        assert!(
            output.status.success(),
            "make-pipeline failed (is PyTorch on PATH? source scripts/env.sh): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
    dir
}

/// Checks a succeeded job's files: the video (as ffprobe sees it) and the metadata.
#[track_caller]
pub fn check_video(job: &vpb::Job, width: u64, height: u64, frames: u64, audio: bool) {
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
    let streams = streams(video);
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
