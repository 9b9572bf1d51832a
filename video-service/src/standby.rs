//! `arbiter-video standby`: a worker started before its job, so that what a worker does
//! before its first stage is off the job's critical path.
//!
//! The supervisor keeps one per staged pipeline (`[jobs] standby`). Before any job it does
//! all that needs none: the process's start and libtorch's linking (already done by the time
//! `main` runs), the TorchScript executor's setting, every component's code deserialised on
//! the CPU ([`Preloaded`]), and CUDA's kernel cache read into the page cache, so that the
//! first kernels load at memory speed. It touches no GPU: CUDA is not initialized (it could
//! not be, the GPU is not known yet), so it holds no context and no memory. Then it prints
//! `READY` and waits for one line on stdin, its job's [`Handoff`].
//!
//! Handed a job, it becomes the job's worker: its stdout and stderr go to the job's log,
//! the job's environment is set (the leased GPU, the lease, the token), its CUDA context
//! and first kernels start on a thread of its own (overlapping the claim and the inputs,
//! which come before the first component's load), and the job runs
//! exactly as `arbiter-video run` runs it (`job::run_prestarted`). It exits after the job,
//! so every byte goes back as from any worker. End of input instead of a handoff: the
//! supervisor no longer needs it, and it exits quietly.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use arbiter::standby::{Handoff, HandoffError, READY};

use crate::job::outcome::Outcome;
use crate::pipeline::preloaded::{PreloadError, Preloaded};
use crate::worker::{SOCKET_ENV, TOKEN_ENV};

/// The most of CUDA's kernel cache read ahead.
const KERNEL_CACHE_CAP: u64 = 2 << 30;
/// CUDA's own variable naming its kernel cache.
const KERNEL_CACHE_ENV: &str = "CUDA_CACHE_PATH";

/// Why a standby worker stopped before its job.
#[derive(Debug, thiserror::Error)]
pub enum StandbyError {
    #[error("cannot read the pipeline's code ahead: {0}")]
    Preload(#[from] PreloadError),
    #[error("cannot say READY on stdout: {0}")]
    Ready(std::io::Error),
    #[error("cannot read the handoff on stdin: {0}")]
    Read(std::io::Error),
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    #[error("the handoff does not give {0}")]
    Missing(&'static str),
    #[error("cannot send the output to the job's log {path}: {source}")]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the standby ended with: no job (end of input), or its job's outcome.
pub enum Ended {
    NoJob,
    Ran(Outcome),
}

/// Runs a standby for the pipeline at `dir`: pre-work, READY, the handoff, the job.
pub fn run(dir: &Path) -> Result<Ended, StandbyError> {
    let started = Instant::now();
    if !arbiter_torch::jit::plain_executor() {
        tracing::warn!("libtorch kept its TorchScript graph optimizer on");
    }
    let (manifest, preloaded) = Preloaded::load(dir)?;
    warm_kernel_cache();
    tracing::info!(
        pipeline = %manifest.name,
        components = ?preloaded.names(),
        preload_ms = preloaded.ms,
        ready_ms = crate::metadata::millis(started),
        "standby ready"
    );
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{READY}")
        .and_then(|()| stdout.flush())
        .map_err(StandbyError::Ready)?;
    drop(stdout);

    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(StandbyError::Read)?;
    if read == 0 {
        return Ok(Ended::NoJob);
    }
    let handoff = Handoff::parse(&line)?;
    take_over(&handoff)?;
    let env = handoff.env();
    let value = |key: &'static str| {
        env.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .ok_or(StandbyError::Missing(key))
    };
    let socket = PathBuf::from(value(SOCKET_ENV)?);
    let token = value(TOKEN_ENV)?;
    tracing::info!(job = %handoff.job_id, "handed a job");
    let preload_ms = preloaded.ms;
    Ok(Ended::Ran(crate::job::run_prestarted(
        &socket, token, preloaded, preload_ms,
    )))
}

/// Makes this process the job's worker as a spawn would have: its output into the job's
/// log, and the job's environment, set before CUDA starts (which reads it then).
fn take_over(handoff: &Handoff) -> Result<(), StandbyError> {
    let log_error = |source| StandbyError::Log {
        path: handoff.log.clone(),
        source,
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&handoff.log)
        .map_err(log_error)?;
    std::io::stdout().lock().flush().map_err(log_error)?;
    nix::unistd::dup2_stdout(&log).map_err(|e| log_error(e.into()))?;
    nix::unistd::dup2_stderr(&log).map_err(|e| log_error(e.into()))?;
    // No thread of ours runs: the kernel cache's readers are joined, the job's runtime and
    // its CUDA thread start after this.
    arbiter_torch::device::set_environment(&handoff.env());
    Ok(())
}

/// Reads CUDA's kernel cache (its JIT-compiled kernels, `CUDA_CACHE_PATH`) into the page
/// cache, so that the job's first kernels load from memory; bounded by
/// [`KERNEL_CACHE_CAP`]. A cache that is not there yet is nothing to warm.
fn warm_kernel_cache() {
    let Some(dir) = std::env::var_os(KERNEL_CACHE_ENV).map(PathBuf::from) else {
        return;
    };
    let mut files = Vec::new();
    collect_files(&dir, 4, &mut files);
    if files.is_empty() {
        return;
    }
    match arbiter_torch::prewarm(&files, 4, Some(KERNEL_CACHE_CAP)) {
        Ok(stats) => tracing::info!(
            files = stats.files,
            bytes = stats.bytes,
            seconds = stats.seconds,
            "kernel cache read ahead"
        ),
        Err(error) => tracing::warn!(%error, "cannot read the kernel cache ahead"),
    }
}

/// The files under `dir`, down to `depth` levels.
fn collect_files(dir: &Path, depth: u32, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_file() => files.push(path),
            Ok(kind) if kind.is_dir() && depth > 0 => collect_files(&path, depth - 1, files),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_cache_is_listed_to_its_depth() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(dir.path().join("index"), b"1").unwrap();
        std::fs::write(deep.join("kernel"), b"2").unwrap();
        let mut files = Vec::new();
        collect_files(dir.path(), 4, &mut files);
        files.sort();
        assert_eq!(files, [deep.join("kernel"), dir.path().join("index")]);
        let mut shallow = Vec::new();
        collect_files(dir.path(), 0, &mut shallow);
        assert_eq!(shallow, [dir.path().join("index")]);
    }
}
