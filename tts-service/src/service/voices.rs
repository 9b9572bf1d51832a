//! The voices a request may name, and speaking one sentence with them. Both Synthesize and
//! the lip-sync handlers (for a text input) speak, so this sits below both rather than in
//! either.
//!
//! Voices: eSpeak NG's, on the CPU (no lease needed), and TorchScript voices
//! ([`crate::torchscript`], from `--voice-dir`) on CUDA device 0 when there is one, each
//! loaded on first use and unloaded after its keep-alive ([`crate::voice_residency`]). A
//! TorchScript voice uses eSpeak NG as its text front end (phonemes and timings), makes the
//! audio from those phonemes, and takes its visemes from the eSpeak NG timings stretched to
//! the model audio's length. A TorchScript voice's name wins over an eSpeak NG voice of the
//! same name, so an operator can replace one.

use std::sync::Arc;

use arbiter::pb::tts::v1 as pb;
use tonic::Status;

use crate::espeak::{self, Espeak, EspeakError, Speech, VoiceInfo};
use crate::keep_alive::KeepAlive;
use crate::status;
use crate::torchscript;
use crate::voice_residency::{VoiceSlot, VoiceUse};

/// Every voice the service offers.
pub(super) struct Voices {
    espeak: Espeak,
    /// eSpeak NG's languages and identifiers, read once: the list does not change while the
    /// process runs, and asking per request would queue behind synthesis on eSpeak NG's one
    /// thread.
    known: Vec<VoiceInfo>,
    torch: Vec<Arc<VoiceSlot>>,
    /// What a request that gives no keep-alive gets (`--keep-alive`).
    keep_alive: KeepAlive,
}

/// A voice a request named, before it is loaded: enough to check the request against.
#[derive(Clone, Debug)]
pub(super) enum Named {
    Espeak(String),
    Torch(Arc<VoiceSlot>),
}

impl Named {
    pub(super) fn sample_rate(&self, espeak: &Espeak) -> u32 {
        match self {
            Named::Espeak(_) => espeak.sample_rate(),
            Named::Torch(slot) => slot.spec().sample_rate(),
        }
    }

    /// The voice itself: a TorchScript voice is loaded if it is not (the request waits for
    /// a load already under way rather than starting another).
    pub(super) async fn acquire(self, keep: KeepAlive) -> Result<Voice, Status> {
        match self {
            Named::Espeak(name) => Ok(Voice::Espeak(name)),
            Named::Torch(slot) => Ok(Voice::Torch(Arc::new(
                slot.acquire(keep).await.map_err(Status::from)?,
            ))),
        }
    }
}

/// A voice a request speaks with, resolved once per request so that every sentence of it
/// speaks with the same one (and a TorchScript voice stays loaded until the last).
#[derive(Clone, Debug)]
pub(super) enum Voice {
    /// eSpeak NG, by the language or identifier to pass it.
    Espeak(String),
    /// A TorchScript voice, with eSpeak NG as its text front end.
    Torch(Arc<VoiceUse>),
}

impl Voices {
    pub(super) fn new(espeak: Espeak) -> Result<Voices, EspeakError> {
        let known = espeak.list_voices()?;
        Ok(Voices {
            espeak,
            known,
            torch: Vec::new(),
            keep_alive: crate::keep_alive::DEFAULT,
        })
    }

    /// TorchScript voices, whose configs the server read before it listens (so a bad one
    /// stops start-up); each loads on its first request.
    pub(super) fn add_torch(&mut self, voices: Vec<Arc<VoiceSlot>>, keep_alive: KeepAlive) {
        self.torch.extend(voices);
        self.keep_alive = keep_alive;
    }

    /// A request's keep-alive, or the service's default when it gives none.
    pub(super) fn keep_alive(
        &self,
        asked: Option<&prost_types::Duration>,
    ) -> Result<KeepAlive, Status> {
        KeepAlive::from_request(asked, self.keep_alive)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }

    pub(super) fn espeak(&self) -> &Espeak {
        &self.espeak
    }

    /// The voice to use: the default for an empty name; an unknown name is refused with
    /// a pointer to ListVoices (eSpeak NG itself would quietly fall back to another voice).
    pub(super) fn find(&self, name: &str) -> Result<Named, Status> {
        let name = name.trim();
        if name.is_empty() {
            return Ok(Named::Espeak(espeak::DEFAULT_VOICE.to_string()));
        }
        if let Some(voice) = self.torch.iter().find(|v| v.name() == name) {
            return Ok(Named::Torch(Arc::clone(voice)));
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
            Ok(Named::Espeak(name.to_string()))
        } else {
            Err(Status::invalid_argument(format!(
                "unknown voice `{}`: call ListVoices for the names this service offers (such as {})",
                arbiter::echo::echo(name),
                espeak::DEFAULT_VOICE
            )))
        }
    }

    /// ListVoices' answer. TorchScript voices come first: where a name is listed twice, it is
    /// the TorchScript voice that [`Voices::find`] picks.
    pub(super) fn list(&self) -> Vec<pb::Voice> {
        let sample_rate = self.espeak.sample_rate();
        let torch = self.torch.iter().map(|v| pb::Voice {
            name: v.name().to_string(),
            language: v.spec().espeak_voice().to_string(),
            sample_rate: v.spec().sample_rate(),
            backend: "torchscript".into(),
            on_gpu: v.on_gpu(),
            residency: Some(v.residency()),
        });
        torch
            .chain(self.known.iter().map(|v| pb::Voice {
                name: v.language.clone(),
                language: v.language.clone(),
                sample_rate,
                backend: "espeak-ng".into(),
                on_gpu: false,
                residency: None,
            }))
            .collect()
    }
}

/// Speaks one sentence on a blocking thread, since both eSpeak NG and a TorchScript model
/// block for as long as the sentence takes. A TorchScript voice gets its phonemes from
/// eSpeak NG (at `rate_wpm`, also applied to the model as a length scale), and the phoneme
/// timings are stretched to the model audio, so the visemes follow it.
pub(super) async fn speak(
    espeak: Espeak,
    text: String,
    voice: Voice,
    rate_wpm: u32,
) -> Result<Speech, Status> {
    tokio::task::spawn_blocking(move || match voice {
        Voice::Espeak(voice) => espeak
            .synthesize(&text, &voice, rate_wpm)
            .map_err(Status::from),
        Voice::Torch(voice) => {
            let front = espeak
                .synthesize(&text, voice.espeak_voice(), rate_wpm)
                .map_err(Status::from)?;
            let length_scale = voice.config().inference.length_scale
                * espeak::RATE_WPM_DEFAULT as f32
                / rate_wpm as f32;
            let samples = voice
                .measured(|v| v.speak_scaled(&front.phonemes, length_scale))
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
