//! Wire messages to domain values and back: the one place prost types meet the rest of
//! the supervisor. [`lease`] for the lease broker's messages, [`job`] for video jobs and the
//! workers' assignments; what both need (times, durations, priority classes) is here.

pub mod job;
pub mod lease;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use arbiter::pb::supervisor::v1 as pb;

use crate::lease::Priority;

pub use lease::*;

/// A priority class from the wire; UNSPECIFIED (the field left out) is NORMAL. A number
/// the enum does not name is refused rather than guessed at: granting `99` as NORMAL would
/// hide a client bug, and a future class must be taught to this supervisor before it means
/// anything. The error is the rule the field broke, for the caller's error to name.
pub fn priority(value: i32) -> Result<Priority, String> {
    Ok(match pb::Priority::try_from(value) {
        Ok(pb::Priority::Batch) => Priority::Batch,
        Ok(pb::Priority::Interactive) => Priority::Interactive,
        Ok(pb::Priority::Critical) => Priority::Critical,
        Ok(pb::Priority::Normal | pb::Priority::Unspecified) => Priority::Normal,
        Err(_) => {
            return Err(format!(
                "is {value}, which is not a priority: use PRIORITY_BATCH (1), PRIORITY_NORMAL (2), PRIORITY_INTERACTIVE (3) or PRIORITY_CRITICAL (4), or leave it unset (0) for NORMAL"
            ));
        }
    })
}

/// A Duration from the wire, held to protobuf's own rules instead of normalized into
/// something the caller did not write: `nanos` within 0..=999,999,999 and not negative
/// (no Arbiter duration may be negative). None when the field was left out; the error is
/// the rule broken, for the caller's error to name.
pub fn duration(value: Option<prost_types::Duration>) -> Result<Option<Duration>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    let (seconds, nanos) = (value.seconds, value.nanos);
    if seconds < 0 || nanos < 0 {
        return Err(format!(
            "is negative ({seconds}s {nanos}ns): give a positive duration such as \"30s\""
        ));
    }
    if nanos > 999_999_999 {
        return Err(format!(
            "has nanos = {nanos}, outside 0..=999999999: carry whole seconds in `seconds`"
        ));
    }
    Ok(Some(Duration::new(seconds as u64, nanos as u32)))
}

pub fn priority_to_pb(value: Priority) -> pb::Priority {
    match value {
        Priority::Batch => pb::Priority::Batch,
        Priority::Normal => pb::Priority::Normal,
        Priority::Interactive => pb::Priority::Interactive,
        Priority::Critical => pb::Priority::Critical,
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(at)
}

fn pb_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap_or_default()
}

/// The weight pool's status on the wire.
pub fn weight_pool(socket: &std::path::Path, status: crate::pool::Status) -> pb::WeightPool {
    pb::WeightPool {
        socket: socket.display().to_string(),
        budget_bytes: status.budget,
        bytes: status.bytes,
        files: status.files,
        hits: status.hits,
        fills: status.fills,
        evictions: status.evictions,
        refusals: status.refusals,
        huge_page_files: status.huge_files,
        locked_files: status.locked_files,
        fill_bytes: status.fill_bytes,
        fill_seconds: status.fill_seconds,
    }
}
