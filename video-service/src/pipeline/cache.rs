//! The text-embedding cache on disk: a prompt seen before skips the text encoder entirely.
//!
//! Text encoders of video pipelines are large (tens of GB for a T5-XXL or a Gemma), and
//! building one, moving its weights to the GPU and freeing them again can take longer than
//! running it. Jobs repeat prompts (retries, seeds swept over one prompt, a negative prompt
//! shared by every job), so the worker keeps each embedding it computes under
//! `<dir>/<key>.pt`, keyed by the prompt and the encoder's identity, and on a hit never
//! loads the encoder at all.
//!
//! Every job is its own process, and several may share the directory at once, so nothing
//! here relies on a lock or on state in memory: an entry appears whole or not at all (written
//! to a temporary file, then renamed over its name), a reader keeps the file it opened even
//! if the entry is replaced or evicted meanwhile, an entry that vanishes between listing and
//! reading is a miss, and one that cannot be read (a crash before the rename reached the
//! disk, a disk error) is a miss and is deleted. Recency is the file's mtime, set on every
//! hit, so the least recently used entries are evicted first when a write takes the
//! directory over its cap.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tch::{Device, TchError, Tensor};

/// The cached files' extension.
const ENTRY: &str = "pt";
/// The memoised fingerprints' extension.
const FINGERPRINT: &str = "sha256";
/// How much of a file [`file_fingerprint`] reads at once.
const READ_BUFFER: usize = 8 << 20;
/// A temporary file older than this was left by a process that died while writing it.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

/// Makes temporary names unique between threads of one process (the pid tells processes
/// apart).
static TEMPORARIES: AtomicU64 = AtomicU64::new(0);

/// Why the cache could not be used. A damaged or vanished entry is not an error (it is a
/// miss); these are the failures a caller should hear about, such as a directory it cannot
/// write.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("could not save an embedding to {path}: {source}")]
    Save { path: PathBuf, source: TchError },
    #[error("could not move a cached embedding to {device:?}: {source}")]
    Device { device: Device, source: TchError },
    #[error("{0} changed while it was being hashed: its fingerprint would match neither version")]
    Changed(PathBuf),
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io {
        action,
        path,
        source,
    }
}

/// What an embedding is cached under: the SHA-256, in hex, of the prompt and the encoder's
/// identity. Made only by [`EmbeddingCache::key`], so it is always 64 hex digits and safe
/// as a file name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A directory of embeddings shared by every worker that opens it, bounded by a cap on
/// the bytes of its entries.
#[derive(Clone, Debug)]
pub struct EmbeddingCache {
    dir: PathBuf,
    cap_bytes: u64,
}

/// One entry found in the directory.
struct Entry {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

impl EmbeddingCache {
    /// Opens (creating it if needed) the cache in `dir`, to be kept under `cap_bytes`. The
    /// cap is enforced by this handle's writes; handles with different caps on one
    /// directory each enforce their own.
    pub fn open(dir: &Path, cap_bytes: u64) -> Result<EmbeddingCache, CacheError> {
        fs::create_dir_all(dir).map_err(io_error("create the embedding cache", dir))?;
        Ok(EmbeddingCache {
            dir: dir.to_path_buf(),
            cap_bytes,
        })
    }

    /// The key of `prompt` embedded by `encoder`. `encoder` is everything besides the
    /// prompt that the embedding depends on: the encoder's identity (its
    /// [`file_fingerprint`]), the token length, the pipeline's preprocessing, joined by the
    /// caller. A negative prompt is just another prompt.
    ///
    /// Each string is hashed after its length, so no two different pairs hash the same
    /// bytes (`("ab", "c")` and `("a", "bc")` differ).
    pub fn key(prompt: &str, encoder: &str) -> CacheKey {
        let mut hash = Sha256::new();
        hash.update(b"arbiter text embedding v1\0");
        for part in [prompt, encoder] {
            hash.update((part.len() as u64).to_le_bytes());
            hash.update(part.as_bytes());
        }
        CacheKey(hex(&hash.finalize()))
    }

    /// The embedding cached under `key`, on `device`, or `None`. A hit marks the entry as
    /// the most recently used. An entry that cannot be read is deleted and is a miss.
    pub fn get(&self, key: &CacheKey, device: Device) -> Result<Option<Tensor>, CacheError> {
        let path = self.entry(key);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error("open the cached embedding", &path)(error)),
        };
        let reader = file
            .try_clone()
            .map_err(io_error("read the cached embedding", &path))?;
        let embedding = match Tensor::load_from_stream(BufReader::new(reader)) {
            Ok(embedding) => embedding,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "a cached embedding could not be read; deleting it");
                remove_if_same(&path, &file);
                return Ok(None);
            }
        };
        if let Err(error) = file.set_modified(SystemTime::now()) {
            // Still a hit; the entry only looks older than it is to eviction.
            tracing::warn!(path = %path.display(), %error, "could not mark a cached embedding as used");
        }
        let embedding = embedding
            .f_to_device(device)
            .map_err(|source| CacheError::Device { device, source })?;
        Ok(Some(embedding))
    }

    /// Caches `embedding` under `key` (a copy on the CPU, so any process can load it),
    /// replacing any entry there, then evicts the least recently used entries until the
    /// directory is within its cap. The entry just written is never evicted, even when it
    /// alone is over the cap.
    pub fn put(&self, key: &CacheKey, embedding: &Tensor) -> Result<(), CacheError> {
        let path = self.entry(key);
        let temporary = Temporary::create(&self.dir, key.as_str())?;
        let on_cpu = embedding
            .f_to_device(Device::Cpu)
            .map_err(|source| CacheError::Device {
                device: Device::Cpu,
                source,
            })?;
        let writer = temporary
            .file
            .try_clone()
            .map_err(io_error("write", &temporary.path))?;
        on_cpu
            .save_to_stream(writer)
            .map_err(|source| CacheError::Save {
                path: temporary.path.clone(),
                source,
            })?;
        // On disk before it has a name: after a crash the entry is whole or absent.
        temporary
            .file
            .sync_all()
            .map_err(io_error("write", &temporary.path))?;
        temporary.rename(&path)?;
        self.evict(&path)
    }

    /// The bytes and the number of the entries in the directory now.
    pub fn usage(&self) -> Result<(u64, usize), CacheError> {
        let entries = self.entries()?;
        Ok((entries.iter().map(|entry| entry.bytes).sum(), entries.len()))
    }

    fn entry(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{key}.{ENTRY}"))
    }

    /// Deletes the least recently used entries, except `keep`, until the directory is
    /// within the cap; and temporary files left by writers that died.
    fn evict(&self, keep: &Path) -> Result<(), CacheError> {
        self.remove_stale_temporaries();
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
        if total <= self.cap_bytes {
            return Ok(());
        }
        entries.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
        for entry in entries.iter().filter(|entry| entry.path != keep) {
            if total <= self.cap_bytes {
                break;
            }
            match fs::remove_file(&entry.path) {
                Ok(()) => {
                    tracing::debug!(path = %entry.path.display(), bytes = entry.bytes, "evicted a cached embedding");
                }
                // Another worker evicted it first: it is gone all the same.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(io_error("evict", &entry.path)(error)),
            }
            total = total.saturating_sub(entry.bytes);
        }
        if total > self.cap_bytes {
            tracing::warn!(
                path = %keep.display(),
                bytes = total,
                cap = self.cap_bytes,
                "the embedding just cached is over the cache's cap on its own; keeping it"
            );
        }
        Ok(())
    }

    /// The entries in the directory. Files that vanish while being listed are left out.
    fn entries(&self) -> Result<Vec<Entry>, CacheError> {
        let listing =
            fs::read_dir(&self.dir).map_err(io_error("list the embedding cache", &self.dir))?;
        let mut entries = Vec::new();
        for item in listing {
            let item = item.map_err(io_error("list the embedding cache", &self.dir))?;
            let path = item.path();
            if !is_entry(&path) {
                continue;
            }
            let metadata = match item.metadata() {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io_error("inspect", &path)(error)),
            };
            if !metadata.is_file() {
                continue;
            }
            entries.push(Entry {
                bytes: metadata.len(),
                used: metadata.modified().unwrap_or(UNIX_EPOCH),
                path,
            });
        }
        Ok(entries)
    }

    /// Best effort: a temporary file that cannot be inspected or removed is left for the
    /// next writer.
    fn remove_stale_temporaries(&self) {
        let Ok(listing) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = SystemTime::now();
        for item in listing.flatten() {
            let path = item.path();
            if !Temporary::is_one(&path) {
                continue;
            }
            let stale = item
                .metadata()
                .and_then(|metadata| metadata.modified())
                .is_ok_and(|modified| {
                    now.duration_since(modified)
                        .is_ok_and(|age| age > STALE_TEMPORARY)
                });
            if stale && fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), "removed a temporary file left by a writer that died");
            }
        }
    }
}

/// Whether `path` names an entry: `<64 hex digits>.pt`.
fn is_entry(path: &Path) -> bool {
    path.extension().is_some_and(|extension| extension == ENTRY)
        && path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .is_some_and(is_digest)
}

fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit())
}

/// Deletes the entry at `path` if it is still the file `opened` (and not an entry another
/// worker has put there since it was opened).
fn remove_if_same(path: &Path, opened: &File) {
    let (Ok(opened), Ok(current)) = (opened.metadata(), fs::symlink_metadata(path)) else {
        return;
    };
    if (opened.dev(), opened.ino()) != (current.dev(), current.ino()) {
        return;
    }
    if let Err(error) = fs::remove_file(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "could not delete an unreadable cached embedding");
    }
}

/// A file being written under a temporary name (`.<name>.<pid>.<n>.tmp`, hidden from
/// listings of entries), renamed to its real name when whole and deleted if it never is.
struct Temporary {
    path: PathBuf,
    file: File,
    renamed: bool,
}

impl Temporary {
    fn create(dir: &Path, name: &str) -> Result<Temporary, CacheError> {
        let n = TEMPORARIES.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        Ok(Temporary {
            path,
            file,
            renamed: false,
        })
    }

    fn is_one(path: &Path) -> bool {
        path.file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with('.') && name.ends_with(".tmp"))
    }

    /// Gives the file its real name, replacing whatever had it, in one step.
    fn rename(mut self, to: &Path) -> Result<(), CacheError> {
        fs::rename(&self.path, to).map_err(io_error("rename", &self.path))?;
        self.renamed = true;
        Ok(())
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The SHA-256 (hex) of the file at `path`'s contents: an encoder's identity for
/// [`EmbeddingCache::key`], robust to the file being renamed or copied.
///
/// Hashing a 24 GB encoder takes a minute, far longer than the embedding it would save, so
/// the digest is memoised in `memo_dir` under the file's canonical path, size, mtime (in
/// nanoseconds) and inode: a file rewritten in place, or replaced by another, changes at
/// least one of these and is hashed again. (A rewrite that keeps the size and restores the
/// mtime is not seen, by design: that is what makes the memo cheap.) The file is read in
/// 8 MiB pieces, and if it changes while being read the answer is an error rather than a
/// digest of neither version.
pub fn file_fingerprint(path: &Path, memo_dir: &Path) -> Result<String, CacheError> {
    let canonical = fs::canonicalize(path).map_err(io_error("resolve", path))?;
    let mut file = File::open(&canonical).map_err(io_error("open", &canonical))?;
    let before = Stamp::of(&file, &canonical)?;
    fs::create_dir_all(memo_dir).map_err(io_error("create the fingerprint memo", memo_dir))?;
    let memo = memo_dir.join(format!("{}.{FINGERPRINT}", before.key(&canonical)));
    match fs::read_to_string(&memo) {
        Ok(digest) if is_digest(digest.trim()) => return Ok(digest.trim().to_string()),
        Ok(_) => {
            tracing::warn!(memo = %memo.display(), "a memoised fingerprint is damaged; hashing the file again");
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => {
            tracing::warn!(memo = %memo.display(), %error, "could not read a memoised fingerprint; hashing the file again");
        }
    }

    let mut hash = Sha256::new();
    let mut buffer = vec![0u8; READ_BUFFER];
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_error("read", &canonical)(error)),
        };
        hash.update(&buffer[..read]);
    }
    if Stamp::of(&file, &canonical)? != before {
        return Err(CacheError::Changed(canonical));
    }
    let digest = hex(&hash.finalize());

    // The memo only saves time: failing to write it costs the next job a rehash, no more.
    let written = Temporary::create(memo_dir, &before.key(&canonical)).and_then(|temporary| {
        use std::io::Write;
        (&temporary.file)
            .write_all(digest.as_bytes())
            .map_err(io_error("write", &temporary.path))?;
        temporary.rename(&memo)
    });
    if let Err(error) = written {
        tracing::warn!(%error, "could not memoise a file's fingerprint");
    }
    Ok(digest)
}

/// What identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    bytes: u64,
    mtime_ns: i128,
    device: u64,
    inode: u64,
}

impl Stamp {
    fn of(file: &File, path: &Path) -> Result<Stamp, CacheError> {
        let metadata = file.metadata().map_err(io_error("inspect", path))?;
        Ok(Stamp {
            bytes: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            device: metadata.dev(),
            inode: metadata.ino(),
        })
    }

    /// The memo's name for this version of the file at `canonical`.
    fn key(&self, canonical: &Path) -> String {
        let mut hash = Sha256::new();
        hash.update(b"arbiter file fingerprint v1\0");
        let path = canonical.as_os_str().as_bytes();
        hash.update((path.len() as u64).to_le_bytes());
        hash.update(path);
        hash.update(self.bytes.to_le_bytes());
        hash.update(self.mtime_ns.to_le_bytes());
        hash.update(self.device.to_le_bytes());
        hash.update(self.inode.to_le_bytes());
        hex(&hash.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for &byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn embedding(seed: i64) -> Tensor {
        Tensor::arange(2 * 16, (Kind::Float, Device::Cpu))
            .multiply_scalar(seed as f64)
            .sin()
            .reshape([1, 2, 16])
    }

    fn set_used(cache: &EmbeddingCache, key: &CacheKey, seconds_ago: u64) {
        let file = File::options().append(true).open(cache.entry(key)).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(seconds_ago))
            .unwrap();
    }

    #[test]
    fn a_miss_then_a_hit_returns_an_equal_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(&dir.path().join("embeddings"), 1 << 20).unwrap();
        let key = EmbeddingCache::key("a red fox", "encoder");
        assert!(cache.get(&key, Device::Cpu).unwrap().is_none());
        assert_eq!(cache.usage().unwrap(), (0, 0));
        cache.put(&key, &embedding(1)).unwrap();
        let hit = cache.get(&key, Device::Cpu).unwrap().unwrap();
        assert!(hit.equal(&embedding(1)));
        assert_eq!(hit.kind(), Kind::Float);
        assert_eq!(cache.usage().unwrap().1, 1);
        // Putting it again replaces it and leaves no temporary file behind.
        cache.put(&key, &embedding(2)).unwrap();
        assert!(
            cache
                .get(&key, Device::Cpu)
                .unwrap()
                .unwrap()
                .equal(&embedding(2))
        );
        assert_eq!(fs::read_dir(&cache.dir).unwrap().count(), 1);
    }

    #[test]
    fn keys_differ_by_prompt_and_by_encoder() {
        let key = EmbeddingCache::key("a red fox", "t5 abc");
        assert!(is_digest(key.as_str()));
        assert_eq!(key, EmbeddingCache::key("a red fox", "t5 abc"));
        assert_ne!(key, EmbeddingCache::key("a red fox ", "t5 abc"));
        assert_ne!(key, EmbeddingCache::key("a red fox", "t5 abd"));
        // The parts are length-prefixed, so moving bytes across the boundary changes it.
        assert_ne!(
            EmbeddingCache::key("ab", "c"),
            EmbeddingCache::key("a", "bc")
        );
    }

    #[test]
    fn eviction_removes_the_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let unbounded = EmbeddingCache::open(dir.path(), u64::MAX).unwrap();
        let keys: Vec<_> = ["a", "b", "c", "d"]
            .iter()
            .map(|prompt| EmbeddingCache::key(prompt, "encoder"))
            .collect();
        for (seed, key) in keys.iter().take(3).enumerate() {
            unbounded.put(key, &embedding(seed as i64)).unwrap();
        }
        // Put in the order a, b, c; then a is used, so b is the oldest.
        set_used(&unbounded, &keys[0], 300);
        set_used(&unbounded, &keys[1], 200);
        set_used(&unbounded, &keys[2], 100);
        let (three, count) = unbounded.usage().unwrap();
        assert_eq!(count, 3);

        // A second handle on the same directory, with room for three entries.
        let cache = EmbeddingCache::open(dir.path(), three).unwrap();
        assert!(cache.get(&keys[0], Device::Cpu).unwrap().is_some());
        cache.put(&keys[3], &embedding(3)).unwrap();
        assert_eq!(cache.usage().unwrap(), (three, 3));
        assert!(cache.get(&keys[1], Device::Cpu).unwrap().is_none());
        for key in [&keys[0], &keys[2], &keys[3]] {
            assert!(cache.get(key, Device::Cpu).unwrap().is_some());
        }
    }

    #[test]
    fn an_entry_over_the_cap_on_its_own_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path(), 1).unwrap();
        let first = EmbeddingCache::key("first", "encoder");
        let second = EmbeddingCache::key("second", "encoder");
        cache.put(&first, &embedding(1)).unwrap();
        assert_eq!(cache.usage().unwrap().1, 1);
        cache.put(&second, &embedding(2)).unwrap();
        assert_eq!(cache.usage().unwrap().1, 1);
        assert!(cache.get(&first, Device::Cpu).unwrap().is_none());
        assert!(
            cache
                .get(&second, Device::Cpu)
                .unwrap()
                .unwrap()
                .equal(&embedding(2))
        );
    }

    #[test]
    fn a_corrupt_entry_is_a_miss_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path(), 1 << 20).unwrap();
        let garbage = EmbeddingCache::key("garbage", "encoder");
        fs::write(cache.entry(&garbage), b"not a tensor at all").unwrap();
        assert!(cache.get(&garbage, Device::Cpu).unwrap().is_none());
        assert!(!cache.entry(&garbage).exists());

        // A partial entry: a whole one cut short.
        let partial = EmbeddingCache::key("partial", "encoder");
        cache.put(&partial, &embedding(1)).unwrap();
        let bytes = fs::read(cache.entry(&partial)).unwrap();
        fs::write(cache.entry(&partial), &bytes[..bytes.len() / 2]).unwrap();
        assert!(cache.get(&partial, Device::Cpu).unwrap().is_none());
        assert!(!cache.entry(&partial).exists());
        assert_eq!(cache.usage().unwrap(), (0, 0));
    }

    #[test]
    fn concurrent_writers_and_readers_see_whole_entries_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path(), 1 << 20).unwrap();
        let key = EmbeddingCache::key("shared", "encoder");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        cache.put(&key, &embedding(7)).unwrap();
                        if let Some(hit) = cache.get(&key, Device::Cpu).unwrap() {
                            assert!(hit.equal(&embedding(7)));
                        }
                    }
                });
            }
        });
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_fingerprint_is_memoised_and_changes_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let memo = dir.path().join("memo");
        let path = dir.path().join("encoder.safetensors");
        fs::write(&path, b"abc").unwrap();
        let sha_abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(file_fingerprint(&path, &memo).unwrap(), sha_abc);

        // Same size, mtime restored: the memo answers without reading the file.
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, b"xyz").unwrap();
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        assert_eq!(file_fingerprint(&path, &memo).unwrap(), sha_abc);
        // Reached by another path, it is still the same file.
        let other = dir.path().join(".").join("encoder.safetensors");
        assert_eq!(file_fingerprint(&other, &memo).unwrap(), sha_abc);

        // A new mtime: hashed again.
        File::options()
            .append(true)
            .open(&path)
            .unwrap()
            .set_modified(modified + Duration::from_secs(1))
            .unwrap();
        let sha_xyz = "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282";
        assert_eq!(file_fingerprint(&path, &memo).unwrap(), sha_xyz);
        // A new size: hashed again.
        fs::write(&path, b"abcd").unwrap();
        let fingerprint = file_fingerprint(&path, &memo).unwrap();
        assert!(is_digest(&fingerprint));
        assert_ne!(fingerprint, sha_abc);
        assert_ne!(fingerprint, sha_xyz);

        assert!(matches!(
            file_fingerprint(&dir.path().join("missing"), &memo),
            Err(CacheError::Io { .. })
        ));
    }
}
