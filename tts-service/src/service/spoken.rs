//! The speech a lip-sync request is about, a part at a time, so that LipSyncStream can send
//! a text's mouth frames a sentence at a time: the first come after the first sentence's
//! audio, not after the whole text's.
//!
//! A text is spoken as Synthesize speaks it (the same [`crate::sentences`], one call a
//! sentence, the voice's normal rate), so its audio is the concatenation of Synthesize's
//! chunks and its visemes are theirs, timed from the start of the text. While the caller
//! renders one sentence the next is already being spoken. Audio input is one part. The
//! unary LipSync takes every part ([`Spoken::timeline`]), so both calls give one timeline.

use arbiter::pb::tts::v1 as pb;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::audio::Audio;
use crate::espeak::{self, Espeak, Speech};
use crate::sentences;
use crate::service::voices::{Voice, speak};
use crate::service::wire::{ms, visemes_pb};
use crate::status;
use crate::viseme::{self, Viseme};

/// One part of the speech: a sentence of a text, or all of an audio input.
pub(super) struct Part {
    /// Its audio alone.
    pub(super) audio: Audio,
    /// Its visemes, timed from the start of the whole speech.
    pub(super) visemes: Vec<pb::Viseme>,
    /// Where it ends in the whole speech, in milliseconds.
    pub(super) end_ms: u64,
    /// No part follows.
    pub(super) last: bool,
}

impl Part {
    /// Its share of the timeline: its visemes, and the length of the speech so far.
    pub(super) fn timeline(&self) -> pb::LipSyncReply {
        pb::LipSyncReply {
            visemes: self.visemes.clone(),
            duration: ms(self.end_ms),
        }
    }
}

/// The parts of one request's speech, in order.
pub(super) struct Spoken {
    /// A part made before the answer: an audio input, or a text's first sentence.
    ready: Option<Part>,
    /// A text's later sentences.
    text: Option<Sentences>,
}

/// A text's sentences after the first, each spoken when the one before it is taken.
struct Sentences {
    espeak: Espeak,
    voice: Voice,
    /// Not asked for yet, in order.
    rest: std::vec::IntoIter<String>,
    /// The next sentence, being spoken.
    next: Option<JoinHandle<Result<Speech, Status>>>,
    /// Where the next sentence starts, in milliseconds.
    offset_ms: u64,
}

impl Spoken {
    /// Audio input, with the visemes of all of it.
    pub(super) fn audio(audio: Audio, visemes: &[Viseme], duration_ms: u32) -> Spoken {
        Spoken {
            ready: Some(Part {
                audio,
                visemes: visemes_pb(visemes, 0),
                end_ms: u64::from(duration_ms),
                last: true,
            }),
            text: None,
        }
    }

    /// `text`, which the caller has checked: speaks its first sentence before returning (so
    /// that its failure is the call's status, before any answer) and starts on the second.
    pub(super) async fn text(espeak: Espeak, voice: Voice, text: &str) -> Result<Spoken, Status> {
        let sentences: Vec<String> = sentences::split(text)
            .into_iter()
            .map(str::to_string)
            .collect();
        let mut text = Sentences {
            espeak,
            voice,
            rest: sentences.into_iter(),
            next: None,
            offset_ms: 0,
        };
        text.next = text.rest.next().map(|sentence| text.start(sentence));
        match text.part().await {
            Some(first) => Ok(Spoken {
                ready: Some(first?),
                text: Some(text),
            }),
            None => Err(Status::invalid_argument(
                "text has no words to speak: give the words to speak",
            )),
        }
    }

    /// The next part, None after the last (or after a failed one).
    pub(super) async fn next(&mut self) -> Option<Result<Part, Status>> {
        if let Some(part) = self.ready.take() {
            return Some(Ok(part));
        }
        self.text.as_mut()?.part().await
    }

    /// The whole timeline: every part's visemes, and the speech's length.
    pub(super) async fn timeline(mut self) -> Result<pb::LipSyncReply, Status> {
        let mut timeline = pb::LipSyncReply::default();
        while let Some(part) = self.next().await {
            let part = part?;
            timeline.visemes.extend(part.visemes);
            timeline.duration = ms(part.end_ms);
        }
        Ok(timeline)
    }
}

impl Sentences {
    /// Starts speaking `sentence`, as Synthesize would at the normal rate.
    fn start(&self, sentence: String) -> JoinHandle<Result<Speech, Status>> {
        tokio::spawn(speak(
            self.espeak.clone(),
            sentence,
            self.voice.clone(),
            espeak::RATE_WPM_DEFAULT,
        ))
    }

    /// Waits for the sentence being spoken, starts the one after it, and times it.
    async fn part(&mut self) -> Option<Result<Part, Status>> {
        let speech = match self.next.take()?.await {
            Ok(Ok(speech)) => speech,
            Ok(Err(status)) => return Some(Err(status)),
            Err(error) => return Some(Err(status::task(error))),
        };
        self.next = self.rest.next().map(|sentence| self.start(sentence));
        let start = self.offset_ms;
        self.offset_ms += u64::from(speech.duration_ms());
        Some(Ok(Part {
            visemes: visemes_pb(&viseme::visemes(&speech.phonemes), start),
            end_ms: self.offset_ms,
            last: self.next.is_none(),
            audio: Audio::from_s16(&speech.samples, speech.sample_rate),
        }))
    }
}

impl Drop for Sentences {
    /// A stream whose client went away does not wait for its next sentence (eSpeak NG
    /// finishes the one it is speaking; nothing is started after it).
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            next.abort();
        }
    }
}
