//! The prompt as token ids, byte by byte.
//!
//! Real text encoders ship a tokenizer (SentencePiece for Gemma) with their weights; the
//! generated pipelines have none to ship, so their encoders read UTF-8 bytes: id 1 starts
//! the text, byte `b` is id `b + 2`, and 0 pads to the manifest's `text_tokens` (the
//! encoder masks padding out). A prompt longer than that is cut, and the cut is logged.

use tch::{Device, Kind, Tensor};

/// Token ids of the padding and the start of the text.
pub const PAD: i64 = 0;
pub const START: i64 = 1;
/// Ids an encoder of this scheme must know: padding, start, 256 bytes.
pub const VOCAB: i64 = 258;

/// `[prompts.len(), length]` int64 ids.
pub fn tokenize(prompts: &[&str], length: u32, device: Device) -> Tensor {
    let length = length.max(1) as usize;
    let mut ids = vec![PAD; prompts.len() * length];
    for (row, prompt) in prompts.iter().enumerate() {
        let out = &mut ids[row * length..(row + 1) * length];
        out[0] = START;
        let bytes = prompt.as_bytes();
        if bytes.len() + 1 > length {
            tracing::warn!(
                tokens = length,
                bytes = bytes.len(),
                "the prompt is longer than the text encoder takes; its end is ignored"
            );
        }
        for (slot, &byte) in out[1..].iter_mut().zip(bytes) {
            *slot = i64::from(byte) + 2;
        }
    }
    Tensor::from_slice(&ids)
        .view([prompts.len() as i64, length as i64])
        .to_kind(Kind::Int64)
        .to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_bytes_after_a_start_and_padded_or_cut() {
        let ids = tokenize(&["ab", "abcdef"], 4, Device::Cpu);
        assert_eq!(ids.size(), [2, 4]);
        let rows: Vec<i64> = Vec::try_from(ids.flatten(0, 1)).unwrap();
        assert_eq!(rows, [1, 99, 100, 0, 1, 99, 100, 101]);
    }
}
