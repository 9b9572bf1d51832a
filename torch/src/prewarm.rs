//! Pulling weight files into the page cache before they are needed.
//!
//! A cold read from the GPU host's disk runs at ~1.5 GB/s, a warm one at tens of GB/s, so
//! files read ahead (`arbiter-video prewarm`, which the supervisor runs for the pipelines it
//! serves, at start and every `prewarm_interval`) make the later loads run at page-cache
//! speed. (Reading the next stage's components while an earlier stage computes would be the
//! same call from inside the worker; it does not do that yet.) Reading is parallel `pread`s into
//! small per-thread buffers: the data is read for its side effect and thrown away, so no
//! large buffer is needed. The optional cap keeps a prewarm from evicting more of the cache
//! than the caller can spare.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::load::{advise, rate};
use crate::readers::reader_died;
use crate::safetensors::io;
use crate::weights_error::WeightsError;

/// Each thread's buffer, and the unit of work.
const PIECE_BYTES: u64 = 4 << 20;

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PrewarmStats {
    pub bytes: u64,
    /// Files read, whole or (the last, under a cap) in part.
    pub files: usize,
    pub seconds: f64,
    pub threads: usize,
}

impl PrewarmStats {
    pub fn gb_per_s(&self) -> f64 {
        rate(self.bytes, self.seconds)
    }
}

/// Reads `paths` in order with `threads` threads until `cap_bytes` (if any) have been read.
pub fn prewarm(
    paths: &[PathBuf],
    threads: usize,
    cap_bytes: Option<u64>,
) -> Result<PrewarmStats, WeightsError> {
    if threads == 0 {
        return Err(WeightsError::Options("threads must be at least 1".into()));
    }
    let start = Instant::now();
    let mut cap = cap_bytes.unwrap_or(u64::MAX);
    let mut files = Vec::new();
    for path in paths {
        if cap == 0 {
            break;
        }
        let file = File::open(path).map_err(io(path, "opening"))?;
        let len = file
            .metadata()
            .map_err(io(path, "reading the size of"))?
            .len()
            .min(cap);
        cap -= len;
        advise(&file, 0, len);
        files.push((path.as_path(), file, len));
    }
    let pieces: Vec<(usize, u64, u64)> = files
        .iter()
        .enumerate()
        .flat_map(|(index, (_, _, len))| {
            (0..len.div_ceil(PIECE_BYTES)).map(move |p| {
                let offset = p * PIECE_BYTES;
                (index, offset, PIECE_BYTES.min(len - offset))
            })
        })
        .collect();
    let threads = threads.min(pieces.len()).max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let reader = || -> Result<(), WeightsError> {
        let mut buf = vec![0u8; PIECE_BYTES as usize];
        while !failed.load(Ordering::Relaxed) {
            let Some(&(index, offset, len)) = pieces.get(next.fetch_add(1, Ordering::Relaxed))
            else {
                break;
            };
            let (path, file, _) = &files[index];
            if let Err(e) = file.read_exact_at(&mut buf[..len as usize], offset) {
                failed.store(true, Ordering::Relaxed);
                return Err(io(path, "reading")(e));
            }
        }
        Ok(())
    };
    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(reader)).collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    for result in results {
        result.map_err(|panic| reader_died(first(paths), &panic))??;
    }
    Ok(PrewarmStats {
        bytes: files.iter().map(|(_, _, len)| len).sum(),
        files: files.iter().filter(|(_, _, len)| *len > 0).count(),
        seconds: start.elapsed().as_secs_f64(),
        threads,
    })
}

/// A path to name in an error that belongs to no one file.
fn first(paths: &[PathBuf]) -> &Path {
    paths
        .first()
        .map_or(Path::new("(no files)"), PathBuf::as_path)
}

/// Drops `paths` from the page cache (`posix_fadvise(DONTNEED)`), so that the next load is
/// a cold one: how benchmarks measure first calls from disk without root. Only clean pages
/// go, which weight files are. Returns the bytes the files hold.
pub fn evict(paths: &[PathBuf]) -> Result<u64, WeightsError> {
    let mut total = 0;
    for path in paths {
        let file = File::open(path).map_err(io(path, "opening"))?;
        let len = file
            .metadata()
            .map_err(io(path, "reading the size of"))?
            .len();
        nix::fcntl::posix_fadvise(
            &file,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(|e| WeightsError::Io {
            path: path.to_path_buf(),
            action: "evicting from the page cache",
            source: std::io::Error::from(e),
        })?;
        total += len;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prewarm_reads_everything_or_stops_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [10_000_000u64, 3, 0, 5_000_000];
        let paths: Vec<PathBuf> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let path = dir.path().join(format!("f{i}"));
                std::fs::write(&path, vec![1u8; size as usize]).unwrap();
                path
            })
            .collect();
        let all = prewarm(&paths, 4, None).unwrap();
        assert_eq!(all.bytes, sizes.iter().sum::<u64>());
        assert_eq!(all.files, 3);
        assert!(all.threads <= 4 && all.gb_per_s() > 0.0);

        let capped = prewarm(&paths, 3, Some(10_000_001)).unwrap();
        assert_eq!(capped.bytes, 10_000_001);
        assert_eq!(capped.files, 2);

        assert_eq!(prewarm(&paths, 1, Some(0)).unwrap().bytes, 0);
        assert_eq!(prewarm(&[], 8, None).unwrap().bytes, 0);
        assert!(matches!(
            prewarm(&paths, 0, None),
            Err(WeightsError::Options(_))
        ));
        let missing = [dir.path().join("missing")];
        let err = prewarm(&missing, 2, None).unwrap_err();
        assert!(matches!(err, WeightsError::Io { .. }) && err.to_string().contains("missing"));
    }
}
