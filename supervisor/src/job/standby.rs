//! Standby workers: for each staged pipeline, one `arbiter-video standby` started ahead of
//! its next job, so that what a worker does before its first stage (exec, linking libtorch,
//! reading the pipeline's TorchScript) is off the job's critical path (`[jobs] standby`).
//!
//! A standby holds no lease, no CUDA context and no GPU memory: it has not been told its GPU
//! yet, and CUDA reads `CUDA_VISIBLE_DEVICES` only when it starts. It is no job: nothing
//! binds its pid to a lease or seats it, so the broker, the jobs and the metrics never count
//! it. When a job's lease is granted, [`super::run`] takes the pipeline's standby, if one is
//! ready, and writes the job's [`Handoff`] to its stdin; from then on it is that job's worker,
//! watched, stopped and verified exactly as a spawned one (same binary, same process group,
//! same parent-death signal), and it exits after the job, so every byte still goes back.
//!
//! One keeper task per pipeline keeps a standby ready: it starts one, reads its stdout until
//! [`READY`], and starts the next as soon as one is taken. One that dies (or never says
//! READY) is started again after a backoff, 1 s doubling to 60 s, reset once one is ready.
//! At shutdown the keeper drops its standby, which kills its process group.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arbiter::standby::{Handoff, READY};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::ChildStdin;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::spawn::{Launch, Worker, log_tail};

/// The first wait before starting a standby again after one died.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// The longest such wait.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long a standby may take to say READY (its pipeline's TorchScript read from a cold
/// disk included) before it is stopped and counted as failed.
const READY_WITHIN: Duration = Duration::from_secs(300);
/// How often a waiting standby is checked for an exit.
const POLL: Duration = Duration::from_millis(250);

/// Why a standby worker could not be started or handed its job.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("cannot start the standby worker: {0}")]
    Spawn(std::io::Error),
    #[error(
        "the standby worker exited with {status} before it was ready. Last lines of its log:\n{log}"
    )]
    Exited { status: String, log: String },
    #[error(
        "the standby worker did not say {READY} within {}",
        humantime::format_duration(READY_WITHIN)
    )]
    Slow,
    #[error("cannot hand the job to the standby worker: {0}")]
    Hand(std::io::Error),
}

/// A standby worker that said READY, with the pipe its job will come through.
pub struct Ready {
    worker: Worker,
    stdin: ChildStdin,
}

impl Ready {
    /// Writes `handoff` to the worker, which is from now on the job's. An error means it
    /// took nothing (it died meanwhile): the caller spawns a worker instead.
    pub async fn hand(mut self, handoff: &Handoff) -> Result<Worker, StandbyError> {
        // One line is far below a pipe's buffer: the write completes at once, or fails
        // (EPIPE) when the worker is gone.
        self.stdin
            .write_all(&handoff.line())
            .await
            .map_err(StandbyError::Hand)?;
        self.stdin.flush().await.map_err(StandbyError::Hand)?;
        Ok(self.worker)
    }

    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }
}

/// One pipeline's standby: the ready worker, if any, and the keeper's wake-up.
struct Slot {
    pipeline: String,
    dir: PathBuf,
    ready: Mutex<Option<Ready>>,
    taken: Notify,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Ready>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How standby workers are started: what the jobs' settings say about workers.
#[derive(Clone, Debug)]
pub struct Keeping {
    /// The worker binary.
    pub worker: PathBuf,
    /// The supervisor's socket, which the job's worker claims it on.
    pub socket: PathBuf,
    /// The built-in workers' one working directory (where the standbys' logs are kept too).
    pub worker_dir: PathBuf,
    /// The workers' CUDA_CACHE_PATH.
    pub kernel_cache: PathBuf,
    /// How long a stopped standby has to exit.
    pub kill_grace: Duration,
}

/// The standby workers of every staged pipeline (none when `[jobs] standby` is off).
pub struct Standbys {
    slots: BTreeMap<String, Arc<Slot>>,
    keeping: Arc<Keeping>,
}

impl Standbys {
    /// A slot for each of `pipelines` (name, directory), each empty until
    /// [`Standbys::keep`] starts its keeper.
    pub fn new(pipelines: Vec<(String, PathBuf)>, keeping: Keeping) -> Standbys {
        let slots = pipelines
            .into_iter()
            .map(|(pipeline, dir)| {
                let slot = Slot {
                    pipeline: pipeline.clone(),
                    dir,
                    ready: Mutex::new(None),
                    taken: Notify::new(),
                };
                (pipeline, Arc::new(slot))
            })
            .collect();
        Standbys {
            slots,
            keeping: Arc::new(keeping),
        }
    }

    /// Starts one keeper task per slot; each ends, killing its standby, once `stop` fires.
    pub fn keep(&self, stop: &CancellationToken) {
        for slot in self.slots.values() {
            tokio::spawn(keeper(
                Arc::clone(&self.keeping),
                Arc::clone(slot),
                stop.clone(),
            ));
        }
    }

    /// The ready standby of `pipeline`, if there is one that still runs; its keeper starts
    /// the next one.
    pub fn take(&self, pipeline: &str) -> Option<Ready> {
        let slot = self.slots.get(pipeline)?;
        let mut ready = slot.lock().take()?;
        slot.taken.notify_one();
        match ready.worker.try_wait() {
            Ok(None) => Some(ready),
            // Died since the keeper's last look: nothing to hand a job to.
            _ => None,
        }
    }

    /// The pid of `pipeline`'s ready standby, if one is ready.
    pub fn ready_pid(&self, pipeline: &str) -> Option<u32> {
        self.slots.get(pipeline)?.lock().as_ref().map(Ready::pid)
    }

    /// Each pipeline with a standby slot, and whether a standby is ready in it now.
    pub fn ready(&self) -> Vec<(String, bool)> {
        self.slots
            .iter()
            .map(|(name, slot)| (name.clone(), slot.lock().is_some()))
            .collect()
    }
}

/// How a ready standby's wait ended.
enum Waited {
    Taken,
    Died(ExitStatus),
    Stopped,
}

/// Keeps `slot` holding a ready standby until shutdown.
async fn keeper(keeping: Arc<Keeping>, slot: Arc<Slot>, stop: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let failed = tokio::select! {
            started = start(&keeping, &slot) => match started {
                Ok(ready) => {
                    tracing::info!(pipeline = %slot.pipeline, pid = ready.pid(), "standby worker ready");
                    *slot.lock() = Some(ready);
                    backoff = BACKOFF_MIN;
                    match wait(&slot, &stop).await {
                        Waited::Taken => None,
                        Waited::Died(status) => Some(StandbyError::Exited {
                            status: status.to_string(),
                            log: log_tail(&log_path(&keeping, &slot), 20),
                        }),
                        Waited::Stopped => return,
                    }
                }
                Err(error) => Some(error),
            },
            () = stop.cancelled() => return,
        };
        if let Some(error) = failed {
            tracing::warn!(pipeline = %slot.pipeline, %error, retry_in = ?backoff, "standby worker lost; starting another");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

/// Waits while `slot` holds a ready standby: until a job takes it, it dies, or shutdown
/// (which kills it).
async fn wait(slot: &Slot, stop: &CancellationToken) -> Waited {
    let mut poll = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            () = slot.taken.notified() => {}
            _ = poll.tick() => {}
            () = stop.cancelled() => {
                // Dropping the worker kills its process group.
                drop(slot.lock().take());
                return Waited::Stopped;
            }
        }
        let mut ready = slot.lock();
        let Some(standby) = ready.as_mut() else {
            return Waited::Taken;
        };
        if let Ok(Some(status)) = standby.worker.try_wait() {
            ready.take();
            return Waited::Died(status);
        }
    }
}

/// The standby's log: its lines from start to handoff (then it writes to its job's log).
/// Truncated at each start, so it holds the last standby's lines.
fn log_path(keeping: &Keeping, slot: &Slot) -> PathBuf {
    keeping
        .worker_dir
        .join(format!("standby-{}.log", slot.pipeline))
}

/// Starts a standby for `slot`'s pipeline and waits for its READY.
async fn start(keeping: &Keeping, slot: &Slot) -> Result<Ready, StandbyError> {
    let settings = keeping;
    let log = log_path(keeping, slot);
    std::fs::File::create(&log).map_err(StandbyError::Spawn)?;
    // What its pre-work reads: the rest of a job's environment comes with its handoff.
    let env = vec![
        (
            "ARBITER_SUPERVISOR_SOCKET".to_string(),
            settings.socket.display().to_string(),
        ),
        (
            crate::config::KERNEL_CACHE_ENV.to_string(),
            settings.kernel_cache.display().to_string(),
        ),
    ];
    let launch = Launch {
        program: settings.worker.clone(),
        args: vec![
            "standby".into(),
            "--pipeline".into(),
            slot.dir.display().to_string(),
        ],
        env,
        log: log.clone(),
        // The built-in workers' one directory, where CUDA's kernel cache is found.
        dir: settings.worker_dir.clone(),
        stdin: None,
        capture_stdout: true,
    };
    let mut command = super::spawn::command(&launch).map_err(StandbyError::Spawn)?;
    command.stdin(Stdio::piped());
    let mut worker = Worker::start(command).map_err(StandbyError::Spawn)?;
    let (Some(stdin), Some(stdout)) = (worker.child.stdin.take(), worker.child.stdout.take())
    else {
        return Err(StandbyError::Spawn(std::io::Error::other(
            "the standby worker's stdio is not piped",
        )));
    };
    let mut lines = BufReader::new(stdout).lines();
    let said = tokio::time::timeout(READY_WITHIN, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == READY {
                return true;
            }
        }
        false
    })
    .await;
    match said {
        Ok(true) => Ok(Ready { worker, stdin }),
        Ok(false) => {
            let status = worker.wait().await.map_err(StandbyError::Spawn)?;
            Err(StandbyError::Exited {
                status: status.to_string(),
                log: log_tail(&log, 20),
            })
        }
        Err(_) => {
            let _ = worker.stop(settings.kill_grace).await;
            Err(StandbyError::Slow)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;

    /// What a standby does on the wire, in a shell: READY, then the handoff line kept in a
    /// file named for its pid (end of input: nothing).
    const STANDBY: &str =
        "#!/bin/sh\necho READY\nread line || exit 0\necho \"$line\" > \"handed-$$\"\n";

    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit_once(')')?.1.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    }

    /// Polls `probe` every 20 ms for at most 20 s.
    async fn soon<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_standby_is_kept_ready_handed_its_job_once_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("standby.sh");
        std::fs::write(&script, STANDBY).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let standbys = Standbys::new(
            vec![("p".into(), dir.path().to_path_buf())],
            Keeping {
                worker: script,
                socket: dir.path().join("supervisor.sock"),
                worker_dir: dir.path().to_path_buf(),
                kernel_cache: dir.path().join("cuda-cache"),
                kill_grace: Duration::from_secs(1),
            },
        );
        assert!(standbys.take("other").is_none(), "no slot, no standby");
        let stop = CancellationToken::new();
        standbys.keep(&stop);

        let first = soon("a ready standby", || standbys.ready_pid("p")).await;
        assert_eq!(standbys.ready(), [("p".to_string(), true)]);
        let ready = standbys.take("p").expect("the ready standby");
        assert_eq!(ready.pid(), first);
        let handoff = Handoff::now("job-1".into(), Vec::new(), dir.path().join("job.log"));
        let mut worker = ready.hand(&handoff).await.expect("handed over");
        assert!(worker.wait().await.unwrap().success());
        let handed = std::fs::read_to_string(dir.path().join(format!("handed-{first}"))).unwrap();
        assert_eq!(Handoff::parse(&handed).unwrap(), handoff);

        // Behind the handoff, another; killed, it is started again.
        let second = soon("a second standby", || {
            standbys.ready_pid("p").filter(|pid| *pid != first)
        })
        .await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(second as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let third = soon("a standby after the killed one", || {
            standbys.ready_pid("p").filter(|pid| *pid != second)
        })
        .await;
        assert!(!running(second));

        // At shutdown the waiting one is killed.
        stop.cancel();
        soon("the last standby gone", || (!running(third)).then_some(())).await;
        assert_eq!(standbys.ready(), [("p".to_string(), false)]);
    }
}
