//! Wire messages to domain values and back: the one place prost types meet the rest of
//! the supervisor. [`lease`] for the lease broker's messages, [`job`] for video jobs and the
//! workers' assignments; what both need (times, durations, priority classes) is here.

pub mod job;
pub mod lease;

use std::time::{Duration, SystemTime};

use arbiter::pb::supervisor::v1 as pb;

use crate::lease::Priority;

pub use lease::*;

/// Unknown and unspecified classes are NORMAL: a newer client's class is not an error.
pub fn priority(value: i32) -> Priority {
    match pb::Priority::try_from(value).unwrap_or(pb::Priority::Normal) {
        pb::Priority::Batch => Priority::Batch,
        pb::Priority::Interactive => Priority::Interactive,
        pb::Priority::Critical => Priority::Critical,
        pb::Priority::Normal | pb::Priority::Unspecified => Priority::Normal,
    }
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
