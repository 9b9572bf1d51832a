//! `arbiter.tts.v1.Tts`: speech streamed a sentence at a time, with visemes.
//!
//! Each sentence is synthesized on a blocking thread and sent as soon as it is ready, so the
//! first audio leaves after the first sentence rather than the whole text. When the client
//! goes away its channel closes and synthesis stops before the next sentence.
//!
//! The parts, each depending only on those listed after it:
//!
//! - this module: [`TtsService`], Synthesize and ListVoices, and the trait impl that hands
//!   the lip-sync calls on;
//! - `lip_sync_handlers`: `LipSync`, `LipSyncStream` and `GetLipSyncStatus` (viseme
//!   timelines for text or audio, mouth frames from the optional [`crate::lip_sync`] model);
//! - `spoken`: the speech a lip-sync request is about, a text a sentence at a time as
//!   Synthesize speaks it, so LipSyncStream's frames follow each sentence;
//! - `voices`: the voices a request may name, and speaking a sentence with one (which
//!   voices there are, and how a TorchScript voice uses eSpeak NG, is told there);
//! - `limits`: [`Limits`] on requests and the stream permits; `wire`: timings in the
//!   wire's types.
//!
//! None of them imports this module, so what both halves of the service need lives in the
//! lower ones, not here.

mod limits;
mod lip_sync_handlers;
mod spoken;
mod voices;
mod wire;

pub use limits::Limits;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbiter::pb::tts::v1 as pb;
use pb::tts_server::Tts;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::card::CardState;
use crate::espeak::{self, Espeak, EspeakError};
use crate::keep_alive::KeepAlive;
use crate::lip_sync::LipSync;
use crate::metrics::TtsMetrics;
use crate::sentences;
use crate::service::limits::Streams;
use crate::service::lip_sync_handlers::{LipSyncChunkStream, LipSyncHandlers};
use crate::service::voices::{Voices, speak};
use crate::service::wire::{ms, visemes_pb};
use crate::viseme;
use crate::voice_residency::VoiceSlot;
use arbiter::wav;

pub struct TtsService {
    voices: Voices,
    limits: Limits,
    streams: Streams,
    /// The lip-sync model, when one is configured.
    lip_sync: Option<Arc<LipSync>>,
    /// What the calls record for `/metrics` (served when `--metrics-listen` is set).
    metrics: Arc<TtsMetrics>,
    /// The GPU the service runs on and its lease there, for ListVoices.
    card: CardState,
}

impl TtsService {
    /// Fails only if eSpeak NG cannot list its voices, which means it cannot speak either.
    pub fn new(espeak: Espeak, limits: Limits) -> Result<TtsService, EspeakError> {
        Ok(TtsService {
            voices: Voices::new(espeak)?,
            streams: Streams::new(limits.max_streams),
            limits,
            lip_sync: None,
            metrics: Arc::new(TtsMetrics::new()),
            card: CardState::default(),
        })
    }

    /// Adds the lip-sync model, loaded by the server before it listens so that a bad model
    /// stops start-up instead of failing requests.
    pub fn with_lip_sync(mut self, lip_sync: Arc<LipSync>) -> TtsService {
        self.lip_sync = Some(lip_sync);
        self
    }

    /// Adds TorchScript voices, read by the server before it listens for the same reason;
    /// each loads on its first request and unloads after `keep_alive` idle (a request's own
    /// keep-alive overrides it).
    pub fn with_torch_voices(
        mut self,
        voices: Vec<Arc<VoiceSlot>>,
        keep_alive: KeepAlive,
    ) -> TtsService {
        self.voices.add_torch(voices, keep_alive);
        self
    }

    /// Where the service runs (its card and lease), which ListVoices reports.
    pub fn with_card(mut self, card: CardState) -> TtsService {
        self.card = card;
        self
    }

    /// The service's metrics, for the server to render at `/metrics`.
    pub fn metrics(&self) -> Arc<TtsMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The lip-sync calls see only what they use of the service, so that they need not
    /// import it.
    fn lip_sync_handlers(&self) -> LipSyncHandlers<'_> {
        LipSyncHandlers {
            voices: &self.voices,
            limits: &self.limits,
            streams: &self.streams,
            lip_sync: self.lip_sync.as_ref(),
            metrics: &self.metrics,
        }
    }
}

fn audio_length(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::SynthesizeChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Tts for TtsService {
    type SynthesizeStream = ChunkStream;

    async fn synthesize(
        &self,
        request: Request<pb::SynthesizeRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let arrived = Instant::now();
        let request = request.into_inner();
        self.limits.check_text(&request.text)?;
        let rate = if request.speaking_rate == 0.0 {
            1.0
        } else {
            request.speaking_rate
        };
        if !(0.5..=2.0).contains(&rate) {
            return Err(Status::invalid_argument(format!(
                "speaking_rate {rate} is outside 0.5 to 2.0 (1.0 is the voice's normal rate)"
            )));
        }
        let rate_wpm = ((espeak::RATE_WPM_DEFAULT as f32) * rate).round() as u32;
        let rate_wpm = rate_wpm.clamp(espeak::RATE_WPM_MIN, espeak::RATE_WPM_MAX);
        let keep = self.voices.keep_alive(request.keep_alive.as_ref())?;
        let named = self.voices.find(&request.voice)?;
        let espeak = self.voices.espeak().clone();
        let sample_rate = named.sample_rate(&espeak);
        if request.sample_rate != 0 && request.sample_rate != sample_rate {
            return Err(Status::invalid_argument(format!(
                "sample_rate {} is not offered: this voice speaks at {sample_rate} Hz; leave it 0",
                request.sample_rate
            )));
        }
        // A format number the enum does not name is refused, not read as PCM.
        let header = match pb::AudioFormat::try_from(request.format) {
            Ok(format) => format == pb::AudioFormat::Wav,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "format {} is not an audio format: use AUDIO_FORMAT_PCM_S16LE (1) or AUDIO_FORMAT_WAV (2), or leave it unset (0) for PCM",
                    request.format
                )));
            }
        };
        let voice = named.acquire(keep).await?;
        let sentences: Vec<String> = sentences::split(&request.text)
            .into_iter()
            .map(str::to_string)
            .collect();
        // Synthesize the first sentence before answering, so a bad voice is an error status
        // rather than a stream that fails.
        let began = Instant::now();
        let first = speak(
            espeak.clone(),
            sentences[0].clone(),
            voice.clone(),
            rate_wpm,
        )
        .await?;
        self.metrics
            .sentence(began.elapsed(), audio_length(first.duration_ms()));
        let metrics = Arc::clone(&self.metrics);
        let permit = self.streams.permit()?;
        let (sender, receiver) = mpsc::channel(2);
        tokio::spawn(async move {
            let _permit = permit;
            let count = sentences.len();
            let mut offset_ms = 0u64;
            let mut next = Some(first);
            for (i, sentence) in sentences.into_iter().enumerate() {
                let speech = match next.take() {
                    Some(speech) => speech,
                    None => {
                        if sender.is_closed() {
                            return; // the client went away: stop before the next sentence
                        }
                        let began = Instant::now();
                        match speak(espeak.clone(), sentence.clone(), voice.clone(), rate_wpm).await
                        {
                            Ok(speech) => {
                                metrics
                                    .sentence(began.elapsed(), audio_length(speech.duration_ms()));
                                speech
                            }
                            Err(status) => {
                                let _ = sender.send(Err(status)).await;
                                return;
                            }
                        }
                    }
                };
                let duration = u64::from(speech.duration_ms());
                let mut audio = Vec::with_capacity(speech.samples.len() * 2 + wav::HEADER_LEN);
                if header && i == 0 {
                    audio.extend_from_slice(&wav::streaming_header(speech.sample_rate));
                }
                audio.extend_from_slice(&wav::pcm_s16le(&speech.samples));
                let chunk = pb::SynthesizeChunk {
                    audio,
                    start: ms(offset_ms),
                    duration: ms(duration),
                    sample_rate: speech.sample_rate,
                    visemes: visemes_pb(&viseme::visemes(&speech.phonemes), offset_ms),
                    text: sentence,
                    last: i + 1 == count,
                };
                offset_ms += duration;
                if sender.send(Ok(chunk)).await.is_err() {
                    return;
                }
                if i == 0 {
                    metrics.first_audio(arrived.elapsed());
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn list_voices(
        &self,
        _: Request<pb::ListVoicesRequest>,
    ) -> Result<Response<pb::ListVoicesReply>, Status> {
        Ok(Response::new(pb::ListVoicesReply {
            voices: self.voices.list(),
            gpu: self.card.to_pb(),
        }))
    }

    async fn lip_sync(
        &self,
        request: Request<pb::LipSyncRequest>,
    ) -> Result<Response<pb::LipSyncReply>, Status> {
        let handlers = self.lip_sync_handlers();
        handlers
            .reply(request.into_inner())
            .await
            .map(Response::new)
    }

    type LipSyncStreamStream = LipSyncChunkStream;

    async fn lip_sync_stream(
        &self,
        request: Request<pb::LipSyncRequest>,
    ) -> Result<Response<LipSyncChunkStream>, Status> {
        let handlers = self.lip_sync_handlers();
        handlers
            .stream(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_lip_sync_status(
        &self,
        _: Request<pb::GetLipSyncStatusRequest>,
    ) -> Result<Response<pb::LipSyncStatus>, Status> {
        Ok(Response::new(self.lip_sync_handlers().status()))
    }
}
