//! systemd integration: readiness, stopping and watchdog notifications.
//!
//! Every call is a no-op when the process was not started by systemd (no NOTIFY_SOCKET),
//! so the same binary runs under a unit, in a terminal and in tests.

use std::time::Duration;

use sd_notify::NotifyState;

pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Tells the watchdog the main loop is alive. Called from the broker's tick loop, so a
/// wedged broker (a stuck lock) stops the pings and systemd restarts the service.
pub fn alive() {
    notify(&[NotifyState::Watchdog]);
}

/// How often to call [`alive`]: half the unit's WatchdogSec, or None without a watchdog.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}
