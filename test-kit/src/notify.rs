//! systemd's end of the notify protocol, played by a test: a Unix datagram socket in a
//! temporary directory, handed to a service through `NOTIFY_SOCKET` (with `WATCHDOG_USEC`
//! to turn its watchdog on), that collects what the service tells systemd (`READY=1`,
//! `WATCHDOG=1`, `STOPPING=1`, `STATUS=...`), as sd_notify(3) sends it: one datagram per
//! notification, one `KEY=value` per line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;
use tokio::net::UnixDatagram;

/// The socket a service notifies, and every line it has received so far, in order.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    lines: Vec<String>,
    // Last, so the directory outlives the socket file in it.
    _dir: TempDir,
}

impl NotifySocket {
    /// Binds a fresh socket (`<tmp>/notify.sock`). Call it inside a Tokio runtime.
    pub fn bind() -> NotifySocket {
        let dir = tempfile::Builder::new()
            .prefix("arbiter-notify-")
            .tempdir()
            .expect("a temporary directory");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("bind the notify socket {}: {e}", path.display()));
        NotifySocket {
            socket,
            path,
            lines: Vec::new(),
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The environment systemd gives a `Type=notify` service with `WatchdogSec` set to
    /// `watchdog`: where to notify, and the watchdog's period in microseconds. No
    /// `WATCHDOG_PID`: the pid is not known before the spawn, and without it the variable
    /// applies to whichever process reads it.
    pub fn env(&self, watchdog: Duration) -> [(&'static str, String); 2] {
        [
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            ("WATCHDOG_USEC", watchdog.as_micros().to_string()),
        ]
    }

    /// Every line received so far, in order of arrival.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// How many received lines are exactly `line` (such as `WATCHDOG=1`).
    pub fn count(&self, line: &str) -> usize {
        self.lines.iter().filter(|l| *l == line).count()
    }

    /// Receives until `line` has arrived `times` times in all, for at most `limit`; panics
    /// with everything received if it has not. `what` names the wait in the failure.
    pub async fn wait_for(&mut self, line: &str, times: usize, limit: Duration, what: &str) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut buffer = vec![0u8; 4096];
        while self.count(line) < times {
            let received = tokio::time::timeout_at(deadline, self.socket.recv(&mut buffer)).await;
            match received {
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buffer[..n]);
                    self.lines
                        .extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
                }
                Ok(Err(e)) => panic!("receive on the notify socket {}: {e}", self.path.display()),
                Err(_) => panic!(
                    "{what}: {line:?} arrived {} of {times} times within {limit:?}; received: {:?}",
                    self.count(line),
                    self.lines
                ),
            }
        }
    }

    /// The position of the first line equal to `line`, if it arrived.
    pub fn position(&self, line: &str) -> Option<usize> {
        self.lines.iter().position(|l| l == line)
    }
}
