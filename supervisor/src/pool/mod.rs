//! The host weight pool: the served pipelines' weights read once into sealed, page-locked
//! shared memory that outlives every worker, and handed to workers as read-only memfds.
//!
//! Why here: the pool must outlive the per-job workers and must not hold a CUDA context (so
//! that it costs no VRAM); the supervisor is the one long-lived process that has neither.
//! It never touches the GPU for it: each worker maps the pages and registers them with the
//! driver itself (see `arbiter::pool` for the client and the wire).
//!
//! - [`memory`]: one file in a sealed memfd (huge pages where the host has them, locked);
//! - [`serve`]: the Unix socket workers ask on;
//! - this module: the entries, bounded by `[pool] host_bytes` and evicted least recently
//!   used first, filled once however many ask at the same time, refilled when the file on
//!   disk changed, and only for files the supervisor serves (the weights of its pipelines
//!   and files under `[pool] allow_dirs`): a caller cannot make the supervisor read
//!   anything else.
//!
//! A worker that mapped a file keeps its pages alive after an eviction, until it exits: the
//! budget bounds what the pool holds, and each worker's extra lasts only as long as its job.

pub mod memory;
pub mod serve;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arbiter::pool::Pages;
use tokio::sync::OnceCell;

pub use memory::{FillError, Filled};

/// Why the pool did not hand out a file.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{0} is not a file this supervisor pools (only its pipelines' weights and files under [pool] allow_dirs)"
    )]
    NotServed(PathBuf),
    #[error(
        "{path} is {bytes} bytes, more than the pool's whole budget of {budget} bytes ([pool] host_bytes)"
    )]
    TooLarge {
        path: PathBuf,
        bytes: u64,
        budget: u64,
    },
    #[error("the pool's {budget} bytes are taken by files being read now; try again shortly")]
    Busy { budget: u64 },
    #[error(transparent)]
    Fill(#[from] FillError),
}

/// The pool's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Host memory the pool may hold.
    pub budget: u64,
    /// Reader threads per fill.
    pub threads: usize,
    /// Directories whose files may be pooled besides the pipelines' weights.
    pub allow_dirs: Vec<PathBuf>,
}

/// What the pool holds and has done, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    pub budget: u64,
    pub bytes: u64,
    pub files: u64,
    pub hits: u64,
    pub fills: u64,
    pub evictions: u64,
    pub refusals: u64,
    /// Pages of the files held: huge (explicit) and advised.
    pub huge_files: u64,
    pub locked_files: u64,
    pub fill_bytes: u64,
    pub fill_seconds: f64,
}

struct Entry {
    cell: Arc<OnceCell<Arc<Filled>>>,
    /// Bytes set aside for it: the file's size while it is read, its pages once filled.
    reserved: u64,
    used: u64,
}

struct State {
    entries: HashMap<PathBuf, Entry>,
    clock: u64,
    status: Status,
}

pub struct Pool {
    settings: Settings,
    served: BTreeSet<PathBuf>,
    state: Mutex<State>,
}

impl Pool {
    /// A pool that serves `files` (canonicalized here; files that do not exist yet are
    /// kept as given) and anything under `settings.allow_dirs`.
    pub fn new(settings: Settings, files: impl IntoIterator<Item = PathBuf>) -> Pool {
        let served = files
            .into_iter()
            .map(|f| f.canonicalize().unwrap_or(f))
            .collect();
        let status = Status {
            budget: settings.budget,
            ..Status::default()
        };
        Pool {
            settings: Settings {
                allow_dirs: settings
                    .allow_dirs
                    .iter()
                    .map(|d| d.canonicalize().unwrap_or_else(|_| d.clone()))
                    .collect(),
                ..settings
            },
            served,
            state: Mutex::new(State {
                entries: HashMap::new(),
                clock: 0,
                status,
            }),
        }
    }

    /// The files this pool serves, in order: what a prefill reads.
    pub fn served(&self) -> Vec<PathBuf> {
        self.served.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn status(&self) -> Status {
        let state = self.lock();
        let mut status = state.status.clone();
        status.bytes = state.entries.values().map(|e| e.reserved).sum();
        let filled: Vec<_> = state
            .entries
            .values()
            .filter_map(|e| e.cell.get())
            .collect();
        status.files = filled.len() as u64;
        status.huge_files = filled
            .iter()
            .filter(|f| f.grant().pages == Pages::Huge2MiB)
            .count() as u64;
        status.locked_files = filled.iter().filter(|f| f.grant().locked).count() as u64;
        status
    }

    /// The file at `path`, filled now if it is not pooled (or changed on disk since).
    /// Callers asking for the same file at the same time share one fill.
    pub async fn get(&self, path: &Path) -> Result<Arc<Filled>, Refusal> {
        self.get_with(path, true).await
    }

    /// As [`Pool::get`], but a file that fits only by evicting others is refused: what a
    /// prefill uses, so it never pushes out what jobs are using.
    pub async fn prefill(&self, path: &Path) -> Result<Arc<Filled>, Refusal> {
        self.get_with(path, false).await
    }

    async fn get_with(&self, path: &Path, evict: bool) -> Result<Arc<Filled>, Refusal> {
        let key = self.check_served(path)?;
        let stamp = arbiter::pool::stamp(&key).map_err(|source| FillError::Read {
            path: key.clone(),
            source,
        })?;
        let cell = self.reserve(&key, stamp, evict)?;
        let threads = self.settings.threads;
        let fill_path = key.clone();
        let settle_key = key.clone();
        let result = cell
            .get_or_try_init(|| async move {
                let started = Instant::now();
                let filled = tokio::task::spawn_blocking(move || memory::fill(&fill_path, threads))
                    .await
                    .map_err(|_| FillError::Read {
                        path: key.clone(),
                        source: std::io::Error::other("the reading task panicked"),
                    })??;
                tracing::info!(
                    file = %filled.grant().path.display(),
                    bytes = filled.grant().file_len,
                    pages = filled.grant().pages.name(),
                    locked = filled.grant().locked,
                    seconds = started.elapsed().as_secs_f64(),
                    "pooled"
                );
                let mut state = self.lock();
                state.status.fills += 1;
                state.status.fill_bytes += filled.grant().file_len;
                state.status.fill_seconds += filled.fill_seconds;
                drop(state);
                Ok::<_, Refusal>(Arc::new(filled))
            })
            .await
            .cloned();
        self.settle(&settle_key, &cell, &result);
        result
    }

    /// The canonical path of a file the pool serves.
    fn check_served(&self, path: &Path) -> Result<PathBuf, Refusal> {
        let not_served = || Refusal::NotServed(path.to_path_buf());
        if !path.is_absolute() {
            return Err(not_served());
        }
        let canonical = path.canonicalize().map_err(|_| not_served())?;
        let allowed = self.served.contains(&canonical)
            || self
                .settings
                .allow_dirs
                .iter()
                .any(|dir| canonical.starts_with(dir));
        if allowed && canonical.is_file() {
            Ok(canonical)
        } else {
            Err(not_served())
        }
    }

    /// The entry for `key`, whose file has `stamp` (its size and mtime) now, with room set
    /// aside for its bytes: a current one as it is, a stale one (the file changed) dropped,
    /// a new one made after evicting the least recently used filled entries when `evict`
    /// allows.
    fn reserve(
        &self,
        key: &Path,
        stamp: (u64, i64),
        evict: bool,
    ) -> Result<Arc<OnceCell<Arc<Filled>>>, Refusal> {
        let (bytes, _) = stamp;
        let budget = self.settings.budget;
        let mut state = self.lock();
        state.clock += 1;
        let now = state.clock;
        if let Some(entry) = state.entries.get_mut(key) {
            let current = entry
                .cell
                .get()
                .is_none_or(|filled| stamp == (filled.grant().file_len, filled.grant().mtime_ns));
            if current {
                entry.used = now;
                let cell = Arc::clone(&entry.cell);
                if cell.get().is_some() {
                    state.status.hits += 1;
                }
                return Ok(cell);
            }
            state.entries.remove(key);
        }
        if bytes > budget {
            state.status.refusals += 1;
            return Err(Refusal::TooLarge {
                path: key.to_path_buf(),
                bytes,
                budget,
            });
        }
        loop {
            let held: u64 = state.entries.values().map(|e| e.reserved).sum();
            if held + bytes <= budget {
                break;
            }
            let victim = evict
                .then(|| {
                    state
                        .entries
                        .iter()
                        .filter(|(_, e)| e.cell.get().is_some())
                        .min_by_key(|(_, e)| e.used)
                        .map(|(k, _)| k.clone())
                })
                .flatten();
            let Some(victim) = victim else {
                state.status.refusals += 1;
                return Err(Refusal::Busy { budget });
            };
            state.entries.remove(&victim);
            state.status.evictions += 1;
            tracing::info!(file = %victim.display(), "evicted from the pool");
        }
        let cell = Arc::new(OnceCell::new());
        state.entries.insert(
            key.to_path_buf(),
            Entry {
                cell: Arc::clone(&cell),
                reserved: bytes,
                used: now,
            },
        );
        Ok(cell)
    }

    /// After a fill: the entry's real size once filled, or the entry gone if it failed.
    fn settle(
        &self,
        key: &Path,
        cell: &Arc<OnceCell<Arc<Filled>>>,
        result: &Result<Arc<Filled>, Refusal>,
    ) {
        let mut state = self.lock();
        let ours = state
            .entries
            .get(key)
            .is_some_and(|e| Arc::ptr_eq(&e.cell, cell));
        match result {
            Ok(filled) => {
                if ours && let Some(entry) = state.entries.get_mut(key) {
                    entry.reserved = filled.bytes();
                }
            }
            Err(_) => {
                if ours && cell.get().is_none() {
                    state.entries.remove(key);
                }
            }
        }
    }
}

/// Reads every served file into the pool, in order, as far as each fits without evicting
/// another: at start-up, so the first job finds its weights in memory.
pub async fn prefill(pool: Arc<Pool>, stop: tokio_util::sync::CancellationToken) {
    let started = Instant::now();
    for file in pool.served() {
        if stop.is_cancelled() {
            return;
        }
        match pool.prefill(&file).await {
            Ok(_) => {}
            Err(refusal @ (Refusal::Busy { .. } | Refusal::TooLarge { .. })) => {
                tracing::info!(file = %file.display(), %refusal, "left out of the pool's prefill")
            }
            Err(refusal) => tracing::warn!(file = %file.display(), %refusal, "cannot pool"),
        }
    }
    let status = pool.status();
    tracing::info!(
        files = status.files,
        bytes = status.bytes,
        budget = status.budget,
        huge_page_files = status.huge_files,
        locked_files = status.locked_files,
        seconds = started.elapsed().as_secs_f64(),
        "weight pool prefilled"
    );
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn settings(budget: u64) -> Settings {
        Settings {
            budget,
            threads: 2,
            allow_dirs: vec![],
        }
    }

    fn write(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
        let path = dir.join(name);
        let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        path
    }

    #[tokio::test]
    async fn a_file_is_filled_once_and_then_served_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", 100_000, 3);
        let pool = Arc::new(Pool::new(settings(1 << 30), [a.clone()]));
        let asks: Vec<_> = (0..4)
            .map(|_| {
                let (pool, a) = (Arc::clone(&pool), a.clone());
                tokio::spawn(async move { pool.get(&a).await.unwrap() })
            })
            .collect();
        let mut got = vec![];
        for ask in asks {
            got.push(ask.await.unwrap());
        }
        assert!(
            got.iter().all(|f| Arc::ptr_eq(f, &got[0])),
            "one fill for concurrent asks"
        );
        assert_eq!(got[0].contents(), &std::fs::read(&a).unwrap()[..]);
        let status = pool.status();
        assert_eq!((status.files, status.fills), (1, 1));
        assert!(status.bytes >= 100_000);
    }

    #[tokio::test]
    async fn only_served_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", 10, 1);
        let other = write(dir.path(), "secret", 10, 2);
        let pool = Pool::new(settings(1 << 20), [a.clone()]);
        for asked in [
            other.clone(),
            PathBuf::from("a"),
            dir.path().join("missing"),
        ] {
            let error = pool.get(&asked).await.unwrap_err();
            assert!(matches!(error, Refusal::NotServed(_)), "{asked:?}: {error}");
        }
        // Through a symlink to a served file is the served file.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        assert!(pool.get(&link).await.is_ok());
        // An allowed directory serves what is under it, and nothing outside it.
        let sub = dir.path().join("voices");
        std::fs::create_dir(&sub).unwrap();
        let voice = write(&sub, "v", 10, 5);
        let pool = Pool::new(
            Settings {
                allow_dirs: vec![sub.clone()],
                ..settings(1 << 20)
            },
            [],
        );
        assert!(pool.get(&voice).await.is_ok());
        let escape = sub.join("..").join("secret");
        assert!(matches!(
            pool.get(&escape).await,
            Err(Refusal::NotServed(_))
        ));
    }

    #[tokio::test]
    async fn the_budget_evicts_the_least_recently_used_and_refuses_what_cannot_fit() {
        let dir = tempfile::tempdir().unwrap();
        let page = 4096;
        let files: Vec<_> = (0..3)
            .map(|i| write(dir.path(), &format!("f{i}"), 10 * page, i as u8 + 1))
            .collect();
        let big = write(dir.path(), "big", 40 * page, 9);
        let mut served = files.clone();
        served.push(big.clone());
        // Room for two files.
        let pool = Pool::new(settings(25 * page as u64), served);
        pool.get(&files[0]).await.unwrap();
        pool.get(&files[1]).await.unwrap();
        pool.get(&files[0]).await.unwrap(); // f1 is now the least recently used
        pool.get(&files[2]).await.unwrap();
        let status = pool.status();
        assert_eq!((status.files, status.evictions, status.hits), (2, 1, 1));
        // f0 is still there (a hit), f1 was evicted (a fill).
        pool.get(&files[0]).await.unwrap();
        assert_eq!(pool.status().fills, 3);
        // A prefill does not evict.
        assert!(matches!(
            pool.prefill(&files[1]).await,
            Err(Refusal::Busy { .. })
        ));
        // Larger than the budget: refused by name.
        let error = pool.get(&big).await.unwrap_err();
        assert!(matches!(error, Refusal::TooLarge { .. }), "{error}");
        assert!(error.to_string().contains("host_bytes"));
        assert!(pool.status().bytes <= 25 * page as u64);
    }

    #[tokio::test]
    async fn a_file_changed_on_disk_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a", 5000, 3);
        let pool = Pool::new(settings(1 << 20), [a.clone()]);
        let first = pool.get(&a).await.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let a2 = write(dir.path(), "a", 6000, 7);
        let second = pool.get(&a2).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.contents(), &std::fs::read(&a).unwrap()[..]);
        // The first copy stays intact for whoever still holds it.
        assert_eq!(first.contents().len(), 5000);
        assert_eq!(pool.status().files, 1);
    }
}
