//! One pooled file: its bytes read into a sealed memfd, locked in RAM.
//!
//! The memfd is tried first on explicit 2 MiB huge pages (hugetlbfs: what makes the GPU
//! driver's registration cheapest, and only there when the host reserved such pages), else
//! on ordinary shared memory with transparent-huge-page advice. The file is read by parallel
//! `pread`s straight into the mapping (one thread cannot drain the page cache), checked to be
//! unchanged afterwards, and then sealed: no write, no shrink, no grow, no further seals. From
//! then on no process, this one included, can change the bytes through the descriptor, and a
//! writable shared mapping of it is refused; our own mapping is made read-only as well. The
//! pages are locked (mlock) so the kernel never swaps them out between jobs; where the
//! memlock limit forbids it the entry says so and stays usable.

use std::fs::File;
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;
use std::time::Instant;

use arbiter::pool::{Grant, Pages};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, MmapAdvise, ProtFlags, madvise, mlock, mmap, mprotect, munmap};

const HUGE: u64 = 2 << 20;
const PAGE: u64 = 4 << 10;
/// The unit each reader thread takes in turn.
const PIECE: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} changed while the pool read it (size or modification time); try again")]
    Changed { path: PathBuf },
    #[error("cannot make shared memory for {path} ({what}): {source}")]
    Memory {
        path: PathBuf,
        what: &'static str,
        source: nix::Error,
    },
}

/// A file's bytes in sealed, read-only shared memory.
pub struct Filled {
    fd: OwnedFd,
    ptr: NonNull<std::ffi::c_void>,
    grant: Grant,
    pub fill_seconds: f64,
}

// SAFETY: the mapping is read-only and its memfd sealed against writes: any thread may read
// it, and it is unmapped once, in Drop.
unsafe impl Send for Filled {}
unsafe impl Sync for Filled {}

impl Filled {
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// Host memory it takes (the file rounded up to its pages).
    pub fn bytes(&self) -> u64 {
        self.grant.mapped_len
    }

    /// The pooled bytes, as the pool itself sees them.
    pub fn contents(&self) -> &[u8] {
        // SAFETY: the mapping holds mapped_len >= file_len readable bytes for self's life.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.grant.file_len as usize)
        }
    }
}

impl std::fmt::Debug for Filled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filled")
            .field("grant", &self.grant)
            .finish()
    }
}

impl Drop for Filled {
    fn drop(&mut self) {
        // SAFETY: mapped in `fill` with this length, unmapped once (which also unlocks it).
        let _ = unsafe { munmap(self.ptr, self.grant.mapped_len as usize) };
    }
}

/// Reads `path` into a new sealed memfd with `threads` readers.
pub fn fill(path: &Path, threads: usize) -> Result<Filled, FillError> {
    let started = Instant::now();
    let read_error = |source| FillError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let (file_len, mtime_ns) = arbiter::pool::stamp(path).map_err(read_error)?;
    let (fd, ptr, mapped_len, pages) = shared_memory(path, file_len)?;
    // From here the mapping is ours to unmap on every error path.
    let unmap = |ptr| {
        // SAFETY: the mapping made just above, not yet handed to a Filled.
        let _ = unsafe { munmap(ptr, mapped_len as usize) };
    };
    // SAFETY: a fresh writable mapping of mapped_len >= file_len bytes that nothing else sees.
    let data =
        unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), file_len as usize) };
    if let Err(error) = read_parallel(&file, data, threads) {
        unmap(ptr);
        return Err(read_error(error));
    }
    if arbiter::pool::stamp(path).ok() != Some((file_len, mtime_ns)) {
        unmap(ptr);
        return Err(FillError::Changed {
            path: path.to_path_buf(),
        });
    }
    // The pool's copy is the one kept: the page cache's would only double the memory.
    let _ = nix::fcntl::posix_fadvise(
        &file,
        0,
        file_len as i64,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let memory = |what, source| FillError::Memory {
        path: path.to_path_buf(),
        what,
        source,
    };
    let seals = SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_FUTURE_WRITE
        | SealFlag::F_SEAL_SEAL;
    if let Err(e) = fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)) {
        unmap(ptr);
        return Err(memory("sealing", e));
    }
    // SAFETY: our own mapping, of this length; read-only from now on.
    if let Err(e) = unsafe { mprotect(ptr, mapped_len as usize, ProtFlags::PROT_READ) } {
        unmap(ptr);
        return Err(memory("making our mapping read-only", e));
    }
    // SAFETY: locks pages of our own live mapping.
    let locked = match unsafe { mlock(ptr, mapped_len as usize) } {
        Ok(()) => true,
        Err(error) => {
            warn_unlocked(path, error);
            false
        }
    };
    Ok(Filled {
        fd,
        ptr,
        grant: Grant {
            path: path.to_path_buf(),
            file_len,
            mtime_ns,
            mapped_len,
            pages,
            locked,
        },
        fill_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Once per process: the pool works unlocked, but the operator should raise the limit.
fn warn_unlocked(path: &Path, error: nix::Error) {
    static WARNED: Mutex<bool> = Mutex::new(false);
    let mut warned = WARNED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*warned {
        *warned = true;
        tracing::warn!(
            file = %path.display(),
            %error,
            "the weight pool cannot lock its pages in RAM (raise the memlock limit: systemd's LimitMEMLOCK=infinity); they may be swapped out"
        );
    }
}

/// A writable shared mapping of a new memfd of at least `len` bytes: on 2 MiB huge pages
/// when the host has them, else on ordinary pages with huge-page advice.
fn shared_memory(
    path: &Path,
    len: u64,
) -> Result<(OwnedFd, NonNull<std::ffi::c_void>, u64, Pages), FillError> {
    let name = format!(
        "arbiter-pool:{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    let name = name.replace('\0', "");
    let memory = |what, source| FillError::Memory {
        path: path.to_path_buf(),
        what,
        source,
    };
    let base = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
    let huge = memfd_create(
        name.as_str(),
        base | MFdFlags::MFD_HUGETLB | MFdFlags::MFD_HUGE_2MB,
    )
    .ok()
    .and_then(|fd| map(fd, round_up(len, HUGE), false).ok());
    if let Some((fd, ptr, mapped)) = huge {
        return Ok((fd, ptr, mapped, Pages::Huge2MiB));
    }
    let fd = memfd_create(name.as_str(), base).map_err(|e| memory("memfd_create", e))?;
    let (fd, ptr, mapped) = map(fd, round_up(len, PAGE), true).map_err(|e| memory("mapping", e))?;
    Ok((fd, ptr, mapped, Pages::Advised))
}

fn map(
    fd: OwnedFd,
    len: u64,
    advise: bool,
) -> nix::Result<(OwnedFd, NonNull<std::ffi::c_void>, u64)> {
    let len = len.max(PAGE);
    nix::unistd::ftruncate(&fd, len as i64)?;
    let size = NonZeroUsize::new(len as usize).ok_or(nix::Error::EINVAL)?;
    // hugetlbfs reserves its pages at mmap (ENOMEM when the host has too few), so a failed
    // reservation shows here, not later as SIGBUS.
    // SAFETY: a fresh shared mapping of the whole memfd, at an address the kernel picks.
    let ptr = unsafe {
        mmap(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
            &fd,
            0,
        )
    }?;
    if advise {
        // SAFETY: advice on our own fresh mapping; refused advice changes nothing.
        let _ = unsafe { madvise(ptr, len as usize, MmapAdvise::MADV_HUGEPAGE) };
    }
    Ok((fd, ptr, len))
}

fn round_up(len: u64, unit: u64) -> u64 {
    len.div_ceil(unit).max(1) * unit
}

/// Reads the whole file into `data`, `threads` readers taking PIECE-sized pieces in turn.
fn read_parallel(file: &File, data: &mut [u8], threads: usize) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let pieces = data.chunks_mut(PIECE);
    let threads = threads.clamp(1, pieces.len());
    // Each piece is a disjoint `&mut [u8]` handed out once.
    let pieces = Mutex::new(pieces.enumerate());
    let reader = || -> std::io::Result<()> {
        loop {
            let next = pieces
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next();
            let Some((index, piece)) = next else {
                return Ok(());
            };
            file.read_exact_at(piece, (index * PIECE) as u64)?;
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(reader)).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a reader thread panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    fn file_of(len: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.safetensors");
        let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        (dir, path, bytes)
    }

    #[test]
    fn a_filled_file_has_its_bytes_with_any_number_of_readers() {
        for (len, threads) in [(0, 1), (1, 1), (PIECE * 3 + 17, 1), (PIECE * 3 + 17, 4)] {
            let (_dir, path, bytes) = file_of(len);
            let filled = fill(&path, threads).unwrap();
            assert_eq!(filled.contents(), &bytes[..], "len {len} threads {threads}");
            assert_eq!(filled.grant().file_len, len as u64);
            assert!(filled.bytes() >= len as u64 && filled.bytes() > 0);
        }
    }

    #[test]
    fn nobody_can_write_into_a_filled_file() {
        let (_dir, path, bytes) = file_of(1 << 20);
        let filled = fill(&path, 2).unwrap();
        let fd = filled.fd();
        // write(2) through the descriptor.
        let written = nix::unistd::write(fd, b"x");
        assert_eq!(written, Err(nix::Error::EPERM), "write through the memfd");
        // A writable shared mapping, as a worker would make to scribble on the weights.
        let size = NonZeroUsize::new(filled.bytes() as usize).unwrap();
        // SAFETY: only asks for a mapping, which must be refused.
        let writable = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_eq!(
            writable.err(),
            Some(nix::Error::EPERM),
            "a writable mapping"
        );
        // Changing its size, or removing the seals.
        assert_eq!(nix::unistd::ftruncate(fd, 0), Err(nix::Error::EPERM));
        assert_eq!(
            fcntl(fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_WRITE)),
            Err(nix::Error::EPERM)
        );
        // Reopened through /proc, as another process of the same uid could.
        let reopened = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if let Ok(mut other) = reopened {
            assert!(other.write_all(b"x").is_err(), "write through /proc");
        }
        // A read-only mapping made by a client cannot be turned writable either.
        // SAFETY: a read-only shared mapping of the memfd, unmapped below.
        let ro = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }
        .unwrap();
        // SAFETY: asks to change protection of the mapping just made; must be refused.
        let upgraded =
            unsafe { mprotect(ro, size.get(), ProtFlags::PROT_READ | ProtFlags::PROT_WRITE) };
        assert!(upgraded.is_err(), "mprotect to writable");
        // SAFETY: the mapping made above, unmapped once.
        unsafe { munmap(ro, size.get()) }.unwrap();
        assert_eq!(filled.contents(), &bytes[..]);
    }
}
