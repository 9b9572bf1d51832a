//! What each model has been measured to need on the GPU, so that its lease is sized from
//! what it really used rather than from its parameters. The lip-sync work on the H100 found
//! parameters plus a 256 MiB workspace too small by about 0.5 GB of activations: only the
//! caching allocator's peak while the model loads and runs says what it needs.
//!
//! Kept in `model-sizes.json` in the service's state directory (`--state-dir`), so a
//! restarted service asks for the right lease at the first load. A model is keyed by its
//! file's path, length and modification time: a replaced model file is measured anew. The
//! file is rewritten whole through a rename, so a crash leaves the old one or the new one;
//! one that cannot be read is set aside with a warning (sizes are learnt again), never fatal.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use arbiter_torch::allocator;

pub const FILE: &str = "model-sizes.json";

/// The measured sizes, and where they are kept (nowhere: measured for this run only).
#[derive(Debug, Default)]
pub struct ModelSizes {
    path: Option<PathBuf>,
    sizes: Mutex<BTreeMap<String, u64>>,
}

impl ModelSizes {
    /// Reads `dir/model-sizes.json`, if there is one; `None`: keep nothing on disk.
    pub fn open(dir: Option<&Path>) -> ModelSizes {
        let Some(dir) = dir else {
            return ModelSizes::default();
        };
        let path = dir.join(FILE);
        let sizes = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, u64>>(&bytes) {
                Ok(sizes) => sizes,
                Err(error) => {
                    let aside = path.with_extension("json.unreadable");
                    tracing::warn!(path = %path.display(), %error, aside = %aside.display(), "the measured model sizes cannot be read; setting them aside and measuring again");
                    let _ = std::fs::rename(&path, &aside);
                    BTreeMap::new()
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the measured model sizes; measuring again");
                BTreeMap::new()
            }
        };
        ModelSizes {
            path: Some(path),
            sizes: Mutex::new(sizes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, u64>> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The model's key: its file, as it is now (see the module docs).
    pub fn key(file: &Path) -> String {
        let meta = std::fs::metadata(file).ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let modified = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let file = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        format!("{}#{len}#{modified}", file.display())
    }

    pub fn get(&self, key: &str) -> Option<u64> {
        self.lock().get(key).copied()
    }

    /// Records a measurement; the size kept is the largest seen. Returns whether it grew
    /// (and was written, when there is a file).
    pub fn record(&self, key: &str, bytes: u64) -> bool {
        let mut sizes = self.lock();
        if sizes.get(key).is_some_and(|&known| known >= bytes) {
            return false;
        }
        sizes.insert(key.to_string(), bytes);
        if let Some(path) = &self.path
            && let Err(error) = write(path, &sizes)
        {
            tracing::warn!(path = %path.display(), %error, "cannot keep the measured model sizes; they hold until the service stops");
        }
        true
    }
}

/// One measurement at a time: [`peak_during`] resets the allocator's peak, which would
/// spoil another measurement's reading. Calls that run meanwhile unmeasured only make a
/// reading larger, the safe side for a lease.
static MEASURING: AtomicBool = AtomicBool::new(false);

/// What a measured call needed on the GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peak {
    /// The caching allocator's peak above what it had reserved as the call began.
    pub peak: u64,
    /// What stayed reserved after it (a load's weights).
    pub kept: u64,
}

/// Runs `f` (blocking work on CUDA device 0) and returns what it needed ([`Peak`]). None
/// without CUDA, or while another measurement runs.
pub fn peak_during<T>(f: impl FnOnce() -> T) -> (T, Option<Peak>) {
    if !tch::Cuda::is_available() || MEASURING.swap(true, Ordering::AcqRel) {
        return (f(), None);
    }
    let before = allocator::reset_peak(0)
        .and_then(|()| allocator::stats(0))
        .map(|s| s.reserved);
    let value = f();
    let peak = before.and_then(|before| {
        allocator::stats(0).map(|after| Peak {
            peak: after.max_reserved.saturating_sub(before),
            kept: after.reserved.saturating_sub(before),
        })
    });
    MEASURING.store(false, Ordering::Release);
    (value, peak.ok())
}

fn write(path: &Path, sizes: &BTreeMap<String, u64>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(sizes).map_err(std::io::Error::other)?;
    let temporary = path.with_extension("json.new");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_grow_to_the_largest_seen_and_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("voice.ts.pt");
        std::fs::write(&model, b"weights").expect("write");
        let key = ModelSizes::key(&model);
        let sizes = ModelSizes::open(Some(dir.path()));
        assert_eq!(sizes.get(&key), None);
        assert!(sizes.record(&key, 100));
        assert!(!sizes.record(&key, 90), "a smaller peak changes nothing");
        assert!(sizes.record(&key, 150));
        let again = ModelSizes::open(Some(dir.path()));
        assert_eq!(again.get(&key), Some(150));
    }

    #[test]
    fn a_replaced_model_is_a_new_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("lipsync.ts.pt");
        std::fs::write(&model, b"one").expect("write");
        let first = ModelSizes::key(&model);
        std::fs::write(&model, b"longer weights").expect("write");
        assert_ne!(ModelSizes::key(&model), first);
    }

    #[test]
    fn an_unreadable_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let sizes = ModelSizes::open(Some(dir.path()));
        assert!(sizes.record("k", 1));
        assert!(dir.path().join("model-sizes.json.unreadable").exists());
        assert_eq!(ModelSizes::open(Some(dir.path())).get("k"), Some(1));
    }
}
