//! TorchScript voices, VITS/Piper style: phoneme ids in, waveform out.
//!
//! A voice is a directory with two files:
//!
//! - `voice.ts.pt`: a TorchScript module whose `forward(phoneme_ids: Long[1, T],
//!   lengths: Long[1], scales: Float[3])` returns audio `Float[1, 1, N]` in -1..1, where
//!   `scales` is `[noise_scale, length_scale, noise_w]` (Piper's export signature).
//! - `voice.json`: a Piper-style config ([`Config`]): the sample rate, the eSpeak NG voice of
//!   the text front end, the inference scales and the phoneme id map.
//!
//! The map is keyed by eSpeak NG's ASCII phoneme mnemonics, as [`crate::espeak`] reports
//! them. Real Piper voices key theirs by IPA and would need eSpeak NG's IPA output (not done
//! yet). Ids follow Piper's conventions: when the map has `^` and `$`, an utterance is sent
//! as `^ _ p1 _ p2 _ ... pN _ $` (`_` the pad between phonemes); a symbol the map lacks is
//! sent as `<unk>` if the map has it, else as the pad `_` (silence rather than an error, as
//! eSpeak NG may report symbols of other languages).
//!
//! `scripts/make-test-voice.py` writes a small voice of this shape with random weights (its
//! audio is noise of the right length); no real weights are shipped.
//!
//! A `tch` module is run under a mutex, one utterance at a time, under `tch::no_grad`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use tch::{CModule, Device, IValue, Kind, Tensor};

use crate::espeak::Phoneme;

/// The model file in a voice directory.
pub const MODEL_FILE: &str = "voice.ts.pt";
/// The config file in a voice directory.
pub const CONFIG_FILE: &str = "voice.json";

/// What can go wrong loading or running a TorchScript voice: the operator's or the model's
/// to fix, never the client's, so it stops start-up in [`crate::server`] and is INTERNAL on
/// the wire.
#[derive(Debug, thiserror::Error)]
pub enum TorchVoiceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid voice config: {source}")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {rule}")]
    Invalid { path: PathBuf, rule: String },
    #[error("cannot load the TorchScript model {path}: {source}")]
    Load {
        path: PathBuf,
        source: tch::TchError,
    },
    #[error("the voice `{voice}` failed to run: {source}")]
    Run {
        voice: String,
        source: tch::TchError,
    },
    #[error("the voice `{voice}` returned {what}")]
    Output { voice: String, what: String },
}

pub type Result<T, E = TorchVoiceError> = std::result::Result<T, E>;

/// `voice.json`, Piper's layout; fields beyond these are ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    /// The voice's name; default: the directory's file name.
    #[serde(default)]
    pub name: Option<String>,
    pub audio: AudioConfig,
    pub espeak: EspeakConfig,
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Symbol → ids (Piper allows several ids a symbol; all are sent).
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    pub num_symbols: Option<i64>,
    /// Samples a frame; informational (the model decides the length).
    #[serde(default)]
    pub hop_length: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AudioConfig {
    pub sample_rate: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EspeakConfig {
    /// The eSpeak NG voice of the text front end, such as `en-us`.
    pub voice: String,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct InferenceConfig {
    #[serde(default = "default_noise_scale")]
    pub noise_scale: f32,
    #[serde(default = "default_length_scale")]
    pub length_scale: f32,
    #[serde(default = "default_noise_w")]
    pub noise_w: f32,
}

fn default_noise_scale() -> f32 {
    0.667
}
fn default_length_scale() -> f32 {
    1.0
}
fn default_noise_w() -> f32 {
    0.8
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            noise_scale: default_noise_scale(),
            length_scale: default_length_scale(),
            noise_w: default_noise_w(),
        }
    }
}

/// A loaded TorchScript voice.
pub struct TorchVoice {
    name: String,
    config: Config,
    device: Device,
    module: Mutex<CModule>,
}

impl std::fmt::Debug for TorchVoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchVoice")
            .field("name", &self.name)
            .field("device", &self.device)
            .finish()
    }
}

/// A voice as its directory describes it, read and checked without loading the model: the
/// service lists its voices at start and loads each on first use.
#[derive(Clone, Debug)]
pub struct VoiceSpec {
    pub name: String,
    pub config: Config,
    /// `voice.ts.pt`.
    pub model: PathBuf,
}

impl VoiceSpec {
    /// Reads and checks `dir/voice.json`.
    pub fn read(dir: &Path) -> Result<VoiceSpec> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| TorchVoiceError::Read {
            path: path.clone(),
            source,
        })?;
        let config: Config =
            serde_json::from_str(&text).map_err(|source| TorchVoiceError::Config {
                path: path.clone(),
                source,
            })?;
        let invalid = |rule: String| TorchVoiceError::Invalid {
            path: path.clone(),
            rule,
        };
        if config.audio.sample_rate == 0 {
            return Err(invalid("audio.sample_rate must be positive".into()));
        }
        if config.espeak.voice.trim().is_empty() {
            return Err(invalid(
                "espeak.voice is empty: name the eSpeak NG voice of the text front end".into(),
            ));
        }
        if !config.phoneme_id_map.contains_key("_") {
            return Err(invalid(
                "phoneme_id_map has no pad symbol `_` (Piper's convention)".into(),
            ));
        }
        if let Some((symbol, ids)) = config.phoneme_id_map.iter().find(|(_, ids)| {
            ids.is_empty()
                || ids
                    .iter()
                    .any(|&id| id < 0 || config.num_symbols.is_some_and(|n| id >= n))
        }) {
            return Err(invalid(format!(
                "phoneme_id_map[{symbol:?}] = {ids:?}: each symbol needs ids in 0..num_symbols"
            )));
        }
        let scales = config.inference;
        if !(scales.length_scale > 0.0 && scales.length_scale.is_finite()) {
            return Err(invalid("inference.length_scale must be positive".into()));
        }
        let name = match &config.name {
            Some(name) if !name.trim().is_empty() => name.trim().to_string(),
            _ => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    invalid("no name: give the directory a name or set `name`".into())
                })?,
        };
        // Only read on first use, but checked now: a voice without a model stops start-up
        // rather than failing its first request.
        let model = dir.join(MODEL_FILE);
        if let Err(source) = std::fs::metadata(&model) {
            return Err(TorchVoiceError::Read {
                path: model,
                source,
            });
        }
        Ok(VoiceSpec {
            name,
            config,
            model,
        })
    }

    /// The eSpeak NG voice of its text front end.
    pub fn espeak_voice(&self) -> &str {
        &self.config.espeak.voice
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }
}

impl TorchVoice {
    /// Reads `dir/voice.json` and loads `dir/voice.ts.pt` onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<TorchVoice> {
        TorchVoice::from_spec(&VoiceSpec::read(dir)?, device)
    }

    /// Loads the voice's model onto `device`.
    pub fn from_spec(spec: &VoiceSpec, device: Device) -> Result<TorchVoice> {
        let mut module = CModule::load_on_device(&spec.model, device).map_err(|source| {
            TorchVoiceError::Load {
                path: spec.model.clone(),
                source,
            }
        })?;
        module.set_eval();
        Ok(TorchVoice {
            name: spec.name.clone(),
            config: spec.config.clone(),
            device,
            module: Mutex::new(module),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.audio.sample_rate
    }

    /// The eSpeak NG voice that makes this voice's phonemes.
    pub fn espeak_voice(&self) -> &str {
        &self.config.espeak.voice
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn on_gpu(&self) -> bool {
        self.device.is_cuda()
    }

    /// The ids sent for `phonemes` (see the module docs for padding and unknown symbols).
    pub fn ids(&self, phonemes: &[Phoneme]) -> Vec<i64> {
        let map = &self.config.phoneme_id_map;
        let pad = &map["_"];
        let fallback = map.get("<unk>").unwrap_or(pad);
        let (bos, eos) = (map.get("^"), map.get("$"));
        let framed = bos.is_some() && eos.is_some();
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        if let Some(bos) = bos.filter(|_| framed) {
            ids.extend(bos);
            ids.extend(pad);
        }
        for p in phonemes {
            ids.extend(map.get(&p.symbol).unwrap_or(fallback));
            if framed {
                ids.extend(pad);
            }
        }
        if let Some(eos) = eos.filter(|_| framed) {
            ids.extend(eos);
        }
        if ids.is_empty() {
            ids.extend(pad);
        }
        ids
    }

    fn inputs(&self, phonemes: &[Phoneme], length_scale: f32) -> [Tensor; 3] {
        let ids = self.ids(phonemes);
        let scales = self.config.inference;
        [
            Tensor::from_slice(&ids)
                .view([1, -1])
                .to_device(self.device),
            Tensor::from_slice(&[ids.len() as i64]).to_device(self.device),
            Tensor::from_slice(&[scales.noise_scale, length_scale, scales.noise_w])
                .to_device(self.device),
        ]
    }

    fn run_error(&self, source: tch::TchError) -> TorchVoiceError {
        TorchVoiceError::Run {
            voice: self.name.clone(),
            source,
        }
    }

    /// Speaks `phonemes` at the config's length scale: mono PCM at [`Self::sample_rate`].
    pub fn speak(&self, phonemes: &[Phoneme]) -> Result<Vec<i16>> {
        self.speak_scaled(phonemes, self.config.inference.length_scale)
    }

    /// Speaks `phonemes` with `length_scale` (over 1 slower, under 1 faster).
    pub fn speak_scaled(&self, phonemes: &[Phoneme], length_scale: f32) -> Result<Vec<i16>> {
        let module = self.module.lock().unwrap_or_else(|p| p.into_inner());
        // Until the samples are on the host (the copy waits for the GPU's work).
        let busy = self.on_gpu().then(crate::compute::work).flatten();
        let audio = tch::no_grad(|| -> Result<Tensor> {
            let inputs = self.inputs(phonemes, length_scale);
            let audio = module.forward_ts(&inputs).map_err(|e| self.run_error(e))?;
            Ok(audio
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .flatten(0, -1))
        })?;
        drop(busy);
        drop(module);
        let samples = Vec::<f32>::try_from(&audio).map_err(|e| self.run_error(e))?;
        if samples.iter().any(|s| !s.is_finite()) {
            return Err(TorchVoiceError::Output {
                voice: self.name.clone(),
                what: "non-finite samples".into(),
            });
        }
        Ok(samples
            .iter()
            .map(|&s| (s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .collect())
    }

    /// Frames per id, from the model's optional `durations` method (same inputs as forward);
    /// for checking a model's lengths, not needed to speak.
    pub fn durations(&self, phonemes: &[Phoneme], length_scale: f32) -> Result<Vec<i64>> {
        let module = self.module.lock().unwrap_or_else(|p| p.into_inner());
        let out = tch::no_grad(|| {
            let inputs = self.inputs(phonemes, length_scale).map(IValue::Tensor);
            module.method_is("durations", &inputs)
        })
        .map_err(|e| self.run_error(e))?;
        drop(module);
        match out {
            IValue::Tensor(t) => Vec::<i64>::try_from(&t.to_device(Device::Cpu).flatten(0, -1))
                .map_err(|e| self.run_error(e)),
            other => Err(TorchVoiceError::Output {
                voice: self.name.clone(),
                what: format!("{other:?} from durations, not a tensor"),
            }),
        }
    }
}

/// Where TorchScript voices run: CUDA device 0 when libtorch sees one, else the CPU.
pub fn default_device() -> Device {
    if tch::Cuda::is_available() {
        Device::Cuda(0)
    } else {
        Device::Cpu
    }
}

/// `phonemes` (contiguous eSpeak NG timings) stretched so they end at `total_ms`, the length
/// of the model's audio, so visemes follow the model's speech. Boundaries are scaled and
/// rounded, so the result stays contiguous and the last phoneme ends at `total_ms`.
pub fn stretch(phonemes: &[Phoneme], total_ms: u32) -> Vec<Phoneme> {
    let end = phonemes
        .iter()
        .map(|p| p.start_ms.saturating_add(p.duration_ms))
        .max()
        .unwrap_or(0);
    if end == 0 {
        return Vec::new();
    }
    let scale = |t: u32| {
        ((u64::from(t) * u64::from(total_ms) + u64::from(end) / 2) / u64::from(end)) as u32
    };
    phonemes
        .iter()
        .map(|p| {
            let start = scale(p.start_ms);
            let stop = scale(p.start_ms.saturating_add(p.duration_ms));
            Phoneme {
                symbol: p.symbol.clone(),
                start_ms: start,
                duration_ms: stop.saturating_sub(start),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(symbol: &str, start_ms: u32, duration_ms: u32) -> Phoneme {
        Phoneme {
            symbol: symbol.into(),
            start_ms,
            duration_ms,
        }
    }

    #[test]
    fn stretch_keeps_phonemes_contiguous_and_ends_at_the_total() {
        let out = stretch(&[p("h", 0, 30), p("@", 30, 45), p("l", 75, 25)], 333);
        assert_eq!(out[0].start_ms, 0);
        assert_eq!(out[1].start_ms, out[0].start_ms + out[0].duration_ms);
        assert_eq!(out[2].start_ms, out[1].start_ms + out[1].duration_ms);
        assert_eq!(out[2].start_ms + out[2].duration_ms, 333);
        assert!(stretch(&[], 100).is_empty());
    }
}
