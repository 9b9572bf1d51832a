//! Mouth frames on the wire: each frame the model renders, encoded as the request asks
//! (PNG by default, or raw RGB for a renderer that composites frames itself).

use std::io::Cursor;

/// How a frame is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameFormat {
    /// An 8-bit RGB PNG file.
    Png,
    /// Raw 8-bit RGB, rows top to bottom: `width * height * 3` bytes.
    Rgb24,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {bytes} bytes is not {size}x{size} RGB")]
    Size { bytes: usize, size: u32 },
    #[error("cannot encode a frame as PNG: {0}")]
    Png(#[from] image::ImageError),
}

/// Encodes one `size` × `size` RGB frame.
pub fn encode(rgb: Vec<u8>, size: u32, format: FrameFormat) -> Result<Vec<u8>, FrameError> {
    let bytes = rgb.len();
    match format {
        FrameFormat::Rgb24 if bytes == (size * size * 3) as usize => Ok(rgb),
        FrameFormat::Rgb24 => Err(FrameError::Size { bytes, size }),
        FrameFormat::Png => {
            let picture = image::RgbImage::from_raw(size, size, rgb)
                .ok_or(FrameError::Size { bytes, size })?;
            let mut out = Cursor::new(Vec::with_capacity(bytes / 2));
            picture.write_to(&mut out, image::ImageFormat::Png)?;
            Ok(out.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_decodes_back_to_the_pixels() {
        let rgb: Vec<u8> = (0..4 * 4 * 3).map(|i| (i * 5) as u8).collect();
        let png = encode(rgb.clone(), 4, FrameFormat::Png).unwrap();
        let back = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(back.dimensions(), (4, 4));
        assert_eq!(back.into_raw(), rgb);
        assert_eq!(encode(rgb.clone(), 4, FrameFormat::Rgb24).unwrap(), rgb);
        assert!(encode(rgb, 5, FrameFormat::Rgb24).is_err());
    }
}
