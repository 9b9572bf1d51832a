//! The host weight pool's wire and its client side: how a model process gets a file's bytes
//! from the pool that the supervisor keeps, as a read-only mapping of shared memory.
//!
//! Why: a worker per job reads every component from the page cache and pins it again in each
//! new process; the pool reads each weights file once into page-locked shared memory owned
//! by a process without a CUDA context (the supervisor), and every worker maps the same
//! pages. A file is handed out as a sealed memfd over a Unix socket (SCM_RIGHTS): the seals
//! (no write, no shrink, no grow) make the bytes immutable for every process that maps them,
//! whatever its uid, so a worker cannot corrupt what the next one loads.
//!
//! The exchange is one JSON line each way: an [`Ask`] naming the file, then an [`Answer`]
//! whose message carries the descriptor when granted. The client checks the grant against
//! the file on disk (size and modification time): a file replaced since it was pooled is
//! [`PoolError::Stale`], and the caller reads the file itself.

use std::io::{IoSlice, IoSliceMut, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::Duration;

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

/// The variable that tells a model process where the pool's socket is.
pub const SOCKET_ENV: &str = "ARBITER_POOL_SOCKET";

/// The longest answer a client reads (an answer is a few hundred bytes).
const MAX_MESSAGE: usize = 64 << 10;

/// What a client asks for: one file, by its absolute path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    pub path: PathBuf,
}

/// The pool's answer to an [`Ask`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Answer {
    /// The file's bytes are in the memfd that comes with this message.
    Granted(Grant),
    /// Not pooled, with the reason (for the caller's log: it falls back to reading the file).
    Refused { reason: String },
}

/// A pooled file, as the pool filled it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub path: PathBuf,
    /// The file's length, which is how many bytes of the mapping are the file.
    pub file_len: u64,
    /// The file's modification time (ns since the epoch) when it was read.
    pub mtime_ns: i64,
    /// The memfd's size: the file's length rounded up to the page size the pool got.
    pub mapped_len: u64,
    /// Which pages back it.
    pub pages: Pages,
    /// Whether the pool holds the pages locked in RAM (mlock): never swapped out.
    pub locked: bool,
}

/// The pages behind a pooled file. Larger pages make registering it with the GPU driver
/// cheaper (fewer pages to pin and map).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pages {
    /// Explicit 2 MiB huge pages (hugetlbfs): only where the host reserved them.
    Huge2MiB,
    /// Ordinary shared memory with transparent-huge-page advice, which the kernel honours
    /// only where `shmem_enabled` allows it.
    Advised,
}

impl Pages {
    pub fn name(self) -> &'static str {
        match self {
            Pages::Huge2MiB => "huge-2MiB",
            Pages::Advised => "advised",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot reach the weight pool at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the weight pool at {socket}: {what}")]
    Protocol { socket: PathBuf, what: String },
    #[error("the weight pool did not pool {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error(
        "the weight pool's copy of {path} is stale: it has {pooled} bytes from {pooled_mtime_ns}, the file {actual} bytes from {actual_mtime_ns}"
    )]
    Stale {
        path: PathBuf,
        pooled: u64,
        pooled_mtime_ns: i64,
        actual: u64,
        actual_mtime_ns: i64,
    },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot map the weight pool's copy of {path}: {source}")]
    Map { path: PathBuf, source: nix::Error },
}

/// The size and modification time of `path`, as the pool and its clients compare them.
pub fn stamp(path: &Path) -> std::io::Result<(u64, i64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.len(), meta.mtime() * 1_000_000_000 + meta.mtime_nsec()))
}

/// Asks the pool at `socket` for `path` and maps what it grants, read-only.
pub fn fetch(socket: &Path, path: &Path, timeout: Duration) -> Result<Shared, PoolError> {
    let protocol = |what: String| PoolError::Protocol {
        socket: socket.to_path_buf(),
        what,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| PoolError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    let io = |e: std::io::Error| protocol(e.to_string());
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(&Ask {
        path: path.to_path_buf(),
    })
    .map_err(|e| protocol(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let (answer, fd) = receive(&stream).map_err(|e| protocol(e.to_string()))?;
    let answer: Answer = serde_json::from_slice(answer.trim_ascii_end())
        .map_err(|e| protocol(format!("an answer that does not parse: {e}")))?;
    let grant = match answer {
        Answer::Granted(grant) => grant,
        Answer::Refused { reason } => {
            return Err(PoolError::Refused {
                path: path.to_path_buf(),
                reason,
            });
        }
    };
    let fd = fd.ok_or_else(|| protocol("a grant without its descriptor".into()))?;
    if grant.path != path || grant.mapped_len < grant.file_len {
        return Err(protocol(format!(
            "a grant for {} of {} mapped bytes, asked {}",
            grant.path.display(),
            grant.mapped_len,
            path.display()
        )));
    }
    let (actual, actual_mtime_ns) = stamp(path).map_err(|source| PoolError::File {
        path: path.to_path_buf(),
        source,
    })?;
    if (actual, actual_mtime_ns) != (grant.file_len, grant.mtime_ns) {
        return Err(PoolError::Stale {
            path: path.to_path_buf(),
            pooled: grant.file_len,
            pooled_mtime_ns: grant.mtime_ns,
            actual,
            actual_mtime_ns,
        });
    }
    Shared::map(fd, grant)
}

/// Sends `answer` on `stream` with `fd` attached (when granted): the server's half.
pub fn answer(stream: &UnixStream, answer: &Answer, fd: Option<&OwnedFd>) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut line = serde_json::to_vec(answer).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let raw = fd.map(|fd| [fd.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage<'_>> = raw
        .as_ref()
        .map(|r| ControlMessage::ScmRights(r))
        .into_iter()
        .collect();
    let sent = sendmsg::<()>(
        stream.as_fd().as_raw_fd(),
        &[IoSlice::new(&line)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    if sent != line.len() {
        return Err(std::io::Error::other("the answer was cut short"));
    }
    Ok(())
}

/// One message and the descriptor that came with it, if any.
fn receive(stream: &UnixStream) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    use std::os::fd::AsRawFd;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (len, fd) = {
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            stream.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )?;
        let mut fd = None;
        for cmsg in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                for raw in fds {
                    // SAFETY: SCM_RIGHTS gave this process a new descriptor it alone owns.
                    let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                    fd.get_or_insert(owned);
                }
            }
        }
        (message.bytes, fd)
    };
    if len == 0 {
        return Err(std::io::Error::other(
            "the pool closed the connection without answering",
        ));
    }
    buffer.truncate(len);
    Ok((buffer, fd))
}

/// A pooled file mapped read-only into this process: its bytes stay valid for the mapping's
/// life, and no process can change them (the memfd is sealed against writes).
pub struct Shared {
    ptr: NonNull<std::ffi::c_void>,
    grant: Grant,
    /// Kept so the bytes survive an eviction from the pool while mapped here.
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only shared memory that nobody can write (sealed); reading it
// from any thread is safe, and unmapping happens once, in Drop.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    fn map(fd: OwnedFd, grant: Grant) -> Result<Shared, PoolError> {
        let map_error = |source| PoolError::Map {
            path: grant.path.clone(),
            source,
        };
        let len = std::num::NonZeroUsize::new(grant.mapped_len as usize)
            .ok_or_else(|| map_error(nix::Error::EINVAL))?;
        // SAFETY: a fresh shared read-only mapping of the whole memfd; the kernel picks the
        // address; nothing aliases it mutably (the memfd is sealed against writes).
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .map_err(map_error)?;
        Ok(Shared {
            ptr,
            grant,
            _fd: fd,
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping holds `mapped_len >= file_len` readable bytes for self's life.
        unsafe {
            std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.grant.file_len as usize)
        }
    }

    /// The start of the mapping, for registering it with a driver.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr().cast::<u8>()
    }

    /// The whole mapping's length (the file's, rounded up to its pages).
    pub fn mapped_len(&self) -> usize {
        self.grant.mapped_len as usize
    }

    pub fn grant(&self) -> &Grant {
        &self.grant
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: mapped in `map` with this length; unmapped once.
        let _ = unsafe { munmap(self.ptr, self.grant.mapped_len as usize) };
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("grant", &self.grant)
            .finish()
    }
}
