//! One job's life, from the queue to a verified release: the task [`run`] drives it.
//!
//! 1. Wait for a lease sized from the manifest, at the job's priority (a streaming lease
//!    held by this task, so it cannot outlive the supervisor).
//! 2. Spawn the worker with a one-time token (or hand the job to the pipeline's standby
//!    worker, started before it: [`super::standby`]); bind its pid to the lease so NVML's
//!    view of its memory counts against the lease, not as foreign use.
//! 3. Watch it: cancel, timeout, overuse, a revoked lease (the broker's overuse action).
//! 4. Reap it, check that its memory came back, and only then return the lease.
//! 5. Record the outcome; a crash is retried if configured, with the log's tail otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arbiter::standby::Handoff;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::jobs::{Jobs, WorkerOutcome, WorkerSeat};
use super::spawn::{Launch, Worker, log_tail};
use super::{JobRecord, JobResult, JobState, verify};
use crate::config::OveruseAction;
use crate::lease::broker::{Holding, Note};
use crate::lease::{Ask, Form, GpuChoice, Lease, Peer, ReloadCost};

/// How a worker's run ended, before the memory check.
enum Ending {
    Exited(std::process::ExitStatus),
    Cancelled,
    TimedOut(Duration),
    Overuse {
        used: u64,
        leased: u64,
    },
    /// The broker revoked the lease (its overuse action); `kill`: at once, no grace.
    Revoked {
        reason: String,
        kill: bool,
    },
    Shutdown,
}

/// Starts the task that drives a job.
pub fn start(jobs: &Arc<Jobs>, id: String) {
    tokio::spawn(run(Arc::clone(jobs), id, None));
}

/// Starts jobs in the given order, each entering the lease queue before the next starts,
/// so jobs re-queued after a restart keep their turn.
pub async fn start_in_order(jobs: &Arc<Jobs>, ids: Vec<String>) {
    for id in ids {
        let (entered, queued) = tokio::sync::oneshot::channel();
        tokio::spawn(run(Arc::clone(jobs), id, Some(entered)));
        let _ = queued.await;
    }
}

/// Drives job `id` to a final state (or back to Queued at shutdown). `queued` fires once
/// the job has entered the lease queue (or ended), so a caller starting several jobs can
/// keep their order in the queue.
pub async fn run(jobs: Arc<Jobs>, id: String, queued: Option<tokio::sync::oneshot::Sender<()>>) {
    let mut queued = queued;
    loop {
        match attempt(&jobs, &id, &mut queued).await {
            Some(true) => continue,
            _ => return,
        }
    }
}

/// One attempt, in the five steps of the module doc. Some(true): run again (a retried
/// crash).
async fn attempt(
    jobs: &Arc<Jobs>,
    id: &str,
    queued: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Option<bool> {
    let record = jobs.get(id).ok()?;
    if record.state.is_final() {
        return None;
    }
    let cancel = jobs.cancel_token(id);
    let queued_at = Instant::now();
    let (mut holding, lease) = lease(jobs, &record, &cancel, queued).await?;
    let gpu = lease.gpu;
    let used_before = verify::used(&jobs.inventory, gpu).await;
    let mut spawned = spawn_worker(jobs, &record, &lease, &holding).await?;
    let (ending, used_peak) = watch(
        jobs,
        &record,
        &lease,
        &mut spawned,
        &mut holding,
        &cancel,
        used_before,
    )
    .await;
    let worker_time = spawned.started.elapsed();
    let returned = give_back(jobs, id, gpu, spawned.worker.pid(), used_before, holding).await;
    let seat = jobs.unseat(id);
    let run = Run {
        queued: spawned.started.duration_since(queued_at),
        worker: worker_time,
        used_before,
        used_peak,
        returned,
    };
    outcome(jobs, &record, ending, seat.and_then(|s| s.outcome), run)
}

/// Step 1: waits for a lease sized from the manifest, at the job's priority: a streaming lease
/// held by this task, so it cannot outlive the supervisor. None: the job ended meanwhile
/// (refused, cancelled, or the supervisor is stopping).
async fn lease(
    jobs: &Arc<Jobs>,
    record: &JobRecord,
    cancel: &tokio_util::sync::CancellationToken,
    queued: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Option<(Holding, Lease)> {
    let id = &record.id;
    let ask = Ask {
        holder: format!("video job {id}"),
        gpu: GpuChoice::Any,
        bytes: record.spec.lease_bytes,
        priority: record.spec.priority,
        preemptible: false,
        reload: ReloadCost::default(),
        max_wait: None,
        form: Form::Stream,
        peer: Some(Peer {
            pid: std::process::id(),
            uid: nix::unistd::getuid().as_raw(),
        }),
        // The job owns its lease: no caller may release it by id, only an operator.
        owner: format!("job:{id}"),
        quota: None,
    };
    let held = jobs.broker.hold(ask);
    if let Some(queued) = queued.take() {
        let _ = queued.send(());
    }
    let mut holding = match held {
        Ok(holding) => holding,
        Err(error) => {
            finish(jobs, id, JobState::Failed, error.to_string(), None);
            return None;
        }
    };
    loop {
        tokio::select! {
            note = holding.notes.recv() => match note {
                Some(Note::Granted(lease)) => return Some((holding, lease)),
                Some(Note::Queued { .. }) | Some(Note::Reclaim(_)) => continue,
                Some(Note::WaitEnded { .. }) | Some(Note::Revoked { .. }) | None => return None,
            },
            () = cancel.cancelled() => {
                finish(jobs, id, JobState::Cancelled, String::new(), None);
                return None;
            }
            () = jobs.stop.cancelled() => return None,
        }
    }
}

/// A worker started under its lease.
struct Spawned {
    worker: Worker,
    started: Instant,
}

/// Step 2: starts the worker with a one-time token (handing the job to the pipeline's
/// standby worker where one is ready, else spawning one) and binds its pid to the lease, so
/// NVML's view of its memory counts against the lease, not as foreign use.
async fn spawn_worker(
    jobs: &Arc<Jobs>,
    record: &JobRecord,
    lease: &Lease,
    holding: &Holding,
) -> Option<Spawned> {
    let id = &record.id;
    let gpu = lease.gpu;
    let gpu_uuid = jobs.broker.gpus()[gpu as usize].uuid.clone();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let launch = launch(jobs, record, lease, &gpu_uuid, &token);
    let (mut worker, prestarted) = match start_worker(jobs, record, launch).await {
        Ok(started) => started,
        Err(error) => {
            let message = format!(
                "cannot start the worker {}: {error}",
                jobs.settings.worker.display()
            );
            finish(jobs, id, JobState::Failed, message, None);
            return None;
        }
    };
    let pid = worker.pid();
    jobs.seat(
        id,
        WorkerSeat {
            token,
            pid,
            claimed: false,
            outcome: None,
        },
    );
    jobs.broker.bind_pid(holding.ticket, pid);
    let started = Instant::now();
    jobs.update(id, |r| {
        r.state = JobState::Starting;
        r.started_at = Some(SystemTime::now());
        r.lease_id = lease.id.clone();
        r.gpu_uuid = gpu_uuid.clone();
        r.worker_pid = Some(pid);
        r.prestarted = prestarted;
        r.error.clear();
    });
    tracing::info!(job = %id, pid, prestarted, lease = %lease.id, gpu = %gpu_uuid, "worker started");
    if let Some(stdout) = worker.child.stdout.take() {
        tokio::spawn(follow_external(
            Arc::clone(jobs),
            id.to_string(),
            stdout,
            record.log_path(),
        ));
    }
    Some(Spawned { worker, started })
}

/// Starts `launch`: by handing it to the pipeline's standby worker, where it is the built-in
/// worker and a standby is ready (true), else by spawning it (false).
async fn start_worker(
    jobs: &Arc<Jobs>,
    record: &JobRecord,
    launch: Launch,
) -> std::io::Result<(Worker, bool)> {
    let builtin = launch.program == jobs.settings.worker && launch.stdin.is_none();
    let pipeline = jobs.catalog.get(&record.spec.request.pipeline);
    if let Some(ready) = pipeline
        .filter(|_| builtin)
        .and_then(|p| jobs.standby.take(&p.manifest.name))
    {
        let handoff = Handoff::now(record.id.clone(), launch.env.clone(), launch.log.clone());
        match ready.hand(&handoff).await {
            Ok(worker) => return Ok((worker, true)),
            Err(error) => {
                tracing::warn!(job = %record.id, %error, "spawning a worker instead")
            }
        }
    }
    Worker::spawn(launch).map(|worker| (worker, false))
}

/// What to start for `record`: the built-in worker, or the pipeline's external command,
/// with the environment that tells it its job, lease and GPU.
fn launch(
    jobs: &Arc<Jobs>,
    record: &JobRecord,
    lease: &Lease,
    gpu_uuid: &str,
    token: &str,
) -> Launch {
    let pipeline = jobs.catalog.get(&record.spec.request.pipeline).cloned();
    let external = pipeline.as_ref().and_then(|p| p.manifest.command.clone());
    let mut env = vec![
        (
            "ARBITER_SUPERVISOR_SOCKET".to_string(),
            jobs.settings.socket.display().to_string(),
        ),
        ("ARBITER_JOB_TOKEN".to_string(), token.to_string()),
        ("ARBITER_JOB_ID".to_string(), record.id.clone()),
        (
            arbiter::leased::LEASE_BYTES.to_string(),
            lease.bytes.to_string(),
        ),
        (
            "ARBITER_OUTPUT_DIR".to_string(),
            record.output_dir().display().to_string(),
        ),
        ("CUDA_VISIBLE_DEVICES".to_string(), gpu_uuid.to_string()),
        (
            crate::config::KERNEL_CACHE_ENV.to_string(),
            jobs.settings.kernel_cache.display().to_string(),
        ),
    ];
    if let Some(gate) = jobs.settings.compute.gates.get(gpu_uuid) {
        env.push((
            arbiter::leased::COMPUTE_GATE.to_string(),
            gate.display().to_string(),
        ));
    }
    env.extend(jobs.settings.compute.mps.iter().cloned());
    if let Some(socket) = &jobs.settings.pool_socket {
        env.push((
            arbiter::pool::SOCKET_ENV.to_string(),
            socket.display().to_string(),
        ));
    }
    if let Some(dir) = &jobs.settings.simulated_dir {
        env.push((
            arbiter::simulated::DIR_ENV.to_string(),
            dir.display().to_string(),
        ));
        env.push((
            arbiter::simulated::INDEX_ENV.to_string(),
            lease.gpu.to_string(),
        ));
    }
    let (program, args, stdin) = match &external {
        Some(command) => (
            command[0].clone().into(),
            command[1..].to_vec(),
            Some(external_request(record, gpu_uuid, lease.bytes)),
        ),
        None => (jobs.settings.worker.clone(), vec!["run".to_string()], None),
    };
    if let Some(dir) = pipeline.as_ref().and_then(|p| p.dir.clone()) {
        env.push((
            "ARBITER_PIPELINE_DIR".to_string(),
            dir.display().to_string(),
        ));
    }
    // External commands run from their pipeline's directory, so the manifest can name a
    // script beside it; the built-in worker runs in one directory for every job, where
    // CUDA's cache finds the attention kernels an earlier worker compiled (see
    // Config::worker_dir). Each writes its files to its job's output directory.
    let dir = match (&external, pipeline.as_ref().and_then(|p| p.dir.clone())) {
        (Some(_), Some(pipeline_dir)) => pipeline_dir,
        _ => jobs.settings.worker_dir.clone(),
    };
    Launch {
        program,
        args,
        env,
        log: record.log_path(),
        dir,
        stdin,
        capture_stdout: external.is_some(),
    }
}

/// Step 3: watches the worker until it exits or must stop: cancel, timeout, overuse, a revoked
/// lease (the broker's overuse action), shutdown. A worker that must stop is stopped here.
/// Returns how it ended and the GPU's peak use meanwhile.
async fn watch(
    jobs: &Arc<Jobs>,
    record: &JobRecord,
    lease: &Lease,
    spawned: &mut Spawned,
    holding: &mut Holding,
    cancel: &tokio_util::sync::CancellationToken,
    used_before: u64,
) -> (Ending, u64) {
    let id = &record.id;
    let gpu = lease.gpu;
    let worker = &mut spawned.worker;
    let timeout = record.spec.timeout;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut vram = tokio::time::interval(Duration::from_millis(250));
    let mut used_peak = used_before;
    let ending = loop {
        tokio::select! {
            status = worker.wait() => break match status {
                Ok(status) => Ending::Exited(status),
                Err(_) => Ending::Cancelled,
            },
            () = cancel.cancelled() => break Ending::Cancelled,
            () = &mut deadline => break Ending::TimedOut(timeout),
            note = holding.notes.recv() => match note {
                // A worker cannot run without its lease.
                Some(Note::Revoked { reason, kill, .. }) if !jobs.stop.is_cancelled() => {
                    break Ending::Revoked { reason, kill };
                }
                Some(Note::Revoked { .. }) | None => break Ending::Shutdown,
                Some(_) => continue,
            },
            () = jobs.stop.cancelled() => break Ending::Shutdown,
            _ = vram.tick() => {
                let used = jobs.broker.lease_usage(holding.ticket).unwrap_or(0);
                used_peak = used_peak.max(verify::used(&jobs.inventory, gpu).await);
                jobs.progress(id, |p| {
                    p.vram_bytes = used;
                    p.peak_vram_bytes = p.peak_vram_bytes.max(used);
                });
                let limit = lease.bytes.saturating_add(jobs.settings.jobs.memory_tolerance.0);
                if used > limit && jobs.settings.jobs.overuse_action == OveruseAction::Kill {
                    break Ending::Overuse { used, leased: lease.bytes };
                }
            }
        }
    };
    let grace = match ending {
        Ending::Revoked { kill: true, .. } => Duration::ZERO,
        _ => jobs.settings.jobs.kill_grace,
    };
    if !matches!(ending, Ending::Exited(_)) {
        let _ = worker.stop(grace).await;
    }
    (ending, used_peak)
}

/// Step 4: checks that the reaped worker's memory came back, and only then returns the lease.
async fn give_back(
    jobs: &Arc<Jobs>,
    id: &str,
    gpu: u32,
    pid: u32,
    used_before: u64,
    holding: Holding,
) -> verify::Returned {
    jobs.update(id, |r| r.state = JobState::Releasing);
    let returned = verify::memory_back(
        &jobs.inventory,
        gpu,
        pid,
        used_before,
        jobs.settings.jobs.memory_tolerance.0,
        jobs.settings.jobs.verify_timeout,
    )
    .await;
    if returned.complete {
        tracing::info!(job = %id, took = ?returned.took, "worker memory returned");
    } else {
        tracing::warn!(job = %id, took = ?returned.took, used = %arbiter::ByteSize(returned.used_after), "worker memory did not come back in time; it stays out of the budget");
    }
    // The fresh reading first, so the budget never shows the worker's memory as foreign
    // once its lease is gone; then the lease, grantable at once when its memory was seen
    // back (otherwise the broker keeps it out until the card shows it free).
    if let Some((sample, taken_at)) = returned.sample.clone() {
        jobs.broker.observe(gpu, sample, taken_at);
    }
    if returned.complete {
        holding.end_verified();
    } else {
        drop(holding);
    }
    returned
}

/// What one run of a worker cost, for the job's result.
struct Run {
    queued: Duration,
    worker: Duration,
    used_before: u64,
    used_peak: u64,
    returned: verify::Returned,
}

impl Run {
    fn result(
        &self,
        record: &JobRecord,
        video: &std::path::Path,
        metadata: &std::path::Path,
    ) -> JobResult {
        JobResult {
            video_path: video.to_path_buf(),
            video_bytes: output_bytes(video),
            metadata_path: metadata.to_path_buf(),
            metadata_bytes: output_bytes(metadata),
            queued: self.queued,
            worker: self.worker,
            memory_return: self.returned.took,
            used_before: self.used_before,
            used_peak: self.used_peak.max(record.progress.peak_vram_bytes),
            used_after: self.returned.used_after,
        }
    }
}

/// Step 5: records the outcome; a crash is retried if configured, with the log's tail otherwise.
/// Some(true): run again.
fn outcome(
    jobs: &Arc<Jobs>,
    record: &JobRecord,
    ending: Ending,
    reported: Option<WorkerOutcome>,
    run: Run,
) -> Option<bool> {
    let id = &record.id;
    let log = record.log_path();
    match ending {
        Ending::Shutdown => {
            jobs.update(id, |r| {
                r.state = JobState::Queued;
                r.worker_pid = None;
                r.lease_id.clear();
            });
            None
        }
        Ending::Cancelled => {
            let record = jobs.get(id).ok()?;
            let partial = run.result(
                &record,
                &record.output_dir().join("video.mp4"),
                &record.output_dir().join("metadata.json"),
            );
            finish(jobs, id, JobState::Cancelled, String::new(), Some(partial));
            None
        }
        Ending::TimedOut(limit) => {
            let message = format!(
                "timed out after {}: the worker was stopped. Last lines of its log:\n{}",
                humantime::format_duration(limit),
                log_tail(&log, 20)
            );
            finish(jobs, id, JobState::Failed, message, None);
            None
        }
        Ending::Revoked { reason, .. } => {
            let message =
                format!("the worker's lease was revoked and the worker stopped: {reason}");
            tracing::warn!(job = %id, %reason, "worker stopped: its lease was revoked");
            finish(jobs, id, JobState::Failed, message, None);
            None
        }
        Ending::Overuse { used, leased } => {
            let message = format!(
                "the worker used {} of GPU memory on a {} lease and was stopped: raise the pipeline's memory estimate",
                arbiter::ByteSize(used),
                arbiter::ByteSize(leased)
            );
            finish(jobs, id, JobState::Failed, message, None);
            None
        }
        Ending::Exited(status) => exited(jobs, id, status, reported, &run),
    }
}

/// The worker exited by itself: done, failed as it reported, or crashed.
fn exited(
    jobs: &Arc<Jobs>,
    id: &str,
    status: std::process::ExitStatus,
    reported: Option<WorkerOutcome>,
    run: &Run,
) -> Option<bool> {
    let record = jobs.get(id).ok()?;
    let log = record.log_path();
    match reported {
        Some(WorkerOutcome::Completed { video, metadata }) if status.success() => {
            let done = run.result(&record, &video, &metadata);
            finish(jobs, id, JobState::Succeeded, String::new(), Some(done));
            None
        }
        Some(WorkerOutcome::Failed(error)) => {
            if !status.success() {
                tracing::warn!(job = %id, %status, "the worker failed");
            }
            finish(
                jobs,
                id,
                JobState::Failed,
                format!(
                    "{error}\nLast lines of the worker's log:\n{}",
                    log_tail(&log, 20)
                ),
                None,
            );
            None
        }
        _ => {
            let what = match std::os::unix::process::ExitStatusExt::signal(&status) {
                Some(signal) => format!("the worker was killed by signal {signal}"),
                None => format!("the worker exited with {status} without reporting a result"),
            };
            if jobs.settings.jobs.retry_on_crash && record.attempt < jobs.settings.jobs.max_attempts
            {
                tracing::warn!(job = %id, attempt = record.attempt, "{what}; retrying");
                jobs.update(id, |r| {
                    r.attempt += 1;
                    r.state = JobState::Queued;
                    r.worker_pid = None;
                    r.lease_id.clear();
                    r.progress = Default::default();
                    r.error = what.clone();
                });
                return Some(true);
            }
            tracing::warn!(job = %id, attempt = record.attempt, "{what}");
            finish(
                jobs,
                id,
                JobState::Failed,
                format!("{what}. Last lines of its log:\n{}", log_tail(&log, 20)),
                None,
            );
            None
        }
    }
}

fn finish(jobs: &Jobs, id: &str, state: JobState, error: String, result: Option<JobResult>) {
    tracing::info!(job = %id, ?state, "job ended");
    jobs.update(id, |r| {
        r.state = state;
        r.error = error;
        r.finished_at = Some(SystemTime::now());
        r.worker_pid = None;
        if result.is_some() {
            r.result = result;
        }
    });
}

/// The request as an external pipeline reads it on stdin (docs/external-pipelines.md).
fn external_request(record: &JobRecord, gpu_uuid: &str, lease_bytes: u64) -> Vec<u8> {
    let r = &record.spec.request;
    let request = serde_json::json!({
        "job_id": record.id,
        "attempt": record.attempt,
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "audio": r.audio,
        "reference_image": r.reference_image,
        "width": r.shape.width,
        "height": r.shape.height,
        "frames": r.shape.frames,
        "fps": r.shape.fps,
        "steps": r.shape.steps,
        "seed": r.seed,
        "pipeline": r.pipeline,
        "output_dir": record.output_dir(),
        "gpu_uuid": gpu_uuid,
        "lease_bytes": lease_bytes,
    });
    let mut bytes = serde_json::to_vec(&request).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// Reads an external pipeline's stdout: JSON lines of progress and the outcome; anything
/// else is copied to the job's log.
async fn follow_external(
    jobs: Arc<Jobs>,
    id: String,
    stdout: tokio::process::ChildStdout,
    log: std::path::PathBuf,
) {
    use std::io::Write;
    let mut lines = BufReader::new(stdout).lines();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log)
        .ok();
    while let Ok(Some(line)) = lines.next_line().await {
        let message: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let Some(message) = message.filter(|m| m.is_object()) else {
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            continue;
        };
        let Some((token, pid)) = jobs.seat_credentials(&id) else {
            continue;
        };
        let pid = Some(pid);
        let text = |key: &str| {
            message
                .get(key)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let number = |key: &str| message.get(key).and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        match text("event").as_str() {
            "progress" => {
                let _ = jobs.report(
                    &token,
                    pid,
                    text("stage"),
                    number("step"),
                    number("total_steps"),
                );
            }
            "done" => {
                let outcome = WorkerOutcome::Completed {
                    video: text("video_path").into(),
                    metadata: text("metadata_path").into(),
                };
                let _ = jobs.finish(&token, pid, outcome);
            }
            "error" => {
                let _ = jobs.finish(&token, pid, WorkerOutcome::Failed(text("message")));
            }
            other => {
                tracing::debug!(job = %id, event = other, "unknown event from an external pipeline")
            }
        }
    }
}

/// A result file's size, or the total of a frames directory's files (0 if missing).
fn output_bytes(path: &std::path::Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
