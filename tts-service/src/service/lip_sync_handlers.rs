//! `LipSync`, `LipSyncStream` and `GetLipSyncStatus`: viseme timelines for text or audio,
//! and mouth frames from the lip-sync model ([`crate::lip_sync`]).
//!
//! Text is spoken on the way (as Synthesize would) and its visemes follow the phonemes;
//! audio (WAV or raw PCM, such as a Synthesize result) gets visemes from its loudness
//! ([`crate::audio_viseme`]). Everything a request carries is checked before the answer
//! starts, so a bad field is an INVALID_ARGUMENT status, not a stream that fails.
//!
//! With a face image, LipSyncStream then renders the audio a second at a time
//! ([`LipSync::render_window`]): first it brings the model back under its lease if a
//! reclaim took it off the GPU (waiting at most the short wait, else rendering on the CPU,
//! which the first message says), then it streams each frame as soon as its window is done.
//!
//! The handlers take [`LipSyncHandlers`], what they read of the service, rather than the
//! service itself, so that this module depends only on the modules below the service.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arbiter::pb::tts::v1 as pb;
use pb::lip_sync_request::Input;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

use crate::audio::{Audio, AudioError, Encoding};
use crate::lip_sync::face::{self, Face};
use crate::lip_sync::frames::{self, FrameFormat};
use crate::lip_sync::model::device_name;
use crate::lip_sync::residency::Phase;
use crate::lip_sync::{LipSync, LipSyncRequestError, Placement};
use crate::metrics::TtsMetrics;
use crate::service::limits::{Limits, Streams};
use crate::service::voices::{Voices, speak};
use crate::service::wire::{ms, visemes_pb};
use crate::viseme::{self, Viseme};
use crate::{audio_viseme, espeak, status};

pub type LipSyncChunkStream = Pin<Box<dyn Stream<Item = Result<pb::LipSyncChunk, Status>> + Send>>;

/// What the lip-sync handlers read of the service, borrowed for one call.
pub(super) struct LipSyncHandlers<'a> {
    pub(super) voices: &'a Voices,
    pub(super) limits: &'a Limits,
    /// Shared with Synthesize: lip-sync streams count against the same limit.
    pub(super) streams: &'a Streams,
    /// The lip-sync model, when one is configured.
    pub(super) lip_sync: Option<&'a Arc<LipSync>>,
    /// Where rendered windows are counted, by device.
    pub(super) metrics: &'a Arc<TtsMetrics>,
}

/// The speech a request is about, and its timeline.
struct Spoken {
    audio: Audio,
    visemes: Vec<Viseme>,
    duration_ms: u32,
}

impl Spoken {
    fn timeline(&self) -> pb::LipSyncReply {
        pb::LipSyncReply {
            visemes: visemes_pb(&self.visemes, 0),
            duration: ms(u64::from(self.duration_ms)),
        }
    }
}

fn frame_format(value: i32) -> Result<FrameFormat, LipSyncRequestError> {
    match pb::FrameFormat::try_from(value) {
        Ok(pb::FrameFormat::Unspecified | pb::FrameFormat::Png) => Ok(FrameFormat::Png),
        Ok(pb::FrameFormat::Rgb24) => Ok(FrameFormat::Rgb24),
        Err(_) => Err(LipSyncRequestError::FrameFormat(value)),
    }
}

fn encoding(value: i32) -> Result<Encoding, AudioError> {
    match pb::AudioFormat::try_from(value) {
        Ok(pb::AudioFormat::Unspecified) => Ok(Encoding::Detect),
        Ok(pb::AudioFormat::PcmS16le) => Ok(Encoding::Pcm),
        Ok(pb::AudioFormat::Wav) => Ok(Encoding::Wav),
        Err(_) => Err(AudioError::UnknownFormat(value)),
    }
}

/// When frame `index` starts, at `fps`.
fn frame_time(index: u64, fps: u32) -> Option<prost_types::Duration> {
    let nanos = index * 1_000_000_000 / u64::from(fps.max(1));
    prost_types::Duration::try_from(Duration::from_nanos(nanos)).ok()
}

impl LipSyncHandlers<'_> {
    /// The speech of a request: text spoken with its voice, or audio decoded.
    async fn spoken(&self, input: Option<Input>, voice: &str) -> Result<Spoken, Status> {
        match input {
            None => Err(LipSyncRequestError::NoInput.into()),
            Some(Input::Text(text)) => {
                self.limits.check_text(&text)?;
                let voice = self.voices.find(voice)?;
                let engine = self.voices.espeak().clone();
                let speech = speak(engine, text, voice, espeak::RATE_WPM_DEFAULT).await?;
                Ok(Spoken {
                    visemes: viseme::visemes(&speech.phonemes),
                    duration_ms: speech.duration_ms(),
                    audio: Audio::from_s16(&speech.samples, speech.sample_rate),
                })
            }
            Some(Input::Audio(input)) => {
                if !voice.trim().is_empty() {
                    return Err(LipSyncRequestError::VoiceWithAudio.into());
                }
                let encoding = encoding(input.format)?;
                let limits = self.limits.audio();
                let spoken = tokio::task::spawn_blocking(move || {
                    let audio = Audio::decode(&input.data, encoding, input.sample_rate, limits)?;
                    let duration_ms = audio.duration_ms();
                    let visemes =
                        audio_viseme::visemes(&audio.samples, audio.sample_rate, duration_ms);
                    Ok::<_, AudioError>(Spoken {
                        audio,
                        visemes,
                        duration_ms,
                    })
                })
                .await
                .map_err(status::task)??;
                Ok(spoken)
            }
        }
    }

    /// LipSync: the timeline only.
    pub(super) async fn reply(
        &self,
        request: pb::LipSyncRequest,
    ) -> Result<pb::LipSyncReply, Status> {
        if !request.face_image.is_empty() {
            return Err(LipSyncRequestError::FaceOnUnary.into());
        }
        // Decoding audio or speaking text is the expensive part: it counts as a stream.
        let _permit = self.streams.permit()?;
        Ok(self.spoken(request.input, &request.voice).await?.timeline())
    }

    /// LipSyncStream: the timeline, then the mouth frames when a face is sent.
    pub(super) async fn stream(
        &self,
        mut request: pb::LipSyncRequest,
    ) -> Result<LipSyncChunkStream, Status> {
        let format = frame_format(request.frame_format)?;
        // Taken before any decoding, so that the limit on streams also bounds the memory and
        // CPU that clients' faces and audio can cost at once.
        let permit = self.streams.permit()?;
        let face = if request.face_image.is_empty() {
            None
        } else {
            let lip_sync = self.lip_sync.cloned().ok_or(LipSyncRequestError::NoModel)?;
            let size = lip_sync.model().face_size();
            let max_bytes = self.limits.max_face_bytes;
            let bytes = std::mem::take(&mut request.face_image);
            let face = tokio::task::spawn_blocking(move || face::decode(&bytes, size, max_bytes))
                .await
                .map_err(status::task)??;
            Some((lip_sync, face))
        };
        let spoken = self.spoken(request.input, &request.voice).await?;
        let (sender, receiver) = mpsc::channel(4);
        let metrics = Arc::clone(self.metrics);
        tokio::spawn(async move {
            let _permit = permit;
            let timeline = spoken.timeline();
            match face {
                None => {
                    let chunk = pb::LipSyncChunk {
                        timeline: Some(timeline),
                        last: true,
                        ..Default::default()
                    };
                    let _ = sender.send(Ok(chunk)).await;
                }
                Some((lip_sync, face)) => {
                    let frames = Frames {
                        lip_sync,
                        face: Arc::new(face),
                        format,
                        sender,
                        metrics,
                    };
                    frames.stream(timeline, spoken.audio).await;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(
            receiver,
        )))
    }

    /// GetLipSyncStatus: where the model is and what its lease has been through, for
    /// operators and benchmark scripts.
    pub(super) fn status(&self) -> pb::LipSyncStatus {
        let Some(lip_sync) = self.lip_sync else {
            return pb::LipSyncStatus {
                residency: pb::LipSyncResidency::None as i32,
                ..Default::default()
            };
        };
        let model = lip_sync.model();
        let (leased_windows, fallback_windows) = lip_sync.windows();
        let mut status = pb::LipSyncStatus {
            model: model.name().to_string(),
            face_size: model.face_size(),
            fps: model.fps(),
            sample_rate: model.sample_rate(),
            residency: pb::LipSyncResidency::CpuOnly as i32,
            device: device_name(model.device()),
            leased_windows,
            fallback_windows,
            ..Default::default()
        };
        if let Some(residency) = lip_sync.residency() {
            let snapshot = residency.snapshot();
            status.residency = match snapshot.phase {
                Some(Phase::Offloaded) | None => pb::LipSyncResidency::Offloaded,
                Some(Phase::Acquiring) => pb::LipSyncResidency::Acquiring,
                Some(Phase::Resident) => pb::LipSyncResidency::Resident,
                Some(Phase::Reclaiming) => pb::LipSyncResidency::Reclaiming,
            } as i32;
            status.lease_id = snapshot.lease_id.unwrap_or_default();
            status.lease_bytes = snapshot.lease_bytes;
            status.reclaims = snapshot.reclaims;
            status.bytes_given_back = snapshot.bytes_given_back;
            status.last_reclaim_answer = snapshot
                .last_reclaim_answer
                .and_then(|d| prost_types::Duration::try_from(d).ok());
            status.leases_granted = snapshot.leases_granted;
            status.lease_timeouts = snapshot.lease_timeouts;
            status.note = snapshot.note;
            status.failures = snapshot.failures;
            status.retry_in = snapshot
                .retry_in
                .and_then(|d| prost_types::Duration::try_from(d).ok());
        }
        status
    }
}

/// One LipSyncStream's frames, on their way to the client.
struct Frames {
    lip_sync: Arc<LipSync>,
    face: Arc<Face>,
    format: FrameFormat,
    sender: mpsc::Sender<Result<pb::LipSyncChunk, Status>>,
    metrics: Arc<TtsMetrics>,
}

impl Frames {
    /// Sends the timeline with how frames are rendered, then every frame in order. Stops
    /// when the client goes away.
    async fn stream(self, timeline: pb::LipSyncReply, audio: Audio) {
        let model = Arc::clone(self.lip_sync.model());
        let placement = self.lip_sync.prepare().await;
        let rate = model.sample_rate();
        let samples = match tokio::task::spawn_blocking(move || audio.resampled(rate)).await {
            Ok(samples) => Arc::new(samples),
            Err(error) => {
                let _ = self.sender.send(Err(status::task(error))).await;
                return;
            }
        };
        let count = model.frame_count(samples.len());
        log_placement(&placement, count);
        let first = pb::LipSyncChunk {
            timeline: Some(timeline),
            render: Some(pb::MouthRender {
                model: model.name().to_string(),
                width: model.face_size(),
                height: model.face_size(),
                fps: model.fps(),
                frame_count: u32::try_from(count).unwrap_or(u32::MAX),
                format: match self.format {
                    FrameFormat::Png => pb::FrameFormat::Png,
                    FrameFormat::Rgb24 => pb::FrameFormat::Rgb24,
                } as i32,
                device: device_name(model.device()),
                leased: placement.leased,
                note: placement.note,
            }),
            frame: None,
            last: count == 0,
        };
        if self.sender.send(Ok(first)).await.is_err() || count == 0 {
            return;
        }
        let window = model.window_samples();
        let mut index = 0u64;
        for start in (0..samples.len()).step_by(window) {
            if self.sender.is_closed() {
                return; // the client went away: stop before the next window
            }
            let end = (start + window).min(samples.len());
            // A tail shorter than half a frame has no frame of its own: do not run the
            // model on it (the last frame was already sent with `last`).
            if model.frame_count(end - start) == 0 {
                break;
            }
            let (lip_sync, face, samples) = (
                Arc::clone(&self.lip_sync),
                Arc::clone(&self.face),
                Arc::clone(&samples),
            );
            let size = model.face_size();
            let format = self.format;
            let rendered = tokio::task::spawn_blocking(move || {
                let rendered = lip_sync.render_window(&face, &samples[start..end])?;
                let images = rendered
                    .frames
                    .into_iter()
                    .map(|rgb| frames::encode(rgb, size, format))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, Status>((images, rendered.device))
            })
            .await
            .map_err(status::task)
            .and_then(|r| r);
            let (images, device) = match rendered {
                Ok(rendered) => rendered,
                Err(status) => {
                    let _ = self.sender.send(Err(status)).await;
                    return;
                }
            };
            self.metrics.render(&device_name(device));
            for image in images {
                let chunk = pb::LipSyncChunk {
                    frame: Some(pb::MouthFrame {
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                        start: frame_time(index, model.fps()),
                        duration: frame_time(1, model.fps()),
                        image,
                        device: device_name(device),
                    }),
                    last: index + 1 == count as u64,
                    ..Default::default()
                };
                if self.sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
                index += 1;
            }
        }
    }
}

fn log_placement(placement: &Placement, frames: usize) {
    if placement.leased {
        tracing::debug!(frames, "rendering mouth frames under the lip-sync lease");
    } else {
        tracing::info!(frames, note = %placement.note, "rendering mouth frames on the CPU without the lip-sync lease");
    }
}
