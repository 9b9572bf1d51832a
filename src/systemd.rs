//! systemd's notify protocol, shared by every long-running Arbiter service (the supervisor
//! and `arbiter-tts`): readiness, stopping and the watchdog's pings.
//!
//! Every call is a no-op when the process was not started by systemd (no `NOTIFY_SOCKET`),
//! so the same binary runs under a unit, in a terminal and in tests. A failed notification
//! is logged, never fatal: the service itself is fine, and systemd notices a missing READY
//! or missing pings on its own (and restarts the service if the unit says so).
//!
//! Here rather than in each service because it is the same protocol for both, and this crate
//! is the one they share that does not link libtorch.

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Tells systemd the service is up (`READY=1`), with a line for `systemctl status`. Send it
/// only once the listeners accept: units that order themselves after ours start then.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the service is shutting down (`STOPPING=1`), so a slow drain is not
/// mistaken for a hang.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pings the watchdog (`WATCHDOG=1`). Call it only from a loop whose progress shows the
/// service works (each caller says in its docs what its pings prove): a ping from a thread
/// that runs whatever else is stuck would keep a wedged service alive.
pub fn alive() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to call [`alive`]: half the unit's `WatchdogSec` (`WATCHDOG_USEC`), as
/// sd_watchdog_enabled(3) advises, or None without a watchdog (or when `WATCHDOG_PID` names
/// another process, such as the parent whose environment we inherited).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// The pings of one heartbeat loop, spaced by [`watchdog_period`]: the loop calls
/// [`Watchdog::beat`] each time it has proved itself alive, as often as it likes, and a
/// ping goes out when one is due. Does nothing without a watchdog.
#[derive(Debug)]
pub struct Watchdog {
    period: Option<Duration>,
    last: Option<Instant>,
}

impl Watchdog {
    /// The watchdog systemd configured for this process, if any.
    pub fn from_env() -> Watchdog {
        Watchdog {
            period: watchdog_period(),
            last: None,
        }
    }

    /// Half the unit's `WatchdogSec`, or None without a watchdog.
    pub fn period(&self) -> Option<Duration> {
        self.period
    }

    /// Pings systemd if a period has passed since the last ping (or none was sent yet).
    pub fn beat(&mut self) {
        let Some(period) = self.period else { return };
        if self.last.is_none_or(|last| last.elapsed() >= period) {
            alive();
            self.last = Some(Instant::now());
        }
    }
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
