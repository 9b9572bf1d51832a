//! PCM s16le to WAV: the canonical 44-byte RIFF header (format 1, PCM) and the samples.

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
}
