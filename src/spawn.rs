//! When a worker process was spawned, passed from the spawner to the child.
//!
//! A process cannot see its own exec, dynamic linking (libtorch is hundreds of MiB of
//! shared objects) or runtime start from the inside, yet that is part of what a
//! process-per-job design costs. The supervisor stamps the wall-clock time of each spawn in
//! [`SPAWNED_AT_ENV`]; the worker reads it and reports its start-up from the spawn, not from
//! `main`. Anything may set it (a benchmark script does, for a bare CUDA context start), so
//! both sides of a comparison are measured the same way.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch at the moment of the spawn.
pub const SPAWNED_AT_ENV: &str = "ARBITER_SPAWNED_AT_NS";

/// The value to put in [`SPAWNED_AT_ENV`] for a spawn happening now.
pub fn stamp_now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

/// How long ago this process was spawned, by [`SPAWNED_AT_ENV`]; `None` when it is unset,
/// not a number, or in the future (a stamp from another clock is no measurement).
pub fn since_spawn() -> Option<Duration> {
    since(
        std::env::var(SPAWNED_AT_ENV).ok()?.trim(),
        SystemTime::now(),
    )
}

fn since(stamp: &str, now: SystemTime) -> Option<Duration> {
    let nanos: u64 = stamp.parse().ok()?;
    now.duration_since(UNIX_EPOCH + Duration::from_nanos(nanos))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_reads_back_as_the_time_since_it() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let stamp = (999_750_000_000u64).to_string();
        assert_eq!(since(&stamp, now), Some(Duration::from_millis(250)));
        let fresh = stamp_now();
        let read = since(&fresh, SystemTime::now()).expect("a fresh stamp reads back");
        assert!(read < Duration::from_secs(60));
    }

    #[test]
    fn bad_or_future_stamps_are_no_measurement() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(since("soon", now), None);
        assert_eq!(since("", now), None);
        assert_eq!(since(&(2_000_000_000_000u64).to_string(), now), None);
    }
}
