//! `arbiter-tts serve` and `arbiter-tts info`: exec() `arbiter-tts-server`, found beside
//! this executable, with the same arguments.
//!
//! exec rather than spawn, so that the process systemd started (and a test or script holds
//! the pid of) is the one that serves: it sends READY and the watchdog's pings itself
//! (`NotifyAccess=main`), gets SIGTERM, and exits with the server's code. Beside this
//! executable rather than on `PATH`, so that the pair that was built (or shipped) together
//! runs together.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// The libtorch-linked server's file name.
pub const SERVER: &str = "arbiter-tts-server";

/// Why `arbiter-tts-server` could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot find this executable's own path, to look for {SERVER} beside it: {0}")]
    OwnPath(std::io::Error),
    #[error(
        "`arbiter-tts {command}` runs {SERVER}, which is not at {}: install it beside \
         arbiter-tts (`cargo build -p arbiter-tts` builds it; scripts/ship-tts.sh ships both)",
        path.display()
    )]
    Missing { command: String, path: PathBuf },
    #[error("cannot run {}: {source}", path.display())]
    Exec {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where `arbiter-tts-server` should be: beside this executable (symlinks resolved, as the
/// kernel reports `/proc/self/exe`).
pub fn server_path() -> Result<PathBuf, ExecError> {
    let exe = std::env::current_exe().map_err(ExecError::OwnPath)?;
    Ok(exe.with_file_name(SERVER))
}

/// Replaces this process with `arbiter-tts-server <command> <args>`, keeping `argv[0]` (so
/// its usage and errors name the command the user typed). Returns only if that failed.
pub fn exec(command: &str, args: &[OsString]) -> ExecError {
    let path = match server_path() {
        Ok(path) => path,
        Err(error) => return error,
    };
    if !path.is_file() {
        return ExecError::Missing {
            command: command.to_string(),
            path,
        };
    }
    let mut server = Command::new(&path);
    if let Some(arg0) = std::env::args_os().next() {
        server.arg0(arg0);
    }
    let source = server.arg(command).args(args).exec();
    ExecError::Exec { path, source }
}
