//! The real `arbiter-video run` binary against a stand-in for the supervisor's side of the
//! worker protocol.
//!
//! Each test serves the real `arbiter.worker.v1.Worker` service (the generated tonic trait)
//! on a temporary Unix socket, scripted per test (the token it accepts, the assignment it
//! hands out, the report at which it answers `cancel`), records every call, and spawns the
//! worker binary the way the supervisor does: a minimal environment with the socket, the
//! token and a simulated GPU. The checks are on what crossed the socket, the files left in
//! the output directory, the simulated process table and the exit code.

use arbiter_test_kit::media;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter::pb::video::v1::{Media, VideoRequest, media::Source};
use arbiter::pb::worker::v1::worker_server::{Worker, WorkerServer};
use arbiter::pb::worker::v1::{
    Ack, Assignment, ClaimRequest, Completion, Failure, ProgressReport, ReportReply,
};
use tempfile::TempDir;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

const TOKEN: &str = "one-time-token";
const LEASE: u64 = 1_342_177_280; // tiny's lease at its default size: 1 GiB + 256 MiB
/// How long a worker may take (a few CPU steps and an ffmpeg run take seconds).
const WORKER_TIMEOUT: Duration = Duration::from_secs(120);

/// A call the worker made, as the stand-in saw it.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Claim(String),
    Report {
        stage: String,
        step: u32,
        total_steps: u32,
        vram_bytes: u64,
        /// What the simulated process table held for the caller's pid at that moment.
        recorded: Option<u64>,
    },
    Complete {
        video: PathBuf,
        metadata: PathBuf,
    },
    Fail(String),
}

/// What the stand-in answers.
#[derive(Clone)]
struct Script {
    assignment: Assignment,
    /// Reply `cancel` to this report (0-based) and every later one.
    cancel_at_report: Option<usize>,
}

#[derive(Clone)]
struct Stand {
    script: Script,
    simulated_gpu: PathBuf,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Stand {
    fn check(&self, token: &str) -> Result<(), Status> {
        if token == TOKEN {
            Ok(())
        } else {
            Err(Status::permission_denied("unknown or used token"))
        }
    }

    fn record(&self, call: Call) -> usize {
        let mut calls = self.calls.lock().unwrap();
        calls.push(call);
        calls.len()
    }
}

#[tonic::async_trait]
impl Worker for Stand {
    async fn claim(&self, request: Request<ClaimRequest>) -> Result<Response<Assignment>, Status> {
        let token = request.into_inner().token;
        self.record(Call::Claim(token.clone()));
        self.check(&token)?;
        Ok(Response::new(self.script.assignment.clone()))
    }

    async fn report(
        &self,
        request: Request<ProgressReport>,
    ) -> Result<Response<ReportReply>, Status> {
        let pid = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .and_then(|cred| cred.pid());
        let report = request.into_inner();
        self.check(&report.token)?;
        let recorded = pid.and_then(|pid| {
            std::fs::read_to_string(self.simulated_gpu.join("0").join(pid.to_string()))
                .ok()
                .map(|text| text.trim().parse().unwrap())
        });
        let reports_before = self
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, Call::Report { .. }))
            .count();
        self.record(Call::Report {
            stage: report.stage,
            step: report.step,
            total_steps: report.total_steps,
            vram_bytes: report.vram_bytes,
            recorded,
        });
        let cancel = self
            .script
            .cancel_at_report
            .is_some_and(|at| reports_before >= at);
        Ok(Response::new(ReportReply { cancel }))
    }

    async fn complete(&self, request: Request<Completion>) -> Result<Response<Ack>, Status> {
        let completion = request.into_inner();
        self.check(&completion.token)?;
        self.record(Call::Complete {
            video: completion.video_path.into(),
            metadata: completion.metadata_path.into(),
        });
        Ok(Response::new(Ack {}))
    }

    async fn fail(&self, request: Request<Failure>) -> Result<Response<Ack>, Status> {
        let failure = request.into_inner();
        self.check(&failure.token)?;
        self.record(Call::Fail(failure.error));
        Ok(Response::new(Ack {}))
    }
}

/// One test's world: the stand-in's socket, the output and simulated GPU directories.
struct World {
    dir: TempDir,
    calls: Arc<Mutex<Vec<Call>>>,
    server: tokio::task::JoinHandle<()>,
}

/// What a worker run left behind.
struct Run {
    status: ExitStatus,
    pid: u32,
    log: String,
    calls: Vec<Call>,
}

impl World {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("supervisor.sock")
    }

    fn output_dir(&self) -> PathBuf {
        self.dir.path().join("out").join("job-1")
    }

    fn simulated_gpu(&self) -> PathBuf {
        self.dir.path().join("gpu")
    }

    /// Serves the stand-in with `script`; `edit` adjusts the default assignment first.
    fn start(cancel_at_report: Option<usize>, edit: impl FnOnce(&mut Assignment, &Path)) -> World {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("gpu").join("0")).unwrap();
        let mut assignment = Assignment {
            job_id: "job-1".into(),
            request: Some(VideoRequest {
                prompt: "a lighthouse at dusk".into(),
                width: 64,
                height: 96,
                frames: 9,
                fps: 8,
                steps: 3,
                seed: Some(11),
                ..Default::default()
            }),
            pipeline: "tiny".into(),
            pipeline_dir: String::new(),
            seed: 11,
            output_dir: dir.path().join("out").join("job-1").display().to_string(),
            lease_bytes: LEASE,
            gpu_uuid: "GPU-sim-0".into(),
            attempt: 1,
            ..Default::default()
        };
        edit(&mut assignment, dir.path());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let stand = Stand {
            script: Script {
                assignment,
                cancel_at_report,
            },
            simulated_gpu: dir.path().join("gpu"),
            calls: calls.clone(),
        };
        let listener = UnixListener::bind(dir.path().join("supervisor.sock")).unwrap();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(WorkerServer::new(stand))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
        World { dir, calls, server }
    }

    /// Spawns `arbiter-video run` with the environment the supervisor gives it, with `token`
    /// and `path` as its PATH, and waits for it to exit.
    async fn run_worker(&self, token: &str, path: &str) -> Run {
        let log_path = self.dir.path().join("worker.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_arbiter-video"));
        command
            .arg("run")
            .env_clear()
            .env("ARBITER_SUPERVISOR_SOCKET", self.socket())
            .env("ARBITER_JOB_TOKEN", token)
            .env(arbiter::simulated::DIR_ENV, self.simulated_gpu())
            .env(arbiter::simulated::INDEX_ENV, "0")
            .env("PATH", path)
            .env("RUST_LOG", "info,arbiter_video=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true);
        for name in ["HOME", "LD_LIBRARY_PATH"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let mut child = command.spawn().expect("the worker binary starts");
        let pid = child.id().unwrap();
        let status = tokio::time::timeout(WORKER_TIMEOUT, child.wait())
            .await
            .expect("the worker exits in time")
            .unwrap();
        Run {
            status,
            pid,
            log: std::fs::read_to_string(&log_path).unwrap_or_default(),
            calls: self.calls.lock().unwrap().clone(),
        }
    }

    /// The simulated process table's record for `pid`, if any.
    fn recorded(&self, pid: u32) -> Option<String> {
        std::fs::read_to_string(self.simulated_gpu().join("0").join(pid.to_string())).ok()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn our_path() -> String {
    std::env::var("PATH").unwrap_or_default()
}

fn reports(calls: &[Call]) -> Vec<(String, u32, u32, u64, Option<u64>)> {
    calls
        .iter()
        .filter_map(|call| match call {
            Call::Report {
                stage,
                step,
                total_steps,
                vram_bytes,
                recorded,
            } => Some((stage.clone(), *step, *total_steps, *vram_bytes, *recorded)),
            _ => None,
        })
        .collect()
}

/// A second of 16 kHz mono silence.
fn write_wav(path: &Path) {
    std::fs::write(path, media::wav(&[0; 16_000], 16_000, 1)).unwrap();
}

/// `stream=nb_read_frames,width,height` of the video stream and the codec of each stream.
fn probe(video: &Path) -> (String, String) {
    let frames = media::ffprobe(
        video,
        &[
            "-count_frames",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_frames,width,height",
            "-of",
            "default=noprint_wrappers=1",
        ],
    );
    let codecs = media::ffprobe(
        video,
        &["-show_entries", "stream=codec_name", "-of", "csv=p=0"],
    );
    (frames, codecs)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_claims_reports_every_step_and_completes_with_its_files() {
    let world = World::start(None, |assignment, dir| {
        let wav = dir.join("audio.wav");
        write_wav(&wav);
        assignment.request.as_mut().unwrap().audio = Some(Media {
            source: Some(Source::Path(wav.display().to_string())),
        });
    });
    let run = world.run_worker(TOKEN, &our_path()).await;
    assert_eq!(run.status.code(), Some(0), "{}", run.log);

    // Claim first, Complete last, nothing failed.
    assert_eq!(run.calls[0], Call::Claim(TOKEN.into()), "{:?}", run.calls);
    let Some(Call::Complete { video, metadata }) = run.calls.last().cloned() else {
        panic!(
            "the last call is not Complete: {:?}\n{}",
            run.calls, run.log
        );
    };
    assert!(!run.calls.iter().any(|c| matches!(c, Call::Fail(_))));

    // Every stage in order; the sampler's steps one by one.
    let reports = reports(&run.calls);
    let mut stages: Vec<&str> = reports.iter().map(|r| r.0.as_str()).collect();
    stages.dedup();
    assert_eq!(stages, ["text", "denoise", "decode", "mux"], "{reports:?}");
    let denoise: Vec<(u32, u32)> = reports
        .iter()
        .filter(|r| r.0 == "denoise")
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(denoise, [(0, 3), (1, 3), (2, 3), (3, 3)]);

    // What it reports is what it recorded on the simulated GPU, within the lease, and the
    // denoise stage holds the most.
    for (stage, _, _, vram, recorded) in &reports {
        assert_eq!(Some(*vram), *recorded, "{stage}");
        assert!(*vram > 0 && *vram <= LEASE, "{stage}: {vram}");
    }
    let peak = reports.iter().map(|r| r.3).max().unwrap();
    assert!(
        reports
            .iter()
            .filter(|r| r.3 == peak)
            .all(|r| r.0 == "denoise")
    );
    assert_eq!(
        world.recorded(run.pid),
        None,
        "the record is cleared at the end"
    );

    // The files: where the worker said, a real MP4 with every frame and the soundtrack.
    assert_eq!(video, world.output_dir().join("video.mp4"));
    assert_eq!(metadata, world.output_dir().join("metadata.json"));
    let (frames, codecs) = probe(&video);
    assert_eq!(frames, "width=64\nheight=96\nnb_read_frames=9\n");
    assert_eq!(codecs, "h264\naac\n");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&metadata).unwrap()).unwrap();
    assert_eq!(meta["job_id"], "job-1");
    assert_eq!(meta["pipeline"], "tiny");
    assert_eq!(meta["request"]["seed"], 11);
    assert_eq!(meta["request"]["frames"], 9);
    assert_eq!(meta["worker_pid"], run.pid);
    assert_eq!(meta["device"], "cpu");
    assert_eq!(
        meta["video_bytes"],
        std::fs::metadata(&video).unwrap().len()
    );
    let names: Vec<&str> = meta["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["text", "denoise", "decode", "mux"]);
    // Nothing else is left in the output directory (no partial files).
    let mut left: Vec<String> = std::fs::read_dir(world.output_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["metadata.json", "video.mp4"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_reply_stops_the_worker_with_exit_code_3() {
    // Reports: text start (0), denoise start (1), step 1 (2): cancel there.
    let world = World::start(Some(2), |_, _| {});
    let run = world.run_worker(TOKEN, &our_path()).await;
    assert_eq!(run.status.code(), Some(3), "{}", run.log);
    let reports = reports(&run.calls);
    assert_eq!(
        reports.len(),
        3,
        "it stops at the first cancel: {reports:?}"
    );
    assert_eq!((reports[2].0.as_str(), reports[2].1), ("denoise", 1));
    assert!(
        !run.calls
            .iter()
            .any(|c| matches!(c, Call::Complete { .. } | Call::Fail(_))),
        "{:?}",
        run.calls
    );
    assert!(!world.output_dir().join("video.mp4").exists());
    assert_eq!(world.recorded(run.pid), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_token_exits_2_without_running_anything() {
    let world = World::start(None, |_, _| {});
    let run = world.run_worker("someone-elses-token", &our_path()).await;
    assert_eq!(run.status.code(), Some(2), "{}", run.log);
    assert_eq!(run.calls, [Call::Claim("someone-elses-token".into())]);
    assert!(run.log.contains("PermissionDenied"), "{}", run.log);
    assert!(!world.output_dir().exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_supervisor_exits_2() {
    let world = World::start(None, |_, _| {});
    std::fs::remove_file(world.socket()).unwrap();
    let run = world.run_worker(TOKEN, &our_path()).await;
    assert_eq!(run.status.code(), Some(2), "{}", run.log);
    assert!(run.log.contains("supervisor.sock"), "{}", run.log);
    assert!(run.calls.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_the_pipeline_refuses_fails_with_the_rule_before_any_stage() {
    let world = World::start(None, |assignment, _| {
        assignment.request.as_mut().unwrap().frames = 10;
    });
    let run = world.run_worker(TOKEN, &our_path()).await;
    assert_eq!(run.status.code(), Some(1), "{}", run.log);
    let Some(Call::Fail(error)) = run.calls.last() else {
        panic!("no Fail: {:?}", run.calls);
    };
    assert!(
        error.contains("frames") && error.contains("8k+1"),
        "{error}"
    );
    assert!(reports(&run.calls).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_ffmpeg_the_job_fails_saying_how_to_install_it() {
    let world = World::start(None, |_, _| {});
    let run = world.run_worker(TOKEN, "/nonexistent-bin").await;
    assert_eq!(run.status.code(), Some(1), "{}", run.log);
    let Some(Call::Fail(error)) = run.calls.last() else {
        panic!("no Fail: {:?}", run.calls);
    };
    assert!(error.contains("apt-get install ffmpeg"), "{error}");
    assert!(
        reports(&run.calls).is_empty(),
        "checked before the model runs"
    );
    assert!(!world.output_dir().join("video.mp4").exists());
}
