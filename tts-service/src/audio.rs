//! Audio a client sends to be lip-synced: WAV bytes or raw PCM (a Synthesize result works
//! as it is), checked against the service's limits and turned into mono samples.
//!
//! The checks come before any work, so a bad request costs nothing, and each refusal names
//! the request field (`audio.data`, `audio.sample_rate`, `audio.format`) and the rule.
//! The lip-sync model takes its own sample rate, so [`Audio::resampled`] converts by linear
//! interpolation: no low-pass filter, which aliases a little when going down; the test model
//! and loudness-driven mouths do not mind, a real model may want a proper resampler.
//! [`resample::Resampler`] does the same to audio that arrives in pieces (a text spoken a
//! sentence at a time), with the same result.

pub mod resample;

use arbiter::wav::{self, WavError};

/// Rates outside this range are refused: not speech audio anyone sends.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
pub const MAX_SAMPLE_RATE: u32 = 192_000;

/// Mono audio, samples nominally in -1..1.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// What a request may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLimits {
    pub max_bytes: usize,
    pub max_seconds: u32,
}

/// How the bytes are encoded, as the request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// WAV when the bytes start with "RIFF", else raw PCM.
    Detect,
    Wav,
    /// Signed 16-bit little-endian mono.
    Pcm,
}

/// Why the audio of a request is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AudioError {
    #[error(
        "audio.data is empty: give WAV bytes or raw PCM s16le (a Synthesize result works as it is)"
    )]
    Empty,
    #[error("audio.data is {bytes} bytes, over the limit of {limit}: send less audio per request")]
    TooLarge { bytes: usize, limit: usize },
    #[error("audio.format {0} is not an AudioFormat: use 0 (detect), 1 (PCM s16le) or 2 (WAV)")]
    UnknownFormat(i32),
    #[error("audio.data is not a WAV file this service reads: {0}")]
    Wav(#[from] WavError),
    #[error("audio.sample_rate is 0: raw PCM needs its rate in Hz (each Synthesize chunk says it)")]
    PcmRate,
    #[error("audio.sample_rate {given} disagrees with the WAV header's {header} Hz: leave it 0")]
    RateMismatch { given: u32, header: u32 },
    #[error("audio.sample_rate {0} Hz is outside {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz")]
    RateRange(u32),
    #[error("audio.data is {0} bytes, an odd number: raw PCM is signed 16-bit, 2 bytes a sample")]
    OddPcm(usize),
    #[error("audio.data holds no samples")]
    NoSamples,
    #[error("audio.data holds non-finite float samples (NaN or infinity)")]
    NonFinite,
    #[error("audio.data is {seconds:.1} s of audio, over the limit of {limit} s: split it")]
    TooLong { seconds: f64, limit: u32 },
}

impl Audio {
    /// Signed 16-bit samples, such as a voice's output.
    pub fn from_s16(samples: &[i16], sample_rate: u32) -> Audio {
        Audio {
            samples: samples.iter().map(|&s| f32::from(s) / 32768.0).collect(),
            sample_rate,
        }
    }

    /// Reads a request's audio: `encoding` as the request says, `sample_rate` its field
    /// (required for PCM, 0 or the header's rate for WAV).
    pub fn decode(
        data: &[u8],
        encoding: Encoding,
        sample_rate: u32,
        limits: AudioLimits,
    ) -> Result<Audio, AudioError> {
        if data.is_empty() {
            return Err(AudioError::Empty);
        }
        if data.len() > limits.max_bytes {
            return Err(AudioError::TooLarge {
                bytes: data.len(),
                limit: limits.max_bytes,
            });
        }
        let wav = match encoding {
            Encoding::Wav => true,
            Encoding::Pcm => false,
            Encoding::Detect => data.starts_with(b"RIFF"),
        };
        let mut audio = if wav {
            let decoded = wav::decode(data)?;
            if sample_rate != 0 && sample_rate != decoded.sample_rate {
                return Err(AudioError::RateMismatch {
                    given: sample_rate,
                    header: decoded.sample_rate,
                });
            }
            Audio {
                samples: decoded.samples,
                sample_rate: decoded.sample_rate,
            }
        } else {
            if sample_rate == 0 {
                return Err(AudioError::PcmRate);
            }
            if !data.len().is_multiple_of(2) {
                return Err(AudioError::OddPcm(data.len()));
            }
            Audio {
                samples: data
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                    .collect(),
                sample_rate,
            }
        };
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&audio.sample_rate) {
            return Err(AudioError::RateRange(audio.sample_rate));
        }
        if audio.samples.is_empty() {
            return Err(AudioError::NoSamples);
        }
        if audio.samples.iter().any(|s| !s.is_finite()) {
            return Err(AudioError::NonFinite);
        }
        // Float WAV may hold anything; the models take [-1, 1] (as integer PCM always is).
        for sample in &mut audio.samples {
            *sample = sample.clamp(-1.0, 1.0);
        }
        let seconds = audio.seconds();
        if seconds > f64::from(limits.max_seconds) {
            return Err(AudioError::TooLong {
                seconds,
                limit: limits.max_seconds,
            });
        }
        Ok(audio)
    }

    pub fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate)
    }

    /// The length in whole milliseconds, rounded down as Synthesize reports durations (the
    /// timeline's end).
    pub fn duration_ms(&self) -> u32 {
        let ms = self.samples.len() as u64 * 1000 / u64::from(self.sample_rate.max(1));
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    /// The samples at `rate` Hz, by linear interpolation; the length is the original's
    /// times `rate / sample_rate`, rounded half up. The same as feeding them to a
    /// [`resample::Resampler`] in any pieces.
    pub fn resampled(&self, rate: u32) -> Vec<f32> {
        let mut resampler = resample::Resampler::new(self.sample_rate, rate);
        let mut samples = resampler.push(&self.samples);
        samples.extend(resampler.finish());
        samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: AudioLimits = AudioLimits {
        max_bytes: 1 << 20,
        max_seconds: 10,
    };

    #[test]
    fn wav_and_pcm_are_read_and_detected() {
        let samples = [0i16, 8192, -8192, 16384];
        let wav = arbiter::wav::encode(&samples, 22050, 1);
        let from_wav = Audio::decode(&wav, Encoding::Detect, 0, LIMITS).unwrap();
        assert_eq!(from_wav, Audio::from_s16(&samples, 22050));
        let pcm = arbiter::wav::pcm_s16le(&samples);
        let from_pcm = Audio::decode(&pcm, Encoding::Detect, 22050, LIMITS).unwrap();
        assert_eq!(from_pcm, from_wav);
        assert_eq!(
            Audio::decode(&wav, Encoding::Wav, 22050, LIMITS).unwrap(),
            from_wav
        );
    }

    #[test]
    fn bad_audio_is_refused_naming_the_field() {
        let wav = arbiter::wav::encode(&[1, 2, 3], 16000, 1);
        for (result, field) in [
            (
                Audio::decode(&[], Encoding::Detect, 0, LIMITS),
                "audio.data",
            ),
            (
                Audio::decode(&[0; 10], Encoding::Pcm, 0, LIMITS),
                "audio.sample_rate",
            ),
            (
                Audio::decode(&[0; 9], Encoding::Pcm, 16000, LIMITS),
                "audio.data",
            ),
            (
                Audio::decode(&wav, Encoding::Detect, 22050, LIMITS),
                "audio.sample_rate",
            ),
            (
                Audio::decode(b"RIFFxxxxJUNK", Encoding::Detect, 0, LIMITS),
                "audio.data",
            ),
            (
                Audio::decode(&[0; 10], Encoding::Pcm, 1000, LIMITS),
                "audio.sample_rate",
            ),
        ] {
            let error = result.expect_err("refused");
            assert!(error.to_string().contains(field), "{field}: {error}");
        }
        let long = vec![0u8; 2 * 16000 * 11];
        let error = Audio::decode(&long, Encoding::Pcm, 16000, LIMITS).unwrap_err();
        assert!(
            matches!(error, AudioError::TooLong { limit: 10, .. }),
            "{error}"
        );
        let big = vec![0u8; (1 << 20) + 2];
        let error = Audio::decode(&big, Encoding::Pcm, 16000, LIMITS).unwrap_err();
        assert!(matches!(error, AudioError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn resampling_keeps_the_duration_and_the_shape() {
        let audio = Audio {
            samples: (0..22050)
                .map(|i| (i as f32 / 22050.0) * 2.0 - 1.0)
                .collect(),
            sample_rate: 22050,
        };
        let down = audio.resampled(16000);
        assert_eq!(down.len(), 16000);
        // A ramp stays a ramp.
        assert!(down.windows(2).all(|w| w[1] >= w[0]));
        assert!((down[8000] - audio.samples[11025]).abs() < 1e-3);
        assert_eq!(audio.resampled(22050), audio.samples);
        assert_eq!(audio.duration_ms(), 1000);
        let short = Audio {
            samples: vec![0.0; 3],
            sample_rate: 22050,
        };
        assert_eq!(short.resampled(16000).len(), 2);
    }
}
