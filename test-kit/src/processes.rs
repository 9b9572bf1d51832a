//! Child processes of a test: ones that log to a file and are killed when dropped, a
//! stand-in for a foreign GPU user, signals, and waiting for an exit or for a pid to go.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::waiting::eventually;

/// How long [`gone`] waits for a process to end.
const GONE_TIMEOUT: Duration = Duration::from_secs(20);

/// A child process whose stdout and stderr go to a log file, SIGKILLed (and reaped) when
/// dropped; its output is printed then if the test is failing (or `ARBITER_TEST_LOGS` is
/// set).
pub struct Process {
    child: Option<Child>,
    log: PathBuf,
    pid: u32,
    program: String,
}

impl Process {
    /// Spawns `command` with its stdin closed and its output going to `log`.
    pub fn spawn(mut command: Command, log: impl Into<PathBuf>) -> Process {
        let log = log.into();
        let program = command.get_program().to_string_lossy().into_owned();
        let file =
            File::create(&log).unwrap_or_else(|e| panic!("create the log {}: {e}", log.display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let pid = child.id();
        Process {
            child: Some(child),
            log,
            pid,
            program,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its stdout and stderr so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status if it has exited (reaping it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits (at most `limit`) for it to exit.
    pub async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("the child process");
        match wait_for_exit_async(child, limit).await {
            Some(status) => status,
            None => panic!(
                "{} (pid {}) did not exit within {limit:?}; output:\n{}",
                self.program,
                self.pid,
                self.output()
            ),
        }
    }

    /// Sends SIGTERM (a service's orderly shutdown), if it is still running.
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            signal(child, Signal::SIGTERM);
        }
    }

    /// SIGKILL, then reap it so its pid is really gone.
    pub fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("the child process");
        let _ = child.kill();
        child.wait().expect("reap the child process")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() || std::env::var_os("ARBITER_TEST_LOGS").is_some() {
            eprintln!(
                "----- {} (pid {}) output -----\n{}----- end of output -----",
                self.program,
                self.pid,
                self.output()
            );
        }
    }
}

/// A live child process (`sleep 60`) that stands in for a foreign GPU user, killed and
/// reaped when dropped.
pub struct Sleeper(Child);

impl Sleeper {
    pub fn spawn() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Kills and reaps it: a zombie would still have a /proc entry.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` to completion (for `check-config` and the like), with a time limit.
pub fn run_to_end(mut command: Command, limit: Duration) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = command
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
    let status = wait_for_exit(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{command:?} did not finish within {limit:?}; stderr:\n{}",
            std::fs::read_to_string(&err_path).unwrap_or_default()
        )
    });
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Polls `child` until it exits or `limit` passes (blocking; for sync contexts).
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `child` exits or `limit` passes, yielding to the runtime meanwhile so the
/// test's own gRPC connections keep being served.
pub(crate) async fn wait_for_exit_async(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let exited = async {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(limit, exited).await.ok()
}

/// Sends `signal` to `child`, ignoring a child that is already gone.
pub fn signal(child: &Child, signal: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
}

/// Whether `pid` is a live process (a zombie, dead but not yet reaped by whoever adopted
/// it, counts as gone).
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Waits (at most 20 s) until `pid` is not [`alive`]; `what` names it in the failure.
pub async fn gone(pid: u32, what: &str) {
    eventually(
        GONE_TIMEOUT,
        &format!("{what} (pid {pid}) to be gone"),
        || async { (!alive(pid)).then_some(()) },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_logs_to_its_file_and_is_gone_once_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exec sleep 60"]);
        let mut process = Process::spawn(command, dir.path().join("sh.log"));
        let pid = process.pid();
        assert!(alive(pid));
        crate::waiting::eventually(Duration::from_secs(10), "both lines logged", || async {
            let output = process.output();
            (output.contains("out\n") && output.contains("err\n")).then_some(())
        })
        .await;
        assert!(process.try_wait().is_none());
        assert!(!process.kill().success());
        gone(pid, "the killed sh").await;
    }

    #[test]
    fn dropping_a_process_kills_it_and_a_sleeper_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleep = Command::new("sleep");
        sleep.arg("60");
        let process = Process::spawn(sleep, dir.path().join("sleep.log"));
        let sleeper = Sleeper::spawn();
        let pids = [process.pid(), sleeper.pid()];
        assert!(pids.iter().all(|&pid| alive(pid)));
        drop((process, sleeper));
        assert!(pids.iter().all(|&pid| !alive(pid)));
    }

    #[test]
    fn run_to_end_keeps_both_outputs_and_the_status() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let output = run_to_end(command, Duration::from_secs(10));
        assert_eq!(output.status.code(), Some(3));
        assert_eq!(output.stdout, b"out\n");
        assert_eq!(output.stderr, b"err\n");
    }
}
