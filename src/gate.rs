//! The compute gate: how an interactive holder (a voice) tells the batch workers (video jobs)
//! on its GPU that it has work in flight, so that they stop queueing kernels at their next
//! block boundary until it is done.
//!
//! Why: memory is arbitrated, compute is not. The GPU time-slices between processes'
//! contexts, and a voice request is a chain of small dependent kernels; each of them that
//! lands behind a denoising block waits for the video's slice, which is what tripled the
//! voice's p95 beside video jobs (docs/benchmarks.md). If the video process has nothing
//! queued while the voice works, the voice runs as on an idle card.
//!
//! Why a shared page and not a message through the supervisor: the signal is on the voice's
//! critical path (set at the start of every request) and is read at every block boundary of
//! the video (thousands per job). An atomic store and load in a 4 KiB file that both map
//! costs nanoseconds, and needs no socket round trip in either direction.
//!
//! The file (one per GPU, made by the supervisor, mode 0666 so holders of any uid can mark
//! work) holds a header with the supervisor's settings and [`SLOTS`] slots. A holder process
//! claims one slot ([`Gate::holder`]); while any of its requests is on the GPU ([`Work`]) the
//! slot says "busy until now + `stale_after`". Workers map the file read-only, so a worker
//! cannot hold the others back. What bounds the harm of a holder that lies or dies:
//! - a busy mark counts only until its deadline (`stale_after`), so a holder that crashed
//!   mid-request stops counting on its own;
//! - a worker waits at most `max_pause` at one block boundary, and pauses at most
//!   `max_share` of its running time, so a voice under constant load slows a video job by
//!   that share and never stops it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::num::NonZeroUsize;
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::time::{ClockId, clock_gettime};

/// The file's length: one page.
pub const LEN: usize = 4096;
/// How many holder processes one GPU's gate can have at once.
pub const SLOTS: usize = 128;
const MAGIC: u64 = u64::from_le_bytes(*b"ARBGATE1");
const HEADER: usize = 64;
const SLOT: usize = 16;

/// What the supervisor decides and every process reads from the file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    /// The longest a worker waits at one block boundary.
    pub max_pause: Duration,
    /// The share of a worker's running time it may spend paused (0..=1).
    pub max_share: f64,
    /// How long one busy mark counts: longer than any one request's GPU work, short enough
    /// that a holder that died while marked costs little.
    pub stale_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_pause: Duration::from_millis(100),
            max_share: 0.25,
            stale_after: Duration::from_millis(500),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("compute gate {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("compute gate {path}: cannot map it: {source}")]
    Map { path: PathBuf, source: nix::Error },
    #[error(
        "compute gate {path} is not a gate file (wrong size or magic): give the path the supervisor reports"
    )]
    NotAGate { path: PathBuf },
    #[error("compute gate {path}: all {SLOTS} holder slots are taken by running processes")]
    Full { path: PathBuf },
}

/// One GPU's gate, mapped.
pub struct Gate {
    map: NonNull<u8>,
    path: PathBuf,
    writable: bool,
}

// SAFETY: the mapping is only ever accessed through atomics, and it lives until drop.
unsafe impl Send for Gate {}
unsafe impl Sync for Gate {}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").field("path", &self.path).finish()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the same clock in every process of the machine.
pub fn now_ns() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Gate {
    /// Makes (or remakes, clearing every slot) the gate at `path`, readable and writable by
    /// every user. Written whole to a temporary file and renamed, so no process ever maps
    /// a half-written one.
    pub fn create(path: &Path, settings: Settings) -> Result<Gate, GateError> {
        let io = |source| GateError::Io {
            path: path.to_owned(),
            source,
        };
        let mut page = vec![0u8; LEN];
        page[0..8].copy_from_slice(&MAGIC.to_le_bytes());
        page[8..12].copy_from_slice(&(SLOTS as u32).to_le_bytes());
        page[16..24].copy_from_slice(&(settings.max_pause.as_nanos() as u64).to_le_bytes());
        page[24..32].copy_from_slice(&settings.max_share.clamp(0.0, 1.0).to_bits().to_le_bytes());
        page[32..40].copy_from_slice(&(settings.stale_after.as_nanos() as u64).to_le_bytes());
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&page).map_err(io)?;
        // Not left to the umask: holders of other uids must be able to open it for writing.
        file.set_permissions(std::fs::Permissions::from_mode(0o666))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Gate::open(path, true)
    }

    /// Opens the gate as a holder: it may mark work.
    pub fn open_holder(path: &Path) -> Result<Gate, GateError> {
        Gate::open(path, true)
    }

    /// Opens the gate as a worker: read-only, it can only wait.
    pub fn open_worker(path: &Path) -> Result<Gate, GateError> {
        Gate::open(path, false)
    }

    fn open(path: &Path, writable: bool) -> Result<Gate, GateError> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| GateError::Io {
                path: path.to_owned(),
                source,
            })?;
        let len = file
            .metadata()
            .map_err(|source| GateError::Io {
                path: path.to_owned(),
                source,
            })?
            .len();
        if len != LEN as u64 {
            return Err(GateError::NotAGate {
                path: path.to_owned(),
            });
        }
        let prot = if writable {
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE
        } else {
            ProtFlags::PROT_READ
        };
        // SAFETY: a fresh shared mapping of a whole file of LEN bytes, read only through
        // atomics; the file may be changed by other processes, which atomics allow.
        let map = unsafe {
            mmap(
                None,
                NonZeroUsize::new(LEN).expect("LEN is not zero"),
                prot,
                MapFlags::MAP_SHARED,
                file.as_fd(),
                0,
            )
        }
        .map_err(|source| GateError::Map {
            path: path.to_owned(),
            source,
        })?;
        let gate = Gate {
            map: map.cast(),
            path: path.to_owned(),
            writable,
        };
        if gate.word(0).load(Ordering::Acquire) != MAGIC {
            return Err(GateError::NotAGate {
                path: path.to_owned(),
            });
        }
        Ok(gate)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The u64 at byte `offset` (8-aligned, inside the page).
    fn word(&self, offset: usize) -> &AtomicU64 {
        debug_assert!(offset.is_multiple_of(8) && offset + 8 <= LEN);
        // SAFETY: inside the mapping, aligned (the mapping is page-aligned), and only ever
        // accessed atomically by every process.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    fn owner(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: as for `word`; 4-aligned.
        unsafe { &*(self.map.as_ptr().add(HEADER + slot * SLOT) as *const AtomicU32) }
    }

    fn busy_until(&self, slot: usize) -> &AtomicU64 {
        self.word(HEADER + slot * SLOT + 8)
    }

    pub fn settings(&self) -> Settings {
        Settings {
            max_pause: Duration::from_nanos(self.word(16).load(Ordering::Relaxed)),
            max_share: f64::from_bits(self.word(24).load(Ordering::Relaxed)),
            stale_after: Duration::from_nanos(self.word(32).load(Ordering::Relaxed)),
        }
    }

    /// The running processes holding a slot (a slot whose owner died is free, and its
    /// mark expires on its own).
    pub fn holders(&self) -> Vec<u32> {
        (0..SLOTS)
            .map(|slot| self.owner(slot).load(Ordering::Acquire))
            .filter(|&pid| pid != 0 && alive(pid))
            .collect()
    }

    /// Whether some holder has work on the GPU now.
    pub fn busy(&self) -> bool {
        let now = now_ns();
        (0..SLOTS).any(|slot| self.busy_until(slot).load(Ordering::Acquire) > now)
    }

    /// Waits while a holder has work, at most `limit`; returns how long it waited.
    pub fn wait_idle(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        while self.busy() {
            let waited = started.elapsed();
            if waited >= limit {
                return waited;
            }
            // Short polls: a voice request's GPU work is a few milliseconds.
            std::thread::sleep(Duration::from_micros(100).min(limit - waited));
        }
        started.elapsed()
    }

    /// Claims a slot for this process: a free one, or one whose owner no longer runs.
    pub fn holder(self: &Arc<Self>) -> Result<Holder, GateError> {
        if !self.writable {
            return Err(GateError::Io {
                path: self.path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            });
        }
        let me = std::process::id();
        for slot in 0..SLOTS {
            let owner = self.owner(slot);
            let current = owner.load(Ordering::Acquire);
            let free = current == 0 || !alive(current);
            if free
                && owner
                    .compare_exchange(current, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                self.busy_until(slot).store(0, Ordering::Release);
                return Ok(Holder {
                    gate: Arc::clone(self),
                    slot,
                    active: AtomicUsize::new(0),
                });
            }
        }
        Err(GateError::Full {
            path: self.path.clone(),
        })
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        let _ = unsafe { munmap(self.map.cast(), LEN) };
    }
}

fn alive(pid: u32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(()) => true,
        // It exists but is another user's: still alive.
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// A holder process's slot. Requests mark their GPU work with [`Holder::work`]; the slot is
/// busy while any of them runs.
#[derive(Debug)]
pub struct Holder {
    gate: Arc<Gate>,
    slot: usize,
    active: AtomicUsize,
}

impl Holder {
    /// Marks GPU work in flight until the guard drops.
    pub fn work(&self) -> Work<'_> {
        self.active.fetch_add(1, Ordering::AcqRel);
        let until = now_ns() + self.gate.settings().stale_after.as_nanos() as u64;
        self.gate
            .busy_until(self.slot)
            .fetch_max(until, Ordering::AcqRel);
        Work { holder: self }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.gate.busy_until(self.slot).store(0, Ordering::Release);
        self.gate.owner(self.slot).store(0, Ordering::Release);
    }
}

/// GPU work in flight; the mark comes off when the last one drops.
#[derive(Debug)]
pub struct Work<'a> {
    holder: &'a Holder,
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        if self.holder.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.holder
                .gate
                .busy_until(self.holder.slot)
                .store(0, Ordering::Release);
        }
    }
}

/// A worker's side: when to pause, within the gate's bounds, and what pausing cost.
#[derive(Debug)]
pub struct Yielder {
    gate: Gate,
    settings: Settings,
    started: Instant,
    paused: Duration,
    pauses: u64,
    checks: u64,
}

/// What yielding cost a worker.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct YieldStats {
    pub checks: u64,
    pub pauses: u64,
    pub paused: Duration,
}

impl Yielder {
    pub fn new(gate: Gate) -> Yielder {
        let settings = gate.settings();
        Yielder {
            gate,
            settings,
            started: Instant::now(),
            paused: Duration::ZERO,
            pauses: 0,
            checks: 0,
        }
    }

    /// Whether a holder is busy and this worker may still pause (its share not spent).
    /// The caller drains its own queue before [`Yielder::pause`], so that the holder finds
    /// the GPU free.
    pub fn should_pause(&mut self) -> bool {
        self.checks += 1;
        let allowed = self.started.elapsed().as_secs_f64() * self.settings.max_share;
        self.paused.as_secs_f64() < allowed && self.gate.busy()
    }

    /// Waits until the holders are done, within `max_pause` and what is left of the share.
    pub fn pause(&mut self) {
        let allowed = self.started.elapsed().as_secs_f64() * self.settings.max_share
            - self.paused.as_secs_f64();
        let limit = self
            .settings
            .max_pause
            .min(Duration::from_secs_f64(allowed.max(0.0)));
        let waited = self.gate.wait_idle(limit);
        self.paused += waited;
        self.pauses += 1;
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    pub fn stats(&self) -> YieldStats {
        YieldStats {
            checks: self.checks,
            pauses: self.pauses,
            paused: self.paused,
        }
    }

    pub fn path(&self) -> &Path {
        self.gate.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(dir: &tempfile::TempDir, settings: Settings) -> Arc<Gate> {
        Arc::new(Gate::create(&dir.path().join("gpu-0.gate"), settings).unwrap())
    }

    #[test]
    fn work_marks_the_gate_busy_until_the_last_guard_drops() {
        let dir = tempfile::tempdir().unwrap();
        let g = gate(&dir, Settings::default());
        let worker = Gate::open_worker(g.path()).unwrap();
        let holder = g.holder().unwrap();
        assert!(!worker.busy());
        let a = holder.work();
        let b = holder.work();
        assert!(worker.busy());
        drop(a);
        assert!(worker.busy(), "one request is still on the GPU");
        drop(b);
        assert!(!worker.busy());
    }

    #[test]
    fn a_mark_left_behind_expires_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let g = gate(
            &dir,
            Settings {
                stale_after: Duration::from_millis(30),
                ..Settings::default()
            },
        );
        let holder = g.holder().unwrap();
        let work = holder.work();
        std::mem::forget(work);
        assert!(g.busy());
        let waited = g.wait_idle(Duration::from_secs(5));
        assert!(!g.busy());
        assert!(waited < Duration::from_secs(5), "the stale mark expired");
    }

    #[test]
    fn settings_travel_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            max_pause: Duration::from_millis(7),
            max_share: 0.5,
            stale_after: Duration::from_millis(900),
        };
        let g = gate(&dir, settings);
        assert_eq!(Gate::open_worker(g.path()).unwrap().settings(), settings);
    }

    #[test]
    fn a_worker_cannot_mark_work_and_a_stranger_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let g = gate(&dir, Settings::default());
        let worker = Arc::new(Gate::open_worker(g.path()).unwrap());
        assert!(worker.holder().is_err());
        let other = dir.path().join("other");
        std::fs::write(&other, vec![0u8; LEN]).unwrap();
        assert!(matches!(
            Gate::open_worker(&other),
            Err(GateError::NotAGate { .. })
        ));
        std::fs::write(&other, b"short").unwrap();
        assert!(matches!(
            Gate::open_holder(&other),
            Err(GateError::NotAGate { .. })
        ));
    }

    #[test]
    fn slots_are_reused_after_a_holder_goes_and_taken_over_from_the_dead() {
        let dir = tempfile::tempdir().unwrap();
        let g = gate(&dir, Settings::default());
        let first = g.holder().unwrap();
        let slot = first.slot;
        drop(first);
        assert_eq!(g.holder().unwrap().slot, slot);
        // A slot owned by a pid that does not run (pid_max is below 2^22) is free.
        g.owner(3).store(4_194_303, Ordering::Release);
        g.busy_until(3).store(u64::MAX, Ordering::Release);
        let mut holders: Vec<Holder> = (0..SLOTS).map_while(|_| g.holder().ok()).collect();
        assert_eq!(holders.len(), SLOTS, "every slot, the dead one's too");
        assert!(matches!(g.holder(), Err(GateError::Full { .. })));
        holders.clear();
        assert!(!g.busy(), "the dead holder's mark went with its slot");
    }

    #[test]
    fn a_worker_pauses_within_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let g = gate(
            &dir,
            Settings {
                max_pause: Duration::from_millis(20),
                max_share: 1.0,
                stale_after: Duration::from_secs(60),
            },
        );
        let holder = g.holder().unwrap();
        let mut y = Yielder::new(Gate::open_worker(g.path()).unwrap());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!y.should_pause(), "nobody is busy");
        let _work = holder.work();
        assert!(y.should_pause());
        y.pause();
        let stats = y.stats();
        assert_eq!(stats.pauses, 1);
        assert!(stats.paused >= Duration::from_millis(20), "{stats:?}");
        assert!(stats.paused < Duration::from_secs(5), "{stats:?}");
    }

    #[test]
    fn a_worker_that_spent_its_share_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let g = gate(
            &dir,
            Settings {
                max_pause: Duration::from_secs(10),
                max_share: 0.0,
                stale_after: Duration::from_secs(60),
            },
        );
        let holder = g.holder().unwrap();
        let _work = holder.work();
        let mut y = Yielder::new(Gate::open_worker(g.path()).unwrap());
        assert!(!y.should_pause(), "a share of 0 never pauses");
    }
}
