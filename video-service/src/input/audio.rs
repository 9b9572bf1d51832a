//! The request's audio, decoded and made exactly what the model takes: its sample rate, its
//! channel count and the length the video's frames imply.
//!
//! The file is recognised by its content (the extension is only a hint), so a misnamed file
//! still loads and a file that is not audio is refused as such. Then, in this order:
//! - every packet of the first audio track is decoded to `f32`;
//! - the channels are brought to the model's count: mono is duplicated into both sides,
//!   stereo is kept, and for a mono model the two sides are averaged. More than two channels
//!   are refused rather than guessed at: which channels carry the voice in a surround mix is
//!   not something to decide silently, and `ffmpeg -ac 2` does it properly;
//! - the audio is resampled to the model's rate with rubato's FFT resampler (band-limited,
//!   no audible aliasing; skipped when the rates already match);
//! - it is padded with silence, or cut, at the end to exactly `round(duration_s * rate)`
//!   frames. A soundtrack shorter than the video is normal (a pause at the end); a longer
//!   one is cut because the model conditions each frame on the audio at its timestamp.
//!
//! Decoding stops a second past what the video needs, so that a long file (a whole podcast
//! for a five-second clip) costs neither the time nor the memory of decoding all of it.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    CODEC_TYPE_FLAC, CODEC_TYPE_MP3, CODEC_TYPE_NULL, CODEC_TYPE_VORBIS, CodecType, DecoderOptions,
};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// What the model takes: its sample rate and channel count (for example 16000 Hz, 2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AudioSpec {
    pub sample_rate: u32,
    pub channels: u16,
}

/// Audio ready for the model: exactly its rate, channel count and the requested length.
#[derive(Clone, Debug)]
pub struct Audio {
    pub sample_rate: u32,
    pub channels: u16,
    /// interleaved, in [-1, 1]
    pub samples: Vec<f32>,
    pub source: AudioSource,
}

/// What the file was and what was done to it, for `metadata.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AudioSource {
    /// "wav", "flac", "mp3" or "ogg", from the codec found in the file (not its extension).
    pub format: String,
    pub sample_rate: u32,
    pub channels: u16,
    /// The file's length; where decoding stopped early and the container does not state its
    /// length, the length decoded.
    pub duration_s: f64,
    /// silence added at the end
    pub padded_s: f64,
    /// cut from the end
    pub trimmed_s: f64,
}

/// Why the audio cannot be used. Each message names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("audio {}: no such file; check the path in the request", .path.display())]
    NotFound { path: PathBuf },
    #[error("audio {}: cannot read it: {source}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "audio {}: format not recognised; arbiter-video reads WAV, FLAC, MP3 and OGG Vorbis",
        .path.display()
    )]
    NotRecognised { path: PathBuf },
    #[error(
        "audio {}: the container is recognised but its codec is not supported; arbiter-video reads WAV (PCM), FLAC, MP3 and OGG Vorbis: convert it first, e.g. `ffmpeg -i {} audio.wav`",
        .path.display(), .path.display()
    )]
    UnsupportedCodec { path: PathBuf },
    #[error("audio {}: the file holds no audio track", .path.display())]
    NoTrack { path: PathBuf },
    #[error(
        "audio {}: cannot decode it ({source}); the file may be truncated or damaged: re-export it",
        .path.display()
    )]
    Decode {
        path: PathBuf,
        source: SymphoniaError,
    },
    #[error(
        "audio {}: the file holds no samples; send audio of at least some length, or none at all",
        .path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "audio {}: {channels} channels; arbiter-video takes mono or stereo: downmix it first, e.g. `ffmpeg -i {} -ac 2 audio.wav`",
        .path.display(), .path.display()
    )]
    TooManyChannels { path: PathBuf, channels: usize },
    #[error(
        "audio {}: the sample rate or channel count changes partway through; re-export it as one stream",
        .path.display()
    )]
    Inconsistent { path: PathBuf },
    #[error(
        "the model's audio spec ({sample_rate} Hz, {channels} channels) is invalid: the rate must be above 0 and the channels 1 or 2"
    )]
    Spec { sample_rate: u32, channels: u16 },
    #[error("the requested audio duration {duration_s} s is not a positive, finite number")]
    Duration { duration_s: f64 },
    #[error("audio {}: cannot resample {from} Hz to {to} Hz: {source}", .path.display())]
    Resample {
        path: PathBuf,
        from: u32,
        to: u32,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot write the audio to {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// How far past the needed length decoding goes before it stops, in seconds: enough that
/// the resampler's filter sees real audio, not the end of the stream, at the cut.
const DECODE_MARGIN_S: f64 = 1.0;

/// Loads `path` and makes it exactly `spec`'s rate and channels, `duration_s` long.
pub fn load_audio(path: &Path, spec: AudioSpec, duration_s: f64) -> Result<Audio, AudioError> {
    if spec.sample_rate == 0 || !(1..=2).contains(&spec.channels) {
        return Err(AudioError::Spec {
            sample_rate: spec.sample_rate,
            channels: spec.channels,
        });
    }
    if !duration_s.is_finite() || duration_s <= 0.0 {
        return Err(AudioError::Duration { duration_s });
    }
    let decoded = decode(path, duration_s)?;
    let target = usize::from(spec.channels);

    // Fewer channels before resampling, more after: the resampler does the least work.
    let mut channels = decoded.channels;
    let mut samples = decoded.samples;
    if target < channels {
        samples = average_to_mono(&samples);
        channels = 1;
    }
    if decoded.sample_rate != spec.sample_rate {
        samples = resample(&samples, channels, decoded.sample_rate, spec.sample_rate).map_err(
            |source| AudioError::Resample {
                path: path.to_owned(),
                from: decoded.sample_rate,
                to: spec.sample_rate,
                source,
            },
        )?;
    }
    if target > channels {
        samples = duplicate_mono(&samples);
        channels = target;
    }
    for sample in &mut samples {
        // The resampler's ringing can overshoot a full-scale input slightly.
        *sample = sample.clamp(-1.0, 1.0);
    }

    let rate = f64::from(spec.sample_rate);
    let wanted = (duration_s * rate).round() as usize;
    let have = samples.len() / channels;
    samples.resize(wanted * channels, 0.0);
    let source_duration_s = decoded.total_frames as f64 / f64::from(decoded.sample_rate);
    let (padded_s, trimmed_s) = if have < wanted {
        ((wanted - have) as f64 / rate, 0.0)
    } else {
        (0.0, (source_duration_s - wanted as f64 / rate).max(0.0))
    };
    Ok(Audio {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        samples,
        source: AudioSource {
            format: decoded.format.to_owned(),
            sample_rate: decoded.sample_rate,
            channels: decoded.channels as u16,
            duration_s: source_duration_s,
            padded_s,
            trimmed_s,
        },
    })
}

impl Audio {
    /// Samples per channel.
    pub fn frames(&self) -> usize {
        self.samples.len() / usize::from(self.channels.max(1))
    }

    /// The length in seconds.
    pub fn duration_s(&self) -> f64 {
        self.frames() as f64 / f64::from(self.sample_rate.max(1))
    }

    /// writes 16-bit PCM WAV (for ffmpeg to mux)
    pub fn write_wav(&self, path: &Path) -> Result<(), AudioError> {
        let failed = |source| AudioError::Write {
            path: path.to_owned(),
            source,
        };
        let bytes = wav_bytes(self).map_err(failed)?;
        let file = File::create(path).map_err(failed)?;
        let mut out = BufWriter::new(file);
        out.write_all(&bytes).map_err(failed)?;
        out.flush().map_err(failed)
    }
}

/// A canonical 44-byte-header, 16-bit PCM WAV of `audio`.
fn wav_bytes(audio: &Audio) -> io::Result<Vec<u8>> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "too long for a WAV file");
    let data_len = u32::try_from(audio.samples.len() * 2).map_err(|_| too_long())?;
    let riff_len = data_len.checked_add(36).ok_or_else(too_long)?;
    let block_align = audio.channels * 2;
    let byte_rate = audio.sample_rate * u32::from(block_align);
    let mut bytes = Vec::with_capacity(44 + audio.samples.len() * 2);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&riff_len.to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&audio.channels.to_le_bytes());
    bytes.extend_from_slice(&audio.sample_rate.to_le_bytes());
    bytes.extend_from_slice(&byte_rate.to_le_bytes());
    bytes.extend_from_slice(&block_align.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for &sample in &audio.samples {
        let value = (sample.clamp(-1.0, 1.0) * f32::from(i16::MAX)).round() as i16;
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    Ok(bytes)
}

/// A file's audio as decoded, before any conversion.
struct Decoded {
    format: &'static str,
    sample_rate: u32,
    channels: usize,
    /// interleaved
    samples: Vec<f32>,
    /// The whole file's length in frames: the container's word for it, else what was decoded.
    total_frames: u64,
}

/// Decodes `path`'s first audio track, stopping once it has `duration_s` plus a margin.
fn decode(path: &Path, duration_s: f64) -> Result<Decoded, AudioError> {
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => AudioError::NotFound {
            path: path.to_owned(),
        },
        _ => AudioError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    let decode_error = |source| AudioError::Decode {
        path: path.to_owned(),
        source,
    };
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(extension) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(extension);
    }
    let options = FormatOptions {
        // Drops the encoder's delay and padding (MP3, Vorbis), so the audio starts on time.
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, stream, &options, &MetadataOptions::default())
        .map_err(|error| match error {
            // No reader's marker before the end of the file, or none that matches.
            SymphoniaError::Unsupported(_) => AudioError::NotRecognised {
                path: path.to_owned(),
            },
            SymphoniaError::IoError(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                AudioError::NotRecognised {
                    path: path.to_owned(),
                }
            }
            SymphoniaError::IoError(source) => AudioError::Unreadable {
                path: path.to_owned(),
                source,
            },
            other => decode_error(other),
        })?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|track| track.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::NoTrack {
            path: path.to_owned(),
        })?;
    let track_id = track.id;
    let format = format_name(track.codec_params.codec);
    let stated_frames = track.codec_params.n_frames;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|error| match error {
            SymphoniaError::Unsupported(_) => AudioError::UnsupportedCodec {
                path: path.to_owned(),
            },
            other => decode_error(other),
        })?;

    let mut samples: Vec<f32> = Vec::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let mut spec_seen = None;
    let mut skipped: Option<SymphoniaError> = None;
    let mut stopped_early = false;
    loop {
        let packet = match reader.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            // A new logical stream (chained Ogg): the first one is the soundtrack.
            Err(SymphoniaError::ResetRequired) => break,
            Err(other) => return Err(decode_error(other)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A damaged packet is skipped, as players do; a file of nothing else is an error.
            Err(error @ (SymphoniaError::DecodeError(_) | SymphoniaError::IoError(_))) => {
                skipped = Some(error);
                continue;
            }
            Err(other) => return Err(decode_error(other)),
        };
        let spec = *decoded.spec();
        match spec_seen {
            None => {
                let count = spec.channels.count();
                if count > 2 {
                    return Err(AudioError::TooManyChannels {
                        path: path.to_owned(),
                        channels: count,
                    });
                }
                if count == 0 || spec.rate == 0 {
                    return Err(decode_error(SymphoniaError::DecodeError(
                        "a stream without channels or without a sample rate",
                    )));
                }
                spec_seen = Some(spec);
            }
            Some(seen) if seen != spec => {
                return Err(AudioError::Inconsistent {
                    path: path.to_owned(),
                });
            }
            Some(_) => {}
        }
        if decoded.frames() == 0 {
            continue;
        }
        let frames = decoded.capacity();
        let reusable = buffer
            .take()
            .filter(|b| b.capacity() >= frames * spec.channels.count());
        let buffer =
            buffer.insert(reusable.unwrap_or_else(|| SampleBuffer::new(frames as u64, spec)));
        buffer.copy_interleaved_ref(decoded);
        samples.extend_from_slice(buffer.samples());

        let needed = (duration_s + DECODE_MARGIN_S) * f64::from(spec.rate);
        if (samples.len() / spec.channels.count()) as f64 >= needed {
            stopped_early = true;
            break;
        }
    }

    let Some(spec) = spec_seen.filter(|_| !samples.is_empty()) else {
        return Err(match skipped {
            Some(error) => decode_error(error),
            None => AudioError::Empty {
                path: path.to_owned(),
            },
        });
    };
    let (sample_rate, channels) = (spec.rate, spec.channels.count());
    let decoded_frames = (samples.len() / channels) as u64;
    let total_frames = match stated_frames {
        Some(stated) if stopped_early => stated.max(decoded_frames),
        _ => decoded_frames,
    };
    Ok(Decoded {
        format,
        sample_rate,
        channels,
        samples,
        total_frames,
    })
}

/// The name a user knows the file by, from its codec: only the WAV reader carries PCM, and
/// Vorbis comes only in Ogg.
fn format_name(codec: CodecType) -> &'static str {
    if codec == CODEC_TYPE_MP3 {
        "mp3"
    } else if codec == CODEC_TYPE_FLAC {
        "flac"
    } else if codec == CODEC_TYPE_VORBIS {
        "ogg"
    } else {
        "wav"
    }
}

/// Interleaved stereo to mono, each frame the mean of its two sides.
fn average_to_mono(stereo: &[f32]) -> Vec<f32> {
    stereo
        .chunks_exact(2)
        .map(|frame| (frame[0] + frame[1]) * 0.5)
        .collect()
}

/// Mono to interleaved stereo, the same signal on both sides.
fn duplicate_mono(mono: &[f32]) -> Vec<f32> {
    mono.iter().flat_map(|&sample| [sample, sample]).collect()
}

/// Resamples interleaved `samples` from `from` Hz to `to` Hz, keeping its start in place.
fn resample(
    samples: &[f32],
    channels: usize,
    from: u32,
    to: u32,
) -> Result<Vec<f32>, Box<dyn std::error::Error + Send + Sync>> {
    let frames = samples.len() / channels;
    let mut resampler =
        Fft::<f32>::new(from as usize, to as usize, 1024, channels, FixedSync::Both)?;
    let input = InterleavedSlice::new(samples, channels, frames)?;
    // `process_all` trims the resampler's delay: the output lines up with the input.
    let output = resampler.process_all(&input, frames, None)?;
    Ok(output.take_data())
}

#[cfg(test)]
mod tests {
    use std::f32::consts::TAU;
    use std::process::Command;

    use super::*;

    /// Writes `seconds` of a `freq` Hz sine at half scale as a 16-bit WAV, the same signal
    /// on every channel.
    fn write_sine(path: &Path, rate: u32, channels: u16, seconds: f64, freq: f32) {
        let spec = hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec).unwrap();
        let frames = (seconds * f64::from(rate)).round() as usize;
        for i in 0..frames {
            let value = 0.5 * (TAU * freq * i as f32 / rate as f32).sin();
            for _ in 0..channels {
                writer
                    .write_sample((value * f32::from(i16::MAX)) as i16)
                    .unwrap();
            }
        }
        writer.finalize().unwrap();
    }

    /// One channel of interleaved samples.
    fn channel(audio: &Audio, index: usize) -> Vec<f32> {
        audio
            .samples
            .iter()
            .skip(index)
            .step_by(usize::from(audio.channels))
            .copied()
            .collect()
    }

    fn zero_crossings(signal: &[f32]) -> usize {
        signal
            .windows(2)
            .filter(|pair| (pair[0] < 0.0) != (pair[1] < 0.0))
            .count()
    }

    /// Checks a 440 Hz sine over the middle of its first second: frequency and level kept.
    fn assert_sine_440(signal: &[f32], rate: u32) {
        let start = (0.1 * f64::from(rate)) as usize;
        let end = (0.9 * f64::from(rate)) as usize;
        let middle = &signal[start..end];
        // 440 Hz crosses zero 880 times a second: 704 in 0.8 s.
        let crossings = zero_crossings(middle);
        assert!(
            (690..=718).contains(&crossings),
            "{crossings} zero crossings, expected about 704"
        );
        let peak = middle.iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((0.45..=0.55).contains(&peak), "peak {peak}, expected 0.5");
    }

    const MODEL: AudioSpec = AudioSpec {
        sample_rate: 16000,
        channels: 2,
    };

    #[test]
    fn mono_wav_is_made_stereo_resampled_and_padded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("voice.wav");
        write_sine(&path, 22050, 1, 1.0, 440.0);

        let audio = load_audio(&path, MODEL, 1.5).unwrap();

        assert_eq!(audio.sample_rate, 16000);
        assert_eq!(audio.channels, 2);
        assert_eq!(audio.frames(), 24000);
        assert_eq!(audio.samples.len(), 48000);
        assert!((audio.duration_s() - 1.5).abs() < 1e-9);
        let (left, right) = (channel(&audio, 0), channel(&audio, 1));
        assert_eq!(left, right);
        assert!(
            left[16100..].iter().all(|&s| s == 0.0),
            "the tail is silence"
        );
        assert!(audio.samples.iter().all(|s| (-1.0..=1.0).contains(s)));
        assert_sine_440(&left, 16000);

        let source = &audio.source;
        assert_eq!(source.format, "wav");
        assert_eq!((source.sample_rate, source.channels), (22050, 1));
        assert!((source.duration_s - 1.0).abs() < 1e-9);
        assert!((source.padded_s - 0.5).abs() <= 2.0 / 16000.0, "{source:?}");
        assert_eq!(source.trimmed_s, 0.0);
    }

    #[test]
    fn long_wav_is_trimmed_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        write_sine(&path, 16000, 2, 3.0, 440.0);

        let audio = load_audio(&path, MODEL, 2.0).unwrap();

        assert_eq!(audio.frames(), 32000);
        assert_eq!(audio.source.padded_s, 0.0);
        assert!(
            (audio.source.trimmed_s - 1.0).abs() < 1e-9,
            "{:?}",
            audio.source
        );
        assert!((audio.source.duration_s - 3.0).abs() < 1e-9);
        // Same rate: no resampling, the samples pass through (up to 16-bit quantization).
        let left = channel(&audio, 0);
        assert_sine_440(&left, 16000);
        let expected = 0.5 * (TAU * 440.0 * 31999.0 / 16000.0).sin();
        assert!((left[31999] - expected).abs() < 1e-3);
    }

    #[test]
    fn very_long_audio_stops_decoding_but_reports_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("podcast.wav");
        write_sine(&path, 8000, 1, 20.0, 440.0);

        let audio = load_audio(&path, MODEL, 1.0).unwrap();

        assert_eq!(audio.frames(), 16000);
        assert!((audio.source.duration_s - 20.0).abs() < 1e-9);
        assert!((audio.source.trimmed_s - 19.0).abs() < 1e-9);
    }

    #[test]
    fn stereo_is_averaged_for_a_mono_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&path, spec).unwrap();
        for _ in 0..1600 {
            writer.write_sample(16384i16).unwrap();
            writer.write_sample(0i16).unwrap();
        }
        writer.finalize().unwrap();
        let mono = AudioSpec {
            sample_rate: 16000,
            channels: 1,
        };

        let audio = load_audio(&path, mono, 0.1).unwrap();

        assert_eq!((audio.channels, audio.frames()), (1, 1600));
        assert!(audio.samples.iter().all(|s| (s - 0.25).abs() < 1e-3));
    }

    #[test]
    fn written_wav_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.wav");
        write_sine(&input, 22050, 1, 0.5, 440.0);
        let audio = load_audio(&input, MODEL, 0.5).unwrap();
        let output = dir.path().join("out.wav");

        audio.write_wav(&output).unwrap();

        let mut reader = hound::WavReader::open(&output).unwrap();
        let spec = reader.spec();
        assert_eq!((spec.sample_rate, spec.channels), (16000, 2));
        assert_eq!(spec.bits_per_sample, 16);
        let read: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(read.len(), audio.samples.len());
        for (&written, &original) in read.iter().zip(&audio.samples) {
            assert!((f32::from(written) / 32767.0 - original).abs() < 1e-4);
        }
        // And the worker's own reader takes it as is.
        let again = load_audio(&output, MODEL, 0.5).unwrap();
        assert_eq!(again.frames(), audio.frames());
    }

    #[test]
    fn flac_mp3_and_ogg_vorbis_decode() {
        let Ok(ffmpeg) = crate::mux::ffmpeg() else {
            eprintln!("note: ffmpeg is not on PATH; FLAC, MP3 and OGG decoding not tested");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        for (name, codec, format) in [
            ("a.flac", "flac", "flac"),
            ("a.mp3", "libmp3lame", "mp3"),
            ("a.ogg", "libvorbis", "ogg"),
        ] {
            let path = dir.path().join(name);
            let status = Command::new(&ffmpeg)
                .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
                .args(["-i", "sine=frequency=440:sample_rate=44100:duration=1"])
                .args(["-ac", "2", "-c:a", codec])
                .arg(&path)
                .status()
                .unwrap();
            assert!(
                status.success(),
                "ffmpeg could not write {name} with {codec}"
            );

            let audio = load_audio(&path, MODEL, 1.0).unwrap();

            assert_eq!(audio.source.format, format);
            assert_eq!(
                (audio.source.sample_rate, audio.source.channels),
                (44100, 2)
            );
            assert!(
                (audio.source.duration_s - 1.0).abs() < 0.06,
                "{name}: {:?}",
                audio.source
            );
            assert_eq!((audio.channels, audio.frames()), (2, 16000));
            let left = channel(&audio, 0);
            let start = 1600;
            let crossings = zero_crossings(&left[start..start + 12800]);
            assert!(
                (690..=718).contains(&crossings),
                "{name}: {crossings} zero crossings, expected about 704"
            );
        }
    }

    #[test]
    fn text_named_wav_is_not_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.wav");
        std::fs::write(&path, "these are my notes, not a recording\n".repeat(50)).unwrap();

        let error = load_audio(&path, MODEL, 1.0).unwrap_err();

        assert!(
            matches!(error, AudioError::NotRecognised { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(message.contains("not recognised"), "{message}");
        assert!(
            message.contains("WAV, FLAC, MP3 and OGG Vorbis"),
            "{message}"
        );
    }

    #[test]
    fn wav_without_samples_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.wav");
        write_sine(&path, 16000, 1, 0.0, 440.0);

        let error = load_audio(&path, MODEL, 1.0).unwrap_err();

        assert!(matches!(error, AudioError::Empty { .. }), "{error:?}");
    }

    #[test]
    fn missing_file_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nowhere.wav");

        let error = load_audio(&path, MODEL, 1.0).unwrap_err();

        assert!(matches!(error, AudioError::NotFound { .. }), "{error:?}");
        assert!(error.to_string().contains("nowhere.wav"));
    }

    #[test]
    fn surround_is_refused_with_the_downmix_command() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("surround.wav");
        write_sine(&path, 16000, 3, 0.1, 440.0);

        let error = load_audio(&path, MODEL, 1.0).unwrap_err();

        assert!(
            matches!(error, AudioError::TooManyChannels { channels: 3, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("-ac 2"));
    }

    #[test]
    fn invalid_spec_or_duration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("voice.wav");
        write_sine(&path, 16000, 1, 0.1, 440.0);
        let surround = AudioSpec {
            sample_rate: 16000,
            channels: 6,
        };

        assert!(matches!(
            load_audio(&path, surround, 1.0),
            Err(AudioError::Spec { .. })
        ));
        for duration in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                load_audio(&path, MODEL, duration),
                Err(AudioError::Duration { .. })
            ));
        }
    }
}
