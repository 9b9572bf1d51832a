//! Media for requests and checks on what came back: tones and WAV files, pictures, and
//! ffprobe's view of a file.

use std::path::Path;
use std::process::Command;

pub use image::ImageFormat;

/// `seconds` of a sine at `hz` with peak `amplitude`, as 16-bit samples at `rate`.
pub fn sine(hz: f64, amplitude: f64, seconds: f64, rate: u32) -> Vec<i16> {
    (0..(seconds * f64::from(rate)).round() as usize)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            ((t * hz * std::f64::consts::TAU).sin() * amplitude) as i16
        })
        .collect()
}

/// A 220 Hz tone of `seconds` at `rate`, loud enough to open a mouth.
pub fn tone(seconds: f64, rate: u32) -> Vec<i16> {
    sine(220.0, 12000.0, seconds, rate)
}

/// A WAV file (16-bit PCM) of `samples` at `rate`, interleaved over `channels`.
pub fn wav(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let block_align = channels * 2;
    let mut wav = Vec::with_capacity(44 + data_len as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVE");
    wav.extend_from_slice(b"fmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&channels.to_le_bytes());
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * u32::from(block_align)).to_le_bytes()); // bytes per second
    wav.extend_from_slice(&block_align.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        wav.extend_from_slice(&sample.to_le_bytes());
    }
    wav
}

/// A valid WAV file: 16-bit mono PCM at 8kHz, one second of a 440Hz tone.
pub fn wav_tone() -> Vec<u8> {
    wav(&sine(440.0, 8000.0, 1.0, 8000), 8000, 1)
}

/// A `width` × `height` picture with a gradient, encoded as PNG or JPEG.
pub fn picture(width: u32, height: u32, format: ImageFormat) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 255 / width) as u8, (y * 255 / height) as u8, 128])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    picture
        .write_to(&mut out, format)
        .expect("the picture encodes");
    out.into_inner()
}

/// What `ffprobe -v error <args> <path>` prints, failing the test if it fails.
pub fn ffprobe(path: &Path, args: &[&str]) -> String {
    let output = Command::new("ffprobe")
        .args(["-v", "error"])
        .args(args)
        .arg(path)
        .output()
        .expect("ffprobe runs (apt-get install ffmpeg)");
    assert!(
        output.status.success(),
        "ffprobe {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("ffprobe prints UTF-8")
}

/// `ffprobe … -of json` of `path`, parsed.
fn ffprobe_json(path: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["-of", "json"]);
    serde_json::from_str(&ffprobe(path, &all)).expect("ffprobe's JSON")
}

/// ffprobe's view of a media file's streams: (codec_type, width, height, frames counted).
pub fn streams(path: &Path) -> Vec<(String, u64, u64, u64)> {
    let json = ffprobe_json(
        path,
        &[
            "-count_frames",
            "-show_entries",
            "stream=codec_type,width,height,nb_read_frames",
        ],
    );
    let number = |v: &serde_json::Value| {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    };
    json["streams"]
        .as_array()
        .expect("a list of streams")
        .iter()
        .map(|s| {
            (
                s["codec_type"].as_str().unwrap_or_default().to_string(),
                number(&s["width"]),
                number(&s["height"]),
                number(&s["nb_read_frames"]),
            )
        })
        .collect()
}

/// ffprobe's view of a file's audio track: channels and duration in seconds.
pub fn audio_track(path: &Path) -> (u64, f64) {
    let json = ffprobe_json(
        path,
        &[
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=channels,duration",
        ],
    );
    let stream = &json["streams"][0];
    let channels = stream["channels"].as_u64().unwrap_or(0);
    let duration = stream["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (channels, duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wav_has_the_header_ffprobe_reads() {
        let samples = sine(440.0, 8000.0, 0.5, 8000);
        assert_eq!(samples.len(), 4000);
        assert_eq!(samples[0], 0);
        assert!(samples.iter().any(|&s| s > 7000) && samples.iter().any(|&s| s < -7000));
        let stereo: Vec<i16> = samples.iter().flat_map(|&s| [s, s]).collect();
        let bytes = wav(&stereo, 8000, 2);
        assert_eq!(bytes.len(), 44 + 4 * 4000);
        assert_eq!(
            (&bytes[0..4], &bytes[8..16]),
            (&b"RIFF"[..], &b"WAVEfmt "[..])
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        std::fs::write(&path, bytes).unwrap();
        let (channels, seconds) = audio_track(&path);
        assert_eq!(channels, 2);
        assert!((seconds - 0.5).abs() < 1e-3, "{seconds}");
        let kinds: Vec<String> = streams(&path).into_iter().map(|s| s.0).collect();
        assert_eq!(kinds, ["audio"]);
    }

    #[test]
    fn pictures_decode_at_their_size() {
        for format in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let bytes = picture(40, 24, format);
            let decoded = image::load_from_memory_with_format(&bytes, format).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (40, 24));
        }
    }
}
