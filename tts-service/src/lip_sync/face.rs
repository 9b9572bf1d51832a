//! The face a client sends for mouth frames: PNG or JPEG bytes, checked against the
//! service's limits, cropped to its centre square and scaled to the model's face size, as
//! the model takes it (RGB, channels first, values in -1..1).
//!
//! Decoding is bounded before it starts: the byte size against the limit, the image's
//! dimensions against [`MAX_SIDE`] and its allocation against 4 bytes a pixel of that (the
//! decoder refuses more before allocating), and each decode runs under one of the service's
//! stream permits: a small file that claims to be a huge image costs at most one bounded
//! picture per permitted stream.

use std::io::Cursor;

use image::{ImageFormat, ImageReader, imageops};

/// The largest width or height decoded.
pub const MAX_SIDE: u32 = 8192;
/// The smallest width or height accepted: anything less is no face.
pub const MIN_SIDE: u32 = 16;

/// A face ready for the model: `size` × `size` pixels, channels first (R plane, G, B),
/// values in -1..1.
#[derive(Debug, Clone, PartialEq)]
pub struct Face {
    pub size: u32,
    pub pixels: Vec<f32>,
}

/// Why the face image is refused; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaceError {
    #[error("face_image is {bytes} bytes, over the limit of {limit}: send a smaller picture")]
    TooLarge { bytes: usize, limit: usize },
    #[error("face_image is not a PNG or JPEG file{0}")]
    Format(String),
    #[error("face_image cannot be decoded: {0}")]
    Decode(String),
    #[error("face_image is {width}x{height} pixels: give at least {MIN_SIDE} a side")]
    TooSmall { width: u32, height: u32 },
}

/// Decodes `bytes` (PNG or JPEG, at most `max_bytes`) into a `size` × `size` face.
pub fn decode(bytes: &[u8], size: u32, max_bytes: usize) -> Result<Face, FaceError> {
    if bytes.len() > max_bytes {
        return Err(FaceError::TooLarge {
            bytes: bytes.len(),
            limit: max_bytes,
        });
    }
    let format = match image::guess_format(bytes) {
        Ok(format @ (ImageFormat::Png | ImageFormat::Jpeg)) => format,
        Ok(other) => return Err(FaceError::Format(format!(" (it is {other:?})"))),
        Err(_) => return Err(FaceError::Format(String::new())),
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // The decoded picture at 4 bytes a pixel, at most: a small file cannot ask for more.
    limits.max_alloc = Some(4 * u64::from(MAX_SIDE) * u64::from(MAX_SIDE));
    reader.limits(limits);
    let picture = reader
        .decode()
        .map_err(|e| FaceError::Decode(e.to_string()))?
        .into_rgb8();
    let (width, height) = picture.dimensions();
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(FaceError::TooSmall { width, height });
    }
    let side = width.min(height);
    // Resized straight from a view of the centre square: no copy of the crop.
    let square = imageops::crop_imm(
        &picture,
        (width - side) / 2,
        (height - side) / 2,
        side,
        side,
    );
    let scaled = imageops::resize(&*square, size, size, imageops::FilterType::Triangle);
    let plane = (size * size) as usize;
    let mut pixels = vec![0f32; 3 * plane];
    for (i, pixel) in scaled.pixels().enumerate() {
        for (c, &value) in pixel.0.iter().enumerate() {
            pixels[c * plane + i] = f32::from(value) / 127.5 - 1.0;
        }
    }
    Ok(Face { size, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
        let picture = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
        let mut out = Cursor::new(Vec::new());
        picture.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn a_face_is_cropped_scaled_and_normalized() {
        let face = decode(&png(120, 80, [255, 0, 128]), 32, 1 << 20).unwrap();
        assert_eq!(face.size, 32);
        assert_eq!(face.pixels.len(), 3 * 32 * 32);
        let plane = 32 * 32;
        assert!(face.pixels[..plane].iter().all(|&v| (v - 1.0).abs() < 1e-6));
        assert!(
            face.pixels[plane..2 * plane]
                .iter()
                .all(|&v| (v + 1.0).abs() < 1e-6)
        );
        assert!(face.pixels[2 * plane..].iter().all(|&v| v.abs() < 0.01));
    }

    #[test]
    fn bad_faces_are_refused_naming_the_field() {
        for error in [
            decode(b"GIF89a not really", 32, 1 << 20).unwrap_err(),
            decode(&png(8, 64, [0, 0, 0]), 32, 1 << 20).unwrap_err(),
            decode(&png(64, 64, [0, 0, 0]), 32, 10).unwrap_err(),
            decode(&png(64, 64, [0, 0, 0])[..40], 32, 1 << 20).unwrap_err(),
        ] {
            assert!(error.to_string().contains("face_image"), "{error}");
        }
        assert!(matches!(
            decode(&png(8, 64, [0, 0, 0]), 32, 1 << 20),
            Err(FaceError::TooSmall { width: 8, .. })
        ));
    }
}
