//! Decoded video as a pipeline hands it on: what both pipelines produce and what the muxer
//! and the frames-only output read.
//!
//! It sits below both sides so that neither the muxer nor the job's output has to depend on
//! the pipelines that make it.

/// Decoded video: `count` frames of `height` rows of `width` RGB pixels, one byte per
/// channel, frame after frame (what ffmpeg reads as `rawvideo rgb24`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frames {
    pub width: u32,
    pub height: u32,
    pub count: u32,
    pub rgb: Vec<u8>,
}

impl Frames {
    /// Bytes in one frame.
    pub fn frame_len(&self) -> usize {
        self.width as usize * self.height as usize * 3
    }
}
