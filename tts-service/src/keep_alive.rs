//! How long a model stays loaded after its last use, Ollama's `keep_alive`: a service
//! default (`--keep-alive`), overridden per request; zero unloads as soon as the request
//! ends, negative keeps the model until a later request says otherwise.
//!
//! [`Clock`] is what a loaded model keeps beside itself: the requests using it now and when
//! the last one ended, so a watcher knows when it has sat idle past its keep-alive. The
//! newest request's keep-alive wins (as in Ollama): a client that asked for `-1` and then
//! `0` gets an unload.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
// tokio's clock, so that tests can run it paused.
use tokio::time::Instant;

/// The default, as Ollama's: five minutes.
pub const DEFAULT: KeepAlive = KeepAlive::For(Duration::from_secs(300));

/// The longest keep-alive a request may give (a day); longer reads as a mistake, and
/// "keep" is spelled with a negative value.
const LONGEST: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload this long after the last request ends (zero: at once).
    For(Duration),
    /// Keep it loaded until a request says otherwise.
    Forever,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeepAliveError {
    #[error(
        "keep_alive {0} s is more than a day: use a negative value to keep the model loaded, or at most 86400 s"
    )]
    TooLong(i64),
    #[error(
        "keep_alive has {0} nanoseconds: they must be within -999999999 to 999999999 and share the seconds' sign"
    )]
    Nanos(i32),
    #[error(
        "keep-alive `{0}` is not a duration: give seconds (300), a number with a unit (30s, 5m, 1h), 0 to unload at once, or -1 to keep"
    )]
    Unparsed(String),
}

impl KeepAlive {
    /// A request's keep-alive: unset means the service's default.
    pub fn from_request(
        asked: Option<&prost_types::Duration>,
        default: KeepAlive,
    ) -> Result<KeepAlive, KeepAliveError> {
        let Some(d) = asked else {
            return Ok(default);
        };
        if d.nanos.abs() > 999_999_999
            || (d.seconds != 0 && d.nanos != 0 && (d.seconds < 0) != (d.nanos < 0))
        {
            return Err(KeepAliveError::Nanos(d.nanos));
        }
        if d.seconds < 0 || d.nanos < 0 {
            return Ok(KeepAlive::Forever);
        }
        let wanted = Duration::new(d.seconds as u64, d.nanos as u32);
        if wanted > LONGEST {
            return Err(KeepAliveError::TooLong(d.seconds));
        }
        Ok(KeepAlive::For(wanted))
    }

    /// The flag's spelling: seconds, or a number with `ms`, `s`, `m` or `h`; negative keeps.
    pub fn parse(text: &str) -> Result<KeepAlive, KeepAliveError> {
        let unparsed = || KeepAliveError::Unparsed(text.to_string());
        let t = text.trim();
        if let Some(rest) = t.strip_prefix('-') {
            return match rest
                .trim_end_matches(|c: char| c.is_ascii_alphabetic())
                .parse::<f64>()
            {
                Ok(n) if n > 0.0 => Ok(KeepAlive::Forever),
                _ => Err(unparsed()),
            };
        }
        let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: f64 = number.trim().parse().map_err(|_| unparsed())?;
        let scale = match unit {
            "" | "s" => 1.0,
            "ms" => 1e-3,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(unparsed()),
        };
        let seconds = n * scale;
        if !seconds.is_finite() || seconds < 0.0 {
            return Err(unparsed());
        }
        let wanted = Duration::from_secs_f64(seconds);
        if wanted > LONGEST {
            return Err(KeepAliveError::TooLong(seconds as i64));
        }
        Ok(KeepAlive::For(wanted))
    }
}

impl std::fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepAlive::For(d) => write!(f, "{:.3} s", d.as_secs_f64()),
            KeepAlive::Forever => f.write_str("until asked"),
        }
    }
}

impl std::str::FromStr for KeepAlive {
    type Err = KeepAliveError;
    fn from_str(s: &str) -> Result<KeepAlive, KeepAliveError> {
        KeepAlive::parse(s)
    }
}

#[derive(Debug)]
struct Uses {
    in_use: u32,
    /// The keep-alive of the newest request.
    keep: KeepAlive,
    /// When the last request ended (or the model loaded, before any ended).
    idle_since: Instant,
}

/// A loaded model's uses, and the wake-up for whoever unloads it when idle.
#[derive(Debug)]
pub struct Clock {
    uses: Mutex<Uses>,
    changed: Notify,
}

/// What [`Clock::state`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockState {
    pub in_use: u32,
    pub keep: KeepAlive,
    /// When it is due to unload, while idle and not kept.
    pub unload_at: Option<Instant>,
}

impl Clock {
    pub fn new(keep: KeepAlive) -> Clock {
        Clock {
            uses: Mutex::new(Uses {
                in_use: 0,
                keep,
                idle_since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Uses> {
        self.uses.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request starts using the model; its keep-alive becomes the model's.
    pub fn begin(&self, keep: KeepAlive) {
        let mut uses = self.lock();
        uses.in_use += 1;
        uses.keep = keep;
        drop(uses);
        self.changed.notify_waiters();
    }

    /// A request stopped using it.
    pub fn end(&self) {
        let mut uses = self.lock();
        uses.in_use = uses.in_use.saturating_sub(1);
        uses.idle_since = Instant::now();
        drop(uses);
        self.changed.notify_waiters();
    }

    pub fn state(&self) -> ClockState {
        let uses = self.lock();
        let unload_at = match uses.keep {
            KeepAlive::For(d) if uses.in_use == 0 => Some(uses.idle_since + d),
            _ => None,
        };
        ClockState {
            in_use: uses.in_use,
            keep: uses.keep,
            unload_at,
        }
    }

    /// Returns once the model has sat idle past its keep-alive (at once if it already has).
    /// Cancel-safe: drop the future to stop watching.
    pub async fn idle_past_keep_alive(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.state().unload_at {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = &mut changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A monotonic deadline as wall-clock time, for the wire.
pub fn wall_clock(at: Instant) -> SystemTime {
    let now = Instant::now();
    match at.checked_duration_since(now) {
        Some(ahead) => SystemTime::now() + ahead,
        None => SystemTime::now() - now.duration_since(at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(seconds: i64, nanos: i32) -> prost_types::Duration {
        prost_types::Duration { seconds, nanos }
    }

    #[test]
    fn a_request_overrides_the_default_as_ollama_reads_it() {
        let default = KeepAlive::For(Duration::from_secs(300));
        assert_eq!(KeepAlive::from_request(None, default), Ok(default));
        assert_eq!(
            KeepAlive::from_request(Some(&pb(0, 0)), default),
            Ok(KeepAlive::For(Duration::ZERO))
        );
        assert_eq!(
            KeepAlive::from_request(Some(&pb(-1, 0)), default),
            Ok(KeepAlive::Forever)
        );
        assert_eq!(
            KeepAlive::from_request(Some(&pb(0, -5)), default),
            Ok(KeepAlive::Forever)
        );
        assert_eq!(
            KeepAlive::from_request(Some(&pb(2, 500_000_000)), default),
            Ok(KeepAlive::For(Duration::from_millis(2500)))
        );
        assert_eq!(
            KeepAlive::from_request(Some(&pb(90_000, 0)), default),
            Err(KeepAliveError::TooLong(90_000))
        );
        assert_eq!(
            KeepAlive::from_request(Some(&pb(1, -1)), default),
            Err(KeepAliveError::Nanos(-1))
        );
    }

    #[test]
    fn the_flag_takes_seconds_units_zero_and_negative() {
        assert_eq!(
            KeepAlive::parse("300"),
            Ok(KeepAlive::For(Duration::from_secs(300)))
        );
        assert_eq!(
            KeepAlive::parse("5m"),
            Ok(KeepAlive::For(Duration::from_secs(300)))
        );
        assert_eq!(
            KeepAlive::parse("1h"),
            Ok(KeepAlive::For(Duration::from_secs(3600)))
        );
        assert_eq!(
            KeepAlive::parse("250ms"),
            Ok(KeepAlive::For(Duration::from_millis(250)))
        );
        assert_eq!(KeepAlive::parse("0"), Ok(KeepAlive::For(Duration::ZERO)));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-5m"), Ok(KeepAlive::Forever));
        for bad in ["", "soon", "5 minutes", "-", "-0", "2d", "nan"] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            KeepAlive::parse("25h"),
            Err(KeepAliveError::TooLong(_))
        ));
    }

    #[test]
    fn idle_time_counts_from_the_last_request_and_the_newest_keep_alive_wins() {
        let clock = Clock::new(KeepAlive::For(Duration::from_secs(60)));
        clock.begin(KeepAlive::Forever);
        clock.begin(KeepAlive::For(Duration::from_secs(10)));
        assert_eq!(clock.state().in_use, 2);
        assert_eq!(clock.state().unload_at, None, "in use: no deadline");
        clock.end();
        assert_eq!(clock.state().unload_at, None, "one still in use");
        let before = Instant::now();
        clock.end();
        let state = clock.state();
        assert_eq!(state.in_use, 0);
        let at = state.unload_at.expect("idle and not kept: a deadline");
        assert!(
            at >= before + Duration::from_secs(10)
                && at <= Instant::now() + Duration::from_secs(10)
        );
        clock.begin(KeepAlive::Forever);
        clock.end();
        assert_eq!(clock.state().unload_at, None, "kept");
    }

    #[tokio::test]
    async fn the_watch_wakes_when_the_keep_alive_passes_and_not_while_in_use() {
        let keep = KeepAlive::For(Duration::from_millis(300));
        let clock = std::sync::Arc::new(Clock::new(keep));
        clock.begin(keep);
        let watch = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.idle_past_keep_alive().await })
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!watch.is_finished(), "woke while in use");
        let ended = tokio::time::Instant::now();
        clock.end();
        tokio::time::timeout(Duration::from_secs(10), watch)
            .await
            .expect("the watch returns")
            .expect("the task");
        assert!(
            ended.elapsed() >= Duration::from_millis(300),
            "woke before the keep-alive passed"
        );
    }
}
