//! NVIDIA MPS as the supervisor runs it (`[compute.mps]`): the control daemon
//! (`nvidia-cuda-mps-control -f`) is a child of the supervisor, started before anything
//! listens and told to quit at shutdown, so MPS lives exactly as long as the books that
//! assume it. The daemon starts an MPS server (which holds the shared GPU context) when the
//! first client connects; the supervisor itself never connects, so it still creates no CUDA
//! context.
//!
//! Who is a client: every process whose CUDA finds the daemon's pipe directory
//! (`CUDA_MPS_PIPE_DIRECTORY`). The supervisor puts it, with the workers' lower client
//! priority (and thread limit, if configured), in each video worker's environment
//! ([`Mps::worker_env`]); the tts service reads the directory from GetStatus
//! (`mps_pipe_directory`) before its CUDA starts, at the default (normal) priority. A
//! process without the variable runs beside MPS as a plain context, time-sliced as before.
//!
//! The daemon runs in its own process group with the parent-death signal
//! (`job::spawn::Worker::start`), so it cannot outlive a crashed supervisor. If it dies
//! while the supervisor runs, it is started again (with a pause between tries): clients
//! that start meanwhile run without MPS, which CUDA does on its own when it finds no daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::config::MpsConfig;
use crate::job::spawn::Worker;

/// CUDA's variables for MPS.
pub const PIPE_DIRECTORY: &str = "CUDA_MPS_PIPE_DIRECTORY";
pub const LOG_DIRECTORY: &str = "CUDA_MPS_LOG_DIRECTORY";
pub const CLIENT_PRIORITY: &str = "CUDA_MPS_CLIENT_PRIORITY";
pub const ACTIVE_THREAD_PERCENTAGE: &str = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";

/// How long a stop waits for the daemon to quit before killing it.
const QUIT_GRACE: Duration = Duration::from_secs(5);
/// The pause before starting a daemon that died again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error("[compute.mps]: cannot make {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "[compute.mps]: cannot start {program}: {source} (install the NVIDIA driver's nvidia-cuda-mps-control, give compute.mps.control as a path, or turn compute.mps off)"
    )]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("[compute.mps]: {program} exited at start-up ({status}); its log: {log}")]
    Exited {
        program: PathBuf,
        status: String,
        log: PathBuf,
    },
    #[error(
        "[compute.mps]: {program} made no control pipe in {dir} within {timeout:?}; its log: {log}"
    )]
    NoPipe {
        program: PathBuf,
        dir: PathBuf,
        timeout: Duration,
        log: PathBuf,
    },
}

/// The running daemon.
pub struct Mps {
    config: MpsConfig,
    pipe_dir: PathBuf,
    log_dir: PathBuf,
    daemon: Arc<Mutex<Option<Worker>>>,
    stop: CancellationToken,
}

impl Mps {
    /// Starts the daemon and waits for its control pipe.
    pub async fn start(
        config: &MpsConfig,
        pipe_dir: &Path,
        log_dir: &Path,
    ) -> Result<Mps, MpsError> {
        for dir in [pipe_dir, log_dir] {
            std::fs::create_dir_all(dir).map_err(|source| MpsError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let daemon = start_daemon(config, pipe_dir, log_dir).await?;
        tracing::info!(
            pid = daemon.pid(),
            pipe = %pipe_dir.display(),
            worker_priority = config.worker_priority,
            worker_active_threads = ?config.worker_active_threads,
            "MPS control daemon started"
        );
        let mps = Mps {
            config: config.clone(),
            pipe_dir: pipe_dir.to_owned(),
            log_dir: log_dir.to_owned(),
            daemon: Arc::new(Mutex::new(Some(daemon))),
            stop: CancellationToken::new(),
        };
        mps.watch();
        Ok(mps)
    }

    /// Starts the daemon again whenever it exits, until [`Mps::stop`].
    fn watch(&self) {
        let (config, pipe, log) = (
            self.config.clone(),
            self.pipe_dir.clone(),
            self.log_dir.clone(),
        );
        let (daemon, stop) = (Arc::clone(&self.daemon), self.stop.clone());
        tokio::spawn(async move {
            loop {
                let exited = {
                    let mut slot = daemon.lock().await;
                    let Some(worker) = slot.as_mut() else { return };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        status = worker.wait() => status,
                    }
                };
                if stop.is_cancelled() {
                    return;
                }
                tracing::error!(status = ?exited, log = %log.display(), "the MPS control daemon exited; starting it again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RESTART_PAUSE) => {}
                }
                match start_daemon(&config, &pipe, &log).await {
                    Ok(worker) => *daemon.lock().await = Some(worker),
                    Err(error) => {
                        tracing::error!(%error, "the MPS control daemon did not start again")
                    }
                }
            }
        });
    }

    pub fn pipe_dir(&self) -> &Path {
        &self.pipe_dir
    }

    /// What a video worker's environment gets: the pipe directory (it is then an MPS
    /// client), its lower client priority and, if configured, its thread limit.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                PIPE_DIRECTORY.to_string(),
                self.pipe_dir.display().to_string(),
            ),
            (
                CLIENT_PRIORITY.to_string(),
                self.config.worker_priority.to_string(),
            ),
        ];
        if let Some(p) = self.config.worker_active_threads {
            env.push((ACTIVE_THREAD_PERCENTAGE.to_string(), p.to_string()));
        }
        env
    }

    /// Tells the daemon to quit (the control program's `quit`, which also ends its servers
    /// once their clients are gone), then kills it if it has not within a grace.
    pub async fn stop(&self) {
        self.stop.cancel();
        let mut slot = self.daemon.lock().await;
        let Some(mut worker) = slot.take() else {
            return;
        };
        if let Err(error) = quit(&self.config.control, &self.pipe_dir).await {
            tracing::warn!(%error, "could not tell the MPS control daemon to quit");
        }
        match tokio::time::timeout(QUIT_GRACE, worker.wait()).await {
            Ok(status) => tracing::info!(status = ?status, "MPS control daemon stopped"),
            Err(_) => {
                tracing::warn!("the MPS control daemon did not quit; killing it");
                drop(worker);
            }
        }
    }
}

async fn start_daemon(
    config: &MpsConfig,
    pipe_dir: &Path,
    log_dir: &Path,
) -> Result<Worker, MpsError> {
    let log = log_dir.join("control-daemon.out");
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|source| MpsError::Dir {
            path: log.clone(),
            source,
        })?;
    let errors = output.try_clone().map_err(|source| MpsError::Dir {
        path: log.clone(),
        source,
    })?;
    let mut command = tokio::process::Command::new(&config.control);
    command
        .arg("-f")
        .env(PIPE_DIRECTORY, pipe_dir)
        .env(LOG_DIRECTORY, log_dir)
        .stdin(std::process::Stdio::null())
        .stdout(output)
        .stderr(errors);
    let mut worker = Worker::start(command).map_err(|source| MpsError::Spawn {
        program: config.control.clone(),
        source,
    })?;
    let control = pipe_dir.join("control");
    let deadline = tokio::time::Instant::now() + config.start_timeout;
    loop {
        if control.exists() {
            return Ok(worker);
        }
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_millis(20), worker.wait()).await
        {
            return Err(MpsError::Exited {
                program: config.control.clone(),
                status: status.to_string(),
                log,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MpsError::NoPipe {
                program: config.control.clone(),
                dir: pipe_dir.to_owned(),
                timeout: config.start_timeout,
                log,
            });
        }
    }
}

/// `echo quit | nvidia-cuda-mps-control`, against our daemon's pipe directory.
async fn quit(control: &Path, pipe_dir: &Path) -> std::io::Result<()> {
    let mut command = tokio::process::Command::new(control);
    command
        .env(PIPE_DIRECTORY, pipe_dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    crate::job::spawn::inherit_only_stdio(&mut command);
    let mut child = command.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"quit\n").await?;
    }
    match tokio::time::timeout(QUIT_GRACE, child.wait()).await {
        Ok(status) => status.map(|_| ()),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the control program did not answer",
        )),
    }
}
