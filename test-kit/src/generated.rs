//! Generated fixtures (TorchScript voices and lip-sync models, staged pipelines), made once
//! per key and copied into each test's own directory.
//!
//! The generators are seeded, so what they write depends only on what they are and the
//! arguments they are given: a key says both (a script's bytes, a binary's size and time).
//! Each generation takes seconds of Python and PyTorch start-up; a suite asks for the same
//! fixture many times. The first ask for a key generates it under
//! `<target>/tmp/arbiter-test-kit/<key>`; every ask copies it from there, so a test may
//! change its copy.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// A key for a fixture: `name`, then a hash of `parts`.
pub(crate) fn key(name: &str, parts: &[&[u8]]) -> String {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    format!("{name}-{:016x}", hasher.finish())
}

/// Fills `dest` (created if missing) with what `make` writes into the empty directory it is
/// given, running `make` only if no earlier ask for `key` (in this process or another) did.
pub(crate) fn copy_of(cache: &Path, key: &str, dest: &Path, make: impl FnOnce(&Path)) {
    let made = cache.join(key);
    {
        // One generation per key at a time in this process; other keys go on meanwhile.
        let lock = key_lock(key);
        let _held = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !made.is_dir() {
            generate(&made, make);
        }
    }
    copy_tree(&made, dest);
}

fn key_lock(key: &str) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<String, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    Arc::clone(locks.entry(key.to_string()).or_default())
}

/// Runs `make` in a directory of its own beside `made`, then renames it into place; another
/// process that got there first wins, and this one's copy is dropped.
fn generate(made: &Path, make: impl FnOnce(&Path)) {
    let parent = made.parent().expect("the cache directory");
    std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    let scratch = tempfile::Builder::new()
        .prefix(".generating-")
        .tempdir_in(parent)
        .expect("a scratch directory in the cache");
    make(scratch.path());
    let scratch = scratch.keep();
    if std::fs::rename(&scratch, made).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
        assert!(
            made.is_dir(),
            "cannot move {} to {}",
            scratch.display(),
            made.display()
        );
    }
}

/// Copies the files and directories below `from` into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("create {}: {e}", to.display()));
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let target: PathBuf = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!(
                    "copy {} to {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_fixture_is_made_once_per_key_and_every_test_gets_its_own_copy() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let runs = AtomicU32::new(0);
        let make = |out: &Path| {
            runs.fetch_add(1, Ordering::SeqCst);
            std::fs::create_dir(out.join("nested")).unwrap();
            std::fs::write(out.join("nested/model.json"), "{}").unwrap();
        };
        let key = key("model", &[b"script", b"--fps 25"]);
        assert_ne!(key, super::key("model", &[b"script", b"--fps 30"]));
        let (first, second) = (dir.path().join("a/tiny"), dir.path().join("b/tiny"));
        copy_of(&cache, &key, &first, make);
        copy_of(&cache, &key, &second, make);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        std::fs::write(first.join("nested/model.json"), "changed").unwrap();
        assert_eq!(
            std::fs::read_to_string(second.join("nested/model.json")).unwrap(),
            "{}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "only the fixture itself: {leftovers:?}");
    }
}
