//! The simulated GPU's process table, shared by the supervisor (which reads it as NVML) and
//! by workers started on a simulated GPU (which write what they would hold on a real one).
//!
//! `<dir>/<gpu index>/<pid>` holds the bytes that process uses. Like the real driver, a
//! process's memory counts only while the process lives: the supervisor ignores and removes
//! the file of a dead pid, so a worker that exits gives its memory back the way a real one
//! does, whatever state it left its file in.

use std::path::Path;

/// Set in a worker's environment when its GPU is simulated: the table's directory...
pub const DIR_ENV: &str = "ARBITER_SIMULATED_GPU_DIR";
/// ...and the index of its GPU there.
pub const INDEX_ENV: &str = "ARBITER_SIMULATED_GPU_INDEX";

/// Records that `pid` uses `bytes` on simulated GPU `index` (0 removes the record).
pub fn record(dir: &Path, index: u32, pid: u32, bytes: u64) -> std::io::Result<()> {
    let path = dir.join(index.to_string()).join(pid.to_string());
    if bytes == 0 {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    // Write then rename, so a reader never sees half a number.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes.to_string())?;
    std::fs::rename(tmp, path)
}

/// Records this process's use, when the environment says its GPU is simulated. A no-op on a
/// real GPU, so workers call it unconditionally.
pub fn record_self(bytes: u64) -> std::io::Result<()> {
    let (Some(dir), Some(index)) = (std::env::var_os(DIR_ENV), std::env::var(INDEX_ENV).ok())
    else {
        return Ok(());
    };
    let index: u32 = index
        .parse()
        .map_err(|_| std::io::Error::other(format!("{INDEX_ENV}={index} is not a GPU index")))?;
    record(Path::new(&dir), index, std::process::id(), bytes)
}
