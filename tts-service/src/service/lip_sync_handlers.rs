//! `LipSync`, `LipSyncStream` and `GetLipSyncStatus`: viseme timelines for text or audio,
//! and mouth frames from the lip-sync model ([`crate::lip_sync`]).
//!
//! Text is spoken on the way, a sentence at a time as Synthesize speaks it, and its visemes
//! follow the phonemes; audio (WAV or raw PCM, such as a Synthesize result) gets visemes
//! from its loudness ([`crate::audio_viseme`]). Everything a request carries is checked, and
//! a text's first sentence spoken, before the answer starts, so a bad field is an
//! INVALID_ARGUMENT status, not a stream that fails.
//!
//! LipSyncStream sends a text a sentence at a time ([`Spoken`]): each sentence's share of
//! the timeline, then (with a face) the mouth frames its audio completes, while the next
//! sentence is spoken. The frames are those of the whole audio: [`Windows`] cuts the audio
//! so far into the model's windows, carrying a sentence's last partial frame over to the
//! next (see there for how far a window split at a sentence's end can differ). Before the first
//! frame the stream brings the model back under its lease if a reclaim took it off the GPU
//! (waiting at most the short wait, else rendering on the CPU, which the first message
//! says); then it renders a window at a time ([`LipSync::render_window`]) and sends each
//! frame as soon as its window is done.
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
use crate::keep_alive::KeepAlive;
use crate::lip_sync::face::{self, Face};
use crate::lip_sync::frames::{self, FrameFormat};
use crate::lip_sync::model::device_name;
use crate::lip_sync::residency::Phase;
use crate::lip_sync::windows::{Window, Windows};
use crate::lip_sync::{LipSync, LipSyncRequestError, Placement};
use crate::metrics::TtsMetrics;
use crate::service::limits::{Limits, Streams};
use crate::service::spoken::{Part, Spoken};
use crate::service::voices::Voices;
use crate::{audio_viseme, status};

pub type LipSyncChunkStream = Pin<Box<dyn Stream<Item = Result<pb::LipSyncChunk, Status>> + Send>>;

type Sender = mpsc::Sender<Result<pb::LipSyncChunk, Status>>;

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
    /// The speech of a request: text, checked and then spoken a sentence at a time with its
    /// voice (the first before this returns), or audio decoded.
    async fn spoken(
        &self,
        input: Option<Input>,
        voice: &str,
        keep: KeepAlive,
    ) -> Result<Spoken, Status> {
        match input {
            None => Err(LipSyncRequestError::NoInput.into()),
            Some(Input::Text(text)) => {
                self.limits.check_text(&text)?;
                let voice = self.voices.find(voice)?.acquire(keep).await?;
                Spoken::text(self.voices.espeak().clone(), voice, &text).await
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
                    Ok::<_, AudioError>(Spoken::audio(audio, &visemes, duration_ms))
                })
                .await
                .map_err(status::task)??;
                Ok(spoken)
            }
        }
    }

    /// LipSync: the timeline only, all of it at once (a text's sentences concatenated, as
    /// LipSyncStream sends them).
    pub(super) async fn reply(
        &self,
        request: pb::LipSyncRequest,
    ) -> Result<pb::LipSyncReply, Status> {
        if !request.face_image.is_empty() {
            return Err(LipSyncRequestError::FaceOnUnary.into());
        }
        let keep = self.voices.keep_alive(request.keep_alive.as_ref())?;
        // Decoding audio or speaking text is the expensive part: it counts as a stream.
        let _permit = self.streams.permit()?;
        self.spoken(request.input, &request.voice, keep)
            .await?
            .timeline()
            .await
    }

    /// LipSyncStream: the timeline, a sentence at a time for text, each followed by the
    /// mouth frames of its audio when a face is sent.
    pub(super) async fn stream(
        &self,
        mut request: pb::LipSyncRequest,
    ) -> Result<LipSyncChunkStream, Status> {
        let format = frame_format(request.frame_format)?;
        let keep = self.voices.keep_alive(request.keep_alive.as_ref())?;
        // The lip-sync model's own default applies unless the request gives one.
        let model_keep = request.keep_alive.is_some().then_some(keep);
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
        let spoken = self.spoken(request.input, &request.voice, keep).await?;
        let (sender, receiver) = mpsc::channel(4);
        let metrics = Arc::clone(self.metrics);
        tokio::spawn(async move {
            let _permit = permit;
            match face {
                None => timelines(spoken, sender).await,
                Some((lip_sync, face)) => {
                    let frames = Frames {
                        lip_sync,
                        keep: model_keep,
                        face: Arc::new(face),
                        format,
                        sender,
                        metrics,
                    };
                    frames.stream(spoken).await;
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
                Some(Phase::Unloaded) => pb::LipSyncResidency::Unloaded,
            } as i32;
            let resident = snapshot.phase == Some(Phase::Resident);
            status.model_residency = Some(pb::ModelResidency {
                loaded: resident,
                device: if resident {
                    device_name(model.device())
                } else {
                    String::new()
                },
                lease_id: snapshot.lease_id.clone().unwrap_or_default(),
                lease_bytes: snapshot.lease_bytes,
                unload_at: snapshot
                    .unload_at
                    .map(|at| crate::keep_alive::wall_clock(at).into()),
                keep_forever: snapshot.keep_forever,
                in_use: snapshot.in_use,
                measured_bytes: snapshot.measured_bytes.unwrap_or(0),
                loads: snapshot.leases_granted,
                unloads: snapshot.idle_unloads + snapshot.reclaims,
                last_load: snapshot
                    .last_load
                    .and_then(|d| prost_types::Duration::try_from(d).ok()),
                note: snapshot.note.clone(),
            });
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

/// The next part of `spoken`, unless the client went away (then nothing more is spoken).
async fn next_part(spoken: &mut Spoken, sender: &Sender) -> Option<Result<Part, Status>> {
    if sender.is_closed() {
        return None;
    }
    spoken.next().await
}

/// A LipSyncStream without a face: each part's timeline, one message a part.
async fn timelines(mut spoken: Spoken, sender: Sender) {
    while let Some(part) = next_part(&mut spoken, &sender).await {
        let chunk = part.map(|part| pb::LipSyncChunk {
            timeline: Some(part.timeline()),
            last: part.last,
            ..Default::default()
        });
        let failed = chunk.is_err();
        if sender.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// One LipSyncStream's frames, on their way to the client.
struct Frames {
    lip_sync: Arc<LipSync>,
    /// The request's keep-alive for the model; None: the model's default.
    keep: Option<KeepAlive>,
    face: Arc<Face>,
    format: FrameFormat,
    sender: Sender,
    metrics: Arc<TtsMetrics>,
}

/// Why a stream stops early: the client went away, or it was sent an error.
struct Stopped;

impl Frames {
    /// For each part: its timeline with how frames are rendered (`render`, its frame count
    /// grown to the audio so far), then every frame its audio completes, in order. Stops
    /// when the client goes away or a part fails.
    async fn stream(self, mut spoken: Spoken) {
        let model = Arc::clone(self.lip_sync.model());
        // Held to the end of the stream: the model's keep-alive counts from then.
        let (placement, _use) = self.lip_sync.prepare(self.keep).await;
        let mut render = pb::MouthRender {
            model: model.name().to_string(),
            width: model.face_size(),
            height: model.face_size(),
            fps: model.fps(),
            frame_count: 0,
            format: match self.format {
                FrameFormat::Png => pb::FrameFormat::Png,
                FrameFormat::Rgb24 => pb::FrameFormat::Rgb24,
            } as i32,
            device: device_name(model.device()),
            leased: placement.leased,
            note: placement.note.clone(),
        };
        let mut windows: Option<Windows> = None;
        let mut sent = 0u64;
        while let Some(part) = next_part(&mut spoken, &self.sender).await {
            let part = match part {
                Ok(part) => part,
                Err(status) => return self.fail(status).await,
            };
            let first = windows.is_none();
            let feed = windows.take().unwrap_or_else(|| {
                let rate = part.audio.sample_rate;
                Windows::new(
                    rate,
                    model.fps(),
                    model.sample_rate(),
                    model.window_samples(),
                )
            });
            let (timeline, last) = (part.timeline(), part.last);
            let (feed, ready) = match self.cut(feed, part.audio, last).await {
                Ok(cut) => cut,
                Err(Stopped) => return,
            };
            let count = feed.frame_count() as u64;
            windows = Some(feed);
            if first {
                log_placement(&placement, count);
            }
            render.frame_count = u32::try_from(count).unwrap_or(u32::MAX);
            let chunk = pb::LipSyncChunk {
                timeline: Some(timeline),
                render: Some(render.clone()),
                frame: None,
                last: last && sent == count,
            };
            if self.sender.send(Ok(chunk)).await.is_err() {
                return;
            }
            for window in ready {
                match self.window(window, last.then_some(count)).await {
                    Ok(next) => sent = next,
                    Err(Stopped) => return,
                }
            }
        }
    }

    /// Adds a part's audio to the stream's and takes the windows it completes (all that are
    /// left after the `last` part), on a blocking thread: resampling a long input takes a
    /// while.
    async fn cut(
        &self,
        mut windows: Windows,
        audio: Audio,
        last: bool,
    ) -> Result<(Windows, Vec<Window>), Stopped> {
        if audio.sample_rate != windows.from_rate() {
            let status = Status::internal(format!(
                "a sentence came at {} Hz after one at {} Hz: one voice speaks at one rate",
                audio.sample_rate,
                windows.from_rate()
            ));
            self.fail(status).await;
            return Err(Stopped);
        }
        let cut = tokio::task::spawn_blocking(move || {
            windows.extend(&audio.samples, last);
            let ready = windows.take();
            (windows, ready)
        })
        .await;
        match cut {
            Ok(cut) => Ok(cut),
            Err(error) => {
                self.fail(status::task(error)).await;
                Err(Stopped)
            }
        }
    }

    /// Renders one window and sends its frames; `count`, once known, is the frame count of
    /// the whole, so the last frame says it is. Returns the index after its last frame.
    async fn window(&self, window: Window, count: Option<u64>) -> Result<u64, Stopped> {
        if self.sender.is_closed() {
            return Err(Stopped); // the client went away: stop before the next window
        }
        let model = Arc::clone(self.lip_sync.model());
        let (lip_sync, face) = (Arc::clone(&self.lip_sync), Arc::clone(&self.face));
        let (size, format) = (model.face_size(), self.format);
        let first = window.first;
        let rendered = tokio::task::spawn_blocking(move || {
            let rendered = lip_sync.render_window(&face, &window.samples)?;
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
                self.fail(status).await;
                return Err(Stopped);
            }
        };
        self.metrics.render(&device_name(device));
        let mut index = first;
        for image in images {
            let chunk = pb::LipSyncChunk {
                frame: Some(pb::MouthFrame {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    start: frame_time(index, model.fps()),
                    duration: frame_time(1, model.fps()),
                    image,
                    device: device_name(device),
                }),
                last: count == Some(index + 1),
                ..Default::default()
            };
            if self.sender.send(Ok(chunk)).await.is_err() {
                return Err(Stopped);
            }
            index += 1;
        }
        Ok(index)
    }

    /// Ends the stream with `status`.
    async fn fail(&self, status: Status) {
        let _ = self.sender.send(Err(status)).await;
    }
}

fn log_placement(placement: &Placement, frames: u64) {
    if placement.leased {
        tracing::debug!(frames, "rendering mouth frames under the lip-sync lease");
    } else {
        tracing::info!(frames, note = %placement.note, "rendering mouth frames on the CPU without the lip-sync lease");
    }
}
