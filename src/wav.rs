//! WAV both ways. Out: PCM s16le behind the canonical 44-byte RIFF header (format 1, PCM).
//! In ([`decode`]): what clients send to be lip-synced, including the service's own
//! streaming header whose lengths say "until the end".

/// The length of the header [`encode`] writes.
pub const HEADER_LEN: usize = 44;

/// A WAV file of mono or interleaved `channels` signed 16-bit samples at `sample_rate` Hz.
pub fn encode(samples: &[i16], sample_rate: u32, channels: u16) -> Vec<u8> {
    let data_len = u32::try_from(samples.len() * 2).expect("WAV data over 4 GiB");
    let block_align = channels * 2;
    let mut out = Vec::with_capacity(HEADER_LEN + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    out.extend_from_slice(&block_align.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&pcm_s16le(samples));
    out
}

/// A mono header for a stream of unknown length: the RIFF and data sizes are 0xFFFFFFFF,
/// which players read as "until the end" (the service sends it before the first sentence).
pub fn streaming_header(sample_rate: u32) -> Vec<u8> {
    let mut header = encode(&[], sample_rate, 1);
    header[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    header[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
    header
}

/// The samples as raw little-endian bytes (the service's raw PCM output).
pub fn pcm_s16le(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Why bytes could not be read as WAV; each says what the file should be instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("it does not start with a RIFF/WAVE header")]
    NotWav,
    #[error("it has no `data` chunk after a `fmt ` chunk")]
    NoData,
    #[error("its `fmt ` chunk is {0} bytes, shorter than the 16 a WAV needs")]
    ShortFormat(u32),
    #[error("its encoding {0:#06x} is neither integer PCM (1) nor float (3)")]
    Encoding(u16),
    #[error(
        "{bits}-bit {encoding} samples are not read (integer PCM: 8, 16, 24 or 32 bits; float: 32)"
    )]
    Bits { encoding: &'static str, bits: u16 },
    #[error("it has {0} channels: 1 to 8 are read")]
    Channels(u16),
}

/// A decoded WAV, mixed down to mono.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub sample_rate: u32,
    /// The file's channel count before mixing.
    pub channels: u16,
    /// Mono samples, nominally in -1..1 (float files may exceed it; non-finite values are
    /// kept for the caller to refuse).
    pub samples: Vec<f32>,
}

const FORMAT_PCM: u16 = 1;
const FORMAT_FLOAT: u16 = 3;
const FORMAT_EXTENSIBLE: u16 = 0xFFFE;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a RIFF/WAVE file: the `fmt ` chunk, then the `data` chunk, skipping any other
/// chunk. A data length past the end of the bytes (as in [`streaming_header`], or a file cut
/// short) is read to the end; a trailing partial sample frame is dropped. Channels are
/// averaged into one.
pub fn decode(bytes: &[u8]) -> Result<Decoded, WavError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError::NotWav);
    }
    let mut at = 12usize;
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = le32(bytes, at + 4);
        let body = at + 8;
        let end = body.saturating_add(size as usize).min(bytes.len());
        if id == b"fmt " {
            if size < 16 || end - body < 16 {
                return Err(WavError::ShortFormat(size));
            }
            let f = &bytes[body..end];
            let mut tag = le16(f, 0);
            // WAVE_FORMAT_EXTENSIBLE: the real format is the first two bytes of the
            // sub-format GUID, 24 bytes into the chunk.
            if tag == FORMAT_EXTENSIBLE && f.len() >= 26 {
                tag = le16(f, 24);
            }
            format = Some((tag, le16(f, 2), le32(f, 4), le16(f, 14)));
        } else if id == b"data" {
            let Some((tag, channels, sample_rate, bits)) = format else {
                return Err(WavError::NoData);
            };
            return samples(&bytes[body..end], tag, channels, sample_rate, bits);
        }
        // Chunks are padded to an even length.
        at = body
            .saturating_add(size as usize)
            .saturating_add(size as usize & 1);
    }
    Err(WavError::NoData)
}

fn samples(
    data: &[u8],
    tag: u16,
    channels: u16,
    sample_rate: u32,
    bits: u16,
) -> Result<Decoded, WavError> {
    if !(1..=8).contains(&channels) {
        return Err(WavError::Channels(channels));
    }
    let read: fn(&[u8]) -> f32 = match (tag, bits) {
        (FORMAT_PCM, 8) => |b| (f32::from(b[0]) - 128.0) / 128.0,
        (FORMAT_PCM, 16) => |b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0,
        (FORMAT_PCM, 24) => {
            |b| (i32::from_le_bytes([0, b[0], b[1], b[2]]) >> 8) as f32 / 8_388_608.0
        }
        (FORMAT_PCM, 32) => {
            |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32 / 2_147_483_648.0
        }
        (FORMAT_FLOAT, 32) => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        (FORMAT_PCM, bits) => {
            return Err(WavError::Bits {
                encoding: "integer PCM",
                bits,
            });
        }
        (FORMAT_FLOAT, bits) => {
            return Err(WavError::Bits {
                encoding: "float",
                bits,
            });
        }
        (tag, _) => return Err(WavError::Encoding(tag)),
    };
    let width = usize::from(bits / 8);
    let frame = width * usize::from(channels);
    let scale = 1.0 / f32::from(channels);
    let samples = data
        .chunks_exact(frame)
        .map(|f| f.chunks_exact(width).map(read).sum::<f32>() * scale)
        .collect();
    Ok(Decoded {
        sample_rate,
        channels,
        samples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn header_parses_back() {
        let samples = [0i16, 1, -1, i16::MAX, i16::MIN];
        let wav = encode(&samples, 22050, 1);
        assert_eq!(wav.len(), HEADER_LEN + 10);
        assert_eq!(&wav[0..4], b"RIFF");
        assert_eq!(u32_at(&wav, 4) as usize, wav.len() - 8);
        assert_eq!(&wav[8..16], b"WAVEfmt ");
        assert_eq!(u32_at(&wav, 16), 16);
        assert_eq!(u16_at(&wav, 20), 1);
        assert_eq!(u16_at(&wav, 22), 1);
        assert_eq!(u32_at(&wav, 24), 22050);
        assert_eq!(u32_at(&wav, 28), 44100);
        assert_eq!(u16_at(&wav, 32), 2);
        assert_eq!(u16_at(&wav, 34), 16);
        assert_eq!(&wav[36..40], b"data");
        assert_eq!(u32_at(&wav, 40), 10);
        let back: Vec<i16> = wav[44..]
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(back, samples);
    }

    #[test]
    fn empty_and_stereo() {
        let wav = encode(&[], 16000, 2);
        assert_eq!(wav.len(), HEADER_LEN);
        assert_eq!(u32_at(&wav, 4), 36);
        assert_eq!(u32_at(&wav, 28), 64000);
        assert_eq!(u16_at(&wav, 32), 4);
    }

    #[test]
    fn decode_reads_back_what_encode_writes_and_the_streaming_header() {
        let samples = [0i16, 16384, -16384, i16::MAX, i16::MIN];
        let decoded = decode(&encode(&samples, 22050, 1)).unwrap();
        assert_eq!(decoded.sample_rate, 22050);
        assert_eq!(decoded.channels, 1);
        let expected: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
        assert_eq!(decoded.samples, expected);
        // Synthesize's WAV output: a streaming header, then PCM until the end.
        let mut streamed = streaming_header(16000);
        streamed.extend_from_slice(&pcm_s16le(&samples));
        let decoded = decode(&streamed).unwrap();
        assert_eq!(decoded.sample_rate, 16000);
        assert_eq!(decoded.samples, expected);
    }

    #[test]
    fn decode_mixes_channels_and_skips_other_chunks() {
        // Stereo: left 0.5, right -0.5 mixes to 0; left 0.5, right 0.5 stays 0.5.
        let mut wav = encode(&[16384, -16384, 16384, 16384], 8000, 2);
        // A LIST chunk (odd size, padded) between fmt and data.
        let mut list = b"LIST".to_vec();
        list.extend_from_slice(&3u32.to_le_bytes());
        list.extend_from_slice(b"abc\0");
        let data = wav.split_off(36);
        wav.extend_from_slice(&list);
        wav.extend_from_slice(&data);
        let decoded = decode(&wav).unwrap();
        assert_eq!(decoded.channels, 2);
        assert_eq!(decoded.samples, vec![0.0, 0.5]);
    }

    #[test]
    fn decode_reads_float_and_refuses_what_it_cannot_read() {
        let mut wav = encode(&[0, 0], 48000, 1);
        wav[20..22].copy_from_slice(&3u16.to_le_bytes()); // float
        wav[34..36].copy_from_slice(&32u16.to_le_bytes());
        wav[40..44].copy_from_slice(&4u32.to_le_bytes());
        wav.truncate(44);
        wav.extend_from_slice(&0.25f32.to_le_bytes());
        assert_eq!(decode(&wav).unwrap().samples, vec![0.25]);

        assert_eq!(decode(b"not a wav file at all"), Err(WavError::NotWav));
        let mut alaw = encode(&[0], 8000, 1);
        alaw[20..22].copy_from_slice(&6u16.to_le_bytes());
        assert_eq!(decode(&alaw), Err(WavError::Encoding(6)));
        let mut twelve = encode(&[0], 8000, 1);
        twelve[34..36].copy_from_slice(&12u16.to_le_bytes());
        assert!(matches!(
            decode(&twelve),
            Err(WavError::Bits { bits: 12, .. })
        ));
        let header_only = &encode(&[], 8000, 1)[..36];
        assert_eq!(decode(header_only), Err(WavError::NoData));
    }
}
