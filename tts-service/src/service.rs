//! `arbiter.tts.v1.Tts`: speech streamed a sentence at a time, with visemes.
//!
//! Each sentence is synthesized on a blocking thread and sent as soon as it is ready, so the
//! first audio leaves after the first sentence rather than the whole text. When the client
//! goes away its channel closes and synthesis stops before the next sentence.
//!
//! Voices: eSpeak NG's, on the CPU (no lease needed), and TorchScript voices
//! ([`crate::torchscript`], from `--voice-dir`) on CUDA device 0 when there is one, listed with
//! backend `torchscript` and `on_gpu`. A TorchScript voice uses eSpeak NG as its text front
//! end (phonemes and timings), makes the audio from those phonemes, and takes its visemes from
//! the eSpeak NG timings stretched to the model audio's length. A TorchScript voice's name
//! wins over an eSpeak NG voice of the same name.
//!
//! Lip-sync (`LipSync`, `LipSyncStream`, `GetLipSyncStatus`) lives in [`lip_sync`]: viseme
//! timelines for text or audio, and mouth frames from the optional lip-sync model.

mod lip_sync;

pub(crate) use lip_sync::LipSyncError;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arbiter::pb::tts::v1 as pb;
use pb::tts_server::Tts;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::audio::AudioLimits;
use crate::espeak::{self, Espeak, Speech};
use crate::lipsync::LipSync;
use crate::torchscript::{self, TorchVoice};
use crate::viseme::{self, Viseme};
use crate::{sentences, status, wav};

/// Limits on what clients may ask.
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
}

pub struct TtsService {
    espeak: Espeak,
    /// What voice names are accepted: eSpeak NG's languages and identifiers, read once.
    known: Vec<espeak::VoiceInfo>,
    /// TorchScript voices, by name.
    torch: Vec<Arc<TorchVoice>>,
    limits: Limits,
    /// One permit per stream speaking now; more are refused rather than queued.
    streams: Arc<Semaphore>,
    /// The lip-sync model, when one is configured.
    lipsync: Option<Arc<LipSync>>,
}

impl TtsService {
    pub fn new(espeak: Espeak, limits: Limits) -> Result<TtsService, espeak::Error> {
        let known = espeak.list_voices()?;
        Ok(TtsService {
            known,
            torch: Vec::new(),
            streams: Arc::new(Semaphore::new(limits.max_streams)),
            espeak,
            limits,
            lipsync: None,
        })
    }

    /// Adds the lip-sync model (already loaded).
    pub fn with_lipsync(mut self, lipsync: Arc<LipSync>) -> TtsService {
        self.lipsync = Some(lipsync);
        self
    }

    /// A permit for one more stream, or RESOURCE_EXHAUSTED at the limit.
    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} streams are running already, the limit: retry shortly",
                self.limits.max_streams
            ))
        })
    }

    /// Adds TorchScript voices (already loaded).
    pub fn with_torch_voices(mut self, voices: Vec<Arc<TorchVoice>>) -> TtsService {
        self.torch.extend(voices);
        self
    }

    fn check_text(&self, text: &str) -> Result<(), Status> {
        if text.trim().is_empty() {
            return Err(Status::invalid_argument(
                "text is empty: give the words to speak",
            ));
        }
        let chars = text.chars().count();
        if chars > self.limits.max_text_chars {
            return Err(Status::invalid_argument(format!(
                "text is {chars} characters, over the limit of {}: split it into several requests",
                self.limits.max_text_chars
            )));
        }
        Ok(())
    }

    /// The voice to use: the default for an empty name; an unknown name is refused with
    /// a pointer to ListVoices (eSpeak NG itself would quietly fall back to another voice).
    fn voice(&self, name: &str) -> Result<Voice, Status> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(Voice::Espeak(espeak::DEFAULT_VOICE.to_string()));
        }
        if let Some(voice) = self.torch.iter().find(|v| v.name() == name) {
            return Ok(Voice::Torch(Arc::clone(voice)));
        }
        let lower = name.to_ascii_lowercase();
        // A language ("en-us"), its family ("en"), or a voice file ("gmw/en-US").
        let known = self.known.iter().any(|v| {
            let language = v.language.to_ascii_lowercase();
            language == lower
                || language.starts_with(&format!("{lower}-"))
                || v.identifier.eq_ignore_ascii_case(name)
        });
        if known {
            Ok(Voice::Espeak(name.to_string()))
        } else {
            Err(Status::invalid_argument(format!(
                "unknown voice `{name}`: call ListVoices for the names this service offers (such as {})",
                espeak::DEFAULT_VOICE
            )))
        }
    }
}

/// A voice a request speaks with.
#[derive(Clone, Debug)]
enum Voice {
    /// eSpeak NG, by the language or identifier to pass it.
    Espeak(String),
    /// A TorchScript voice, with eSpeak NG as its text front end.
    Torch(Arc<TorchVoice>),
}

impl Voice {
    fn sample_rate(&self, espeak: &Espeak) -> u32 {
        match self {
            Voice::Espeak(_) => espeak.sample_rate(),
            Voice::Torch(voice) => voice.sample_rate(),
        }
    }
}

fn ms(ms: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_millis(ms)).ok()
}

fn visemes_pb(visemes: &[Viseme], offset_ms: u64) -> Vec<pb::Viseme> {
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

/// Speaks one sentence on a blocking thread. A TorchScript voice gets its phonemes from
/// eSpeak NG (at `rate_wpm`, also applied to the model as a length scale), and the phoneme
/// timings are stretched to the model audio, so the visemes follow it.
async fn speak(
    espeak: Espeak,
    text: String,
    voice: Voice,
    rate_wpm: u32,
) -> Result<Speech, Status> {
    tokio::task::spawn_blocking(move || match voice {
        Voice::Espeak(voice) => espeak
            .synthesize(&text, &voice, rate_wpm)
            .map_err(status::synthesis),
        Voice::Torch(voice) => {
            let front = espeak
                .synthesize(&text, voice.espeak_voice(), rate_wpm)
                .map_err(status::synthesis)?;
            let length_scale = voice.config().inference.length_scale
                * espeak::RATE_WPM_DEFAULT as f32
                / rate_wpm as f32;
            let samples = voice
                .speak_scaled(&front.phonemes, length_scale)
                .map_err(Status::from)?;
            let mut speech = Speech {
                sample_rate: voice.sample_rate(),
                samples,
                phonemes: Vec::new(),
                sentences: Vec::new(),
            };
            let total = speech.duration_ms();
            speech.phonemes = torchscript::stretch(&front.phonemes, total);
            speech.sentences = vec![(0, total)];
            Ok(speech)
        }
    })
    .await
    .map_err(status::task)?
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::SynthesizeChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Tts for TtsService {
    type SynthesizeStream = ChunkStream;

    async fn synthesize(
        &self,
        request: Request<pb::SynthesizeRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        self.check_text(&request.text)?;
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
        let voice = self.voice(&request.voice)?;
        let sample_rate = voice.sample_rate(&self.espeak);
        if request.sample_rate != 0 && request.sample_rate != sample_rate {
            return Err(Status::invalid_argument(format!(
                "sample_rate {} is not offered: this voice speaks at {sample_rate} Hz; leave it 0",
                request.sample_rate
            )));
        }
        let header = request.format() == pb::AudioFormat::Wav;
        let sentences: Vec<String> = sentences::split(&request.text)
            .into_iter()
            .map(str::to_string)
            .collect();
        // Synthesize the first sentence before answering, so a bad voice is an error status
        // rather than a stream that fails.
        let first = speak(
            self.espeak.clone(),
            sentences[0].clone(),
            voice.clone(),
            rate_wpm,
        )
        .await?;
        let permit = self.stream_permit()?;
        let (sender, receiver) = mpsc::channel(2);
        let espeak = self.espeak.clone();
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
                        match speak(espeak.clone(), sentence.clone(), voice.clone(), rate_wpm).await
                        {
                            Ok(speech) => speech,
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
        let sample_rate = self.espeak.sample_rate();
        let torch = self.torch.iter().map(|v| pb::Voice {
            name: v.name().to_string(),
            language: v.espeak_voice().to_string(),
            sample_rate: v.sample_rate(),
            backend: "torchscript".into(),
            on_gpu: v.on_gpu(),
        });
        let voices = torch
            .chain(self.known.iter().map(|v| pb::Voice {
                name: v.language.clone(),
                language: v.language.clone(),
                sample_rate,
                backend: "espeak-ng".into(),
                on_gpu: false,
            }))
            .collect();
        Ok(Response::new(pb::ListVoicesReply { voices }))
    }

    async fn lip_sync(
        &self,
        request: Request<pb::LipSyncRequest>,
    ) -> Result<Response<pb::LipSyncReply>, Status> {
        self.lip_sync_reply(request.into_inner())
            .await
            .map(Response::new)
    }

    type LipSyncStreamStream = lip_sync::LipSyncChunkStream;

    async fn lip_sync_stream(
        &self,
        request: Request<pb::LipSyncRequest>,
    ) -> Result<Response<lip_sync::LipSyncChunkStream>, Status> {
        self.lip_sync_chunks(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_lip_sync_status(
        &self,
        _: Request<pb::GetLipSyncStatusRequest>,
    ) -> Result<Response<pb::LipSyncStatus>, Status> {
        Ok(Response::new(self.lip_sync_status()))
    }
}
