//! Speech timings in the wire's types. Synthesize's chunks and the lip-sync timeline both
//! carry visemes and durations, and must say the same times the same way.

use std::time::Duration;

use arbiter::pb::tts::v1 as pb;

use crate::viseme::Viseme;

/// Milliseconds in the `Option` the wire's duration fields take; no `u64` of milliseconds
/// overflows a protobuf duration, so the field is always set.
pub(super) fn ms(ms: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_millis(ms)).ok()
}

/// `visemes` shifted by `offset_ms`, because a chunk's visemes are timed from the start of
/// the whole speech, not of its sentence.
pub(super) fn visemes_pb(visemes: &[Viseme], offset_ms: u64) -> Vec<pb::Viseme> {
    visemes
        .iter()
        .map(|v| pb::Viseme {
            id: u32::from(v.id),
            name: v.name.to_string(),
            start: ms(offset_ms + u64::from(v.start_ms)),
            duration: ms(u64::from(v.duration_ms)),
        })
        .collect()
}
