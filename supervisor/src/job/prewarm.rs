//! Keeping the served pipelines' weights in the page cache, so a job's first load runs at
//! memory speed rather than disk speed (on the GPU host: tens of GB/s against ~1.6 GB/s).
//!
//! The supervisor never reads weights itself (it does not link libtorch and holds no model
//! files open): it runs `arbiter-video prewarm DIR` for each staged pipeline, at start and
//! then every `prewarm_interval` (the kernel may have evicted the files while the GPU sat
//! idle; a prewarm of files still cached costs a read at memory speed). `prewarm_cap` bounds
//! how much page cache each prewarm may take.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What to prewarm and how.
#[derive(Clone, Debug)]
pub struct Prewarm {
    pub worker: PathBuf,
    pub dirs: Vec<PathBuf>,
    pub cap: Option<u64>,
    /// Zero: only once, at start.
    pub interval: Duration,
}

impl Prewarm {
    /// Prewarms every pipeline now, then again every interval until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        if self.dirs.is_empty() {
            return;
        }
        loop {
            for dir in &self.dirs {
                if stop.is_cancelled() {
                    return;
                }
                self.once(dir).await;
            }
            if self.interval.is_zero() {
                return;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    async fn once(&self, dir: &PathBuf) {
        let mut command = tokio::process::Command::new(&self.worker);
        command.arg("prewarm").arg(dir).kill_on_drop(true);
        super::spawn::inherit_only_stdio(&mut command);
        if let Some(cap) = self.cap {
            command.arg("--cap").arg(cap.to_string());
        }
        match command.output().await {
            Ok(out) if out.status.success() => tracing::info!(
                pipeline = %dir.display(),
                result = %String::from_utf8_lossy(&out.stdout).trim(),
                "prewarmed"
            ),
            Ok(out) => tracing::warn!(
                pipeline = %dir.display(),
                status = %out.status,
                error = %String::from_utf8_lossy(&out.stderr).trim(),
                "prewarm failed"
            ),
            Err(error) => tracing::warn!(
                pipeline = %dir.display(),
                worker = %self.worker.display(),
                %error,
                "cannot run the worker to prewarm"
            ),
        }
    }
}
