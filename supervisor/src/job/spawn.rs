//! Starting a worker process, and making sure it and its children end.
//!
//! Each worker gets its own process group (so one signal reaches ffmpeg and anything else it
//! started), a parent-death signal (so it cannot outlive a crashed supervisor), a minimal
//! environment and no descriptor of ours but its stdio (nothing of ours leaks into it but
//! what it needs), and its stdout and stderr in the job's log file. Dropping a [`Worker`]
//! kills its whole group. [`Worker::start`] is the group, the parent-death signal and the
//! descriptors alone, for a command built elsewhere (`client::run`'s, which keeps the
//! user's environment and terminal).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;

/// Lets `command`'s child inherit no descriptor of the supervisor but its stdio (see
/// [`close_on_exec_from`]). Every process the supervisor starts goes through this.
pub fn inherit_only_stdio(command: &mut tokio::process::Command) {
    let open_max = open_max();
    // SAFETY: only async-signal-safe calls between fork and exec: close_range and fcntl.
    unsafe {
        command.pre_exec(move || {
            close_on_exec_from(3, open_max);
            Ok(())
        });
    }
}

/// The highest descriptor number to care about in a child (bounded, for the fallback loop).
fn open_max() -> i32 {
    // SAFETY: sysconf reads a limit.
    let max = unsafe { nix::libc::sysconf(nix::libc::_SC_OPEN_MAX) };
    if max <= 0 {
        1024
    } else {
        max.min(1 << 16) as i32
    }
}

/// Marks every descriptor from `first` up close-on-exec, in the child between fork and exec.
/// Rust opens its own files that way, but C libraries in the supervisor need not, and NVML
/// keeps the NVIDIA device files open: a worker must not start holding the supervisor's
/// handles on the driver, whatever flags the library used. Marking rather than closing
/// keeps the descriptor through which the standard library reports a failed exec.
fn close_on_exec_from(first: i32, open_max: i32) {
    const CLOSE_RANGE_CLOEXEC: nix::libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags on descriptors.
    let marked = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_close_range,
            first as nix::libc::c_uint,
            nix::libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    } == 0;
    if !marked {
        // Kernels before 5.11: one descriptor at a time (EBADF for the unused ones).
        for fd in first..open_max {
            // SAFETY: fcntl on a descriptor number; an unused one answers EBADF.
            unsafe {
                nix::libc::fcntl(fd, nix::libc::F_SETFD, nix::libc::FD_CLOEXEC);
            }
        }
    }
}

/// What to start.
pub struct Launch {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub dir: PathBuf,
    /// Written to the process's stdin, which is then closed (external pipelines read their
    /// request there). None: stdin is /dev/null.
    pub stdin: Option<Vec<u8>>,
    /// Capture stdout as a pipe (external pipelines report progress there) instead of
    /// sending it to the log.
    pub capture_stdout: bool,
}

/// Variables passed through from our environment, when set.
const PASSED: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "RUST_LOG",
    "LD_LIBRARY_PATH",
    "TMPDIR",
    // CUDA's own knobs for its kernel cache (the path itself is set per supervisor).
    "CUDA_CACHE_MAXSIZE",
    "CUDA_CACHE_DISABLE",
];

pub struct Worker {
    pub child: tokio::process::Child,
    pid: u32,
    reaped: bool,
}

impl Worker {
    pub fn spawn(launch: Launch) -> std::io::Result<Worker> {
        let mut command = command(&launch)?;
        // As late as possible, so the worker's start-up is timed from the spawn itself.
        command.env(arbiter::spawn::SPAWNED_AT_ENV, arbiter::spawn::stamp_now());
        let mut worker = Worker::start(command)?;
        if let (Some(input), Some(mut stdin)) = (launch.stdin, worker.child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            });
        }
        Ok(worker)
    }
}

/// The command `launch` describes, not yet started: its program, arguments, directory, a
/// minimal environment (what [`PASSED`] lets through, then `launch.env`) and its stdio (the
/// log, or pipes). [`Worker::spawn`] starts it; a standby worker's keeper changes its stdio
/// first (`super::standby`).
pub fn command(launch: &Launch) -> std::io::Result<tokio::process::Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    let mut command = tokio::process::Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.dir)
        .env_clear()
        .envs(
            PASSED
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if launch.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if launch.capture_stdout {
            Stdio::piped()
        } else {
            Stdio::from(log.try_clone()?)
        })
        .stderr(Stdio::from(log));
    Ok(command)
}

impl Worker {
    /// Starts `command` as it is set up (program, arguments, environment, stdio), in its own
    /// process group, with SIGKILL as its parent-death signal and no descriptor of ours but
    /// its stdio: what every process we start needs so that it and its children end with us.
    pub fn start(mut command: tokio::process::Command) -> std::io::Result<Worker> {
        command.process_group(0).kill_on_drop(true);
        let parent = nix::unistd::getpid();
        // SAFETY: only async-signal-safe calls between fork and exec: prctl and getppid.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                if nix::unistd::getppid() != parent {
                    return Err(std::io::Error::other(
                        "the parent exited while starting the process",
                    ));
                }
                Ok(())
            });
        }
        inherit_only_stdio(&mut command);
        let child = command.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the process exited at once"))?;
        Ok(Worker {
            child,
            pid,
            reaped: false,
        })
    }

    /// The worker's pid, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn signal(&self, signal: Signal) {
        if !self.reaped {
            let _ = killpg(Pid::from_raw(self.pid as i32), signal);
        }
    }

    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait().await;
        // The leader is gone; make sure the rest of its group is too.
        let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        self.reaped = true;
        status
    }

    /// The leader's exit status if it has exited (then, as [`Worker::wait`], the rest of its
    /// group is killed), without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            self.reaped = true;
        }
        Ok(status)
    }

    /// SIGTERM to the group, `grace` to exit, then SIGKILL.
    pub async fn stop(&mut self, grace: Duration) -> std::io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => {
                let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
                self.reaped = true;
                status
            }
            Err(_) => {
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// Kills what may be left of a worker from an earlier run of the supervisor: the process
/// group `pgid`, if its leader is gone or is still one of our workers. True if something
/// was killed.
///
/// The leader normally died with the earlier supervisor (its parent-death signal), but what
/// it started (ffmpeg, an external pipeline's children) has no such signal and lives on in
/// the group. A group whose leader is gone (or is a zombie) is still the worker's: the
/// kernel does not hand out a pid again while a process group of that id has members, and
/// an empty group is not there to signal. A live leader is checked by its program's name.
pub fn kill_leftover(pgid: u32, program_name: &str) -> bool {
    let leader_gone = match std::fs::read_to_string(format!("/proc/{pgid}/stat")) {
        Err(_) => true,
        // `pid (comm) state …`
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    };
    let ours = leader_gone || {
        let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
        cmdline.split(|b| *b == 0).next().is_some_and(|argv0| {
            Path::new(std::str::from_utf8(argv0).unwrap_or_default())
                .file_name()
                .is_some_and(|n| n.to_string_lossy() == program_name)
        })
    };
    ours && killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL).is_ok()
}

/// The last `lines` lines of a log, for a failure message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// Whether `pid` runs (a zombie does not).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let (_, rest) = stat.rsplit_once(')')?;
                rest.trim_start().chars().next()
            })
            .is_some_and(|state| state != 'Z' && state != 'X')
    }

    fn wait_until_gone(pid: u32) -> bool {
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            !running(pid)
        })
    }

    #[test]
    fn what_a_dead_leader_left_in_its_group_is_killed() {
        // A leader that starts a child in its group and exits, as a worker whose parent-death
        // signal fired leaves its ffmpeg or an external pipeline's children behind.
        let output = Command::new("sh")
            .args(["-c", "sleep 600 >/dev/null 2>&1 & echo $!"])
            .process_group(0)
            .output()
            .expect("run sh");
        // `output` reaped the leader; the child is still in its group.
        let child: u32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
        // `pid (comm) state ppid pgrp …`
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let pgid: u32 = fields[2].parse().unwrap();
        assert_ne!(pgid, child, "the child is in the dead leader's group");
        assert!(running(child));
        assert!(kill_leftover(pgid, "arbiter-video"));
        assert!(
            wait_until_gone(child),
            "the leftover child {child} still runs"
        );
    }

    /// A child killed and reaped when dropped, even when an assertion fails first.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_live_group_led_by_another_program_is_left_alone() {
        let other = Reaped(
            Command::new("sleep")
                .arg("600")
                .process_group(0)
                .spawn()
                .expect("spawn sleep"),
        );
        let pid = other.0.id();
        assert!(!kill_leftover(pid, "arbiter-video"));
        assert!(running(pid));
    }

    fn launch(program: &str, args: &[&str], dir: &Path) -> Launch {
        Launch {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            log: dir.join("worker.log"),
            dir: dir.to_path_buf(),
            stdin: None,
            capture_stdout: true,
        }
    }

    #[tokio::test]
    async fn a_worker_inherits_no_descriptor_of_the_supervisor_but_stdio() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        // As NVML opens the device files: without close-on-exec.
        // SAFETY: open(2) of a fixed path; the descriptor is closed below.
        let fd = unsafe { nix::libc::open(c"/dev/null".as_ptr(), nix::libc::O_RDONLY) };
        assert!(fd > 2, "open /dev/null: {fd}");
        let check = format!("if [ -e /proc/$$/fd/{fd} ]; then echo leaked; else echo closed; fi");
        let mut worker = Worker::spawn(launch("sh", &["-c", &check], dir.path())).unwrap();
        let mut said = String::new();
        worker
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut said)
            .await
            .unwrap();
        // SAFETY: the descriptor opened above, closed once.
        unsafe { nix::libc::close(fd) };
        assert_eq!(said.trim(), "closed");
        assert!(worker.child.wait().await.unwrap().success());

        // A program that cannot be started is still reported as such.
        let missing = dir.path().join("no-such-worker");
        let error = Worker::spawn(launch(missing.to_str().unwrap(), &[], dir.path()));
        assert!(
            error.is_err(),
            "a missing worker binary must fail the spawn"
        );
    }
}
