//! What a client may ask of the service, and how many may ask at once. Both Synthesize and
//! the lip-sync handlers enforce these, so they sit below both rather than in either.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::audio::AudioLimits;

/// Limits on what clients may ask, so that one request cannot cost the service more CPU or
/// memory than the operator allowed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_text_chars: usize,
    pub max_streams: usize,
    /// Audio sent to be lip-synced: its encoded size and its length.
    pub max_audio_bytes: usize,
    pub max_audio_seconds: u32,
    /// A face image sent for mouth frames.
    pub max_face_bytes: usize,
}

impl Limits {
    /// The audio limits in the form [`crate::audio`] checks, which knows nothing of faces
    /// or text.
    pub fn audio(&self) -> AudioLimits {
        AudioLimits {
            max_bytes: self.max_audio_bytes,
            max_seconds: self.max_audio_seconds,
        }
    }

    /// The largest request message worth reading: the audio and face limits with room for
    /// the other fields. gRPC refuses larger messages before they reach a handler.
    pub fn max_message_bytes(&self) -> usize {
        self.max_audio_bytes
            .saturating_add(self.max_face_bytes)
            .saturating_add(self.max_text_chars.saturating_mul(4))
            .saturating_add(64 << 10)
    }

    /// Refuses text before any of it is spoken, so a bad request costs nothing.
    pub(super) fn check_text(&self, text: &str) -> Result<(), Status> {
        if text.trim().is_empty() {
            return Err(Status::invalid_argument(
                "text is empty: give the words to speak",
            ));
        }
        let chars = text.chars().count();
        if chars > self.max_text_chars {
            return Err(Status::invalid_argument(format!(
                "text is {chars} characters, over the limit of {}: split it into several requests",
                self.max_text_chars
            )));
        }
        Ok(())
    }
}

/// One permit per stream speaking (or rendering) now. More are refused rather than queued,
/// so a client learns at once that it must retry instead of waiting behind every stream.
pub(super) struct Streams {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Streams {
    pub(super) fn new(max: usize) -> Streams {
        Streams {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A permit for one more stream, or RESOURCE_EXHAUSTED at the limit. Owned, so it can
    /// move into the task that feeds the stream and be given back when the stream ends.
    pub(super) fn permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} streams are running already, the limit: retry shortly",
                self.max
            ))
        })
    }
}
