//! The request's reference image, decoded and made exactly the size the model takes.
//!
//! The format is recognised by content (the extension is only a fallback), the pixels
//! become RGB8 (alpha is dropped: the model has no use for it), and the image is scaled to
//! cover the requested size, keeping its aspect ratio, and center-cropped to it: a face in
//! the middle of a landscape photo stays in the middle and is never squashed. Upscaling is
//! allowed; a small image makes a soft video, not a failed job.
//!
//! Two guards come before the pixels are decoded, from the header alone: an image over
//! [`MAX_PIXELS`] is refused (a 20000 x 20000 PNG is a few kilobytes on disk and over a
//! gigabyte in memory), and so is a requested size of zero or over the same bound. The
//! EXIF orientation of a photo is applied, so that a phone's portrait shot is not turned on
//! its side.

use std::io;
use std::path::{Path, PathBuf};

use ::image::imageops::{self, FilterType};
use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

/// The most pixels an input image, or the requested size, may have: 100 megapixels.
pub const MAX_PIXELS: u64 = 100_000_000;

/// The most a decoder may allocate: 100 megapixels of 16-bit RGBA, and some.
const MAX_ALLOC: u64 = 1 << 30;

/// An image ready for the model: exactly the requested size.
#[derive(Clone, Debug)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    /// RGB, row after row, 3 bytes a pixel
    pub rgb: Vec<u8>,
    pub source: ImageSource,
}

/// What the file was, for `metadata.json`: its format and its size (after its EXIF
/// orientation is applied).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImageSource {
    pub format: String,
    pub width: u32,
    pub height: u32,
}

/// Why the image cannot be used. Each message names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {}: no such file; check the path in the request", .path.display())]
    NotFound { path: PathBuf },
    #[error("image {}: cannot read it: {source}", .path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error(
        "image {}: format not recognised; arbiter-video reads PNG, JPEG, WebP and BMP",
        .path.display()
    )]
    NotRecognised { path: PathBuf },
    #[error(
        "image {}: {format} is not supported; arbiter-video reads PNG, JPEG, WebP and BMP: convert it first, e.g. `ffmpeg -i {} image.png`",
        .path.display(), .path.display()
    )]
    Unsupported { path: PathBuf, format: String },
    #[error(
        "image {}: cannot decode it ({source}); the file may be truncated or damaged: re-export it",
        .path.display()
    )]
    Decode {
        path: PathBuf,
        source: ::image::ImageError,
    },
    #[error("image {}: it has no pixels ({width} x {height})", .path.display())]
    Empty {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error(
        "image {}: {width} x {height} is over arbiter-video's limit of 100 megapixels; scale it down first",
        .path.display()
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error(
        "the requested image size {width} x {height} is invalid: each side must be at least 1 pixel and the area at most 100 megapixels"
    )]
    Target { width: u32, height: u32 },
}

/// Loads `path` as RGB8 of exactly `width` x `height`: scaled to cover, center-cropped.
pub fn load_image(path: &Path, width: u32, height: u32) -> Result<Image, ImageError> {
    if width == 0 || height == 0 || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(ImageError::Target { width, height });
    }
    let reader = ImageReader::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => ImageError::NotFound {
            path: path.to_owned(),
        },
        _ => ImageError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })?;
    let mut reader = reader
        .with_guessed_format()
        .map_err(|source| ImageError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
    let format = reader.format().ok_or_else(|| ImageError::NotRecognised {
        path: path.to_owned(),
    })?;
    if !format.reading_enabled() {
        return Err(ImageError::Unsupported {
            path: path.to_owned(),
            format: format_name(format),
        });
    }
    let decode_error = |source| ImageError::Decode {
        path: path.to_owned(),
        source,
    };

    // The header alone: no limit yet, so that a huge image is refused below by its size,
    // with its dimensions in the message, rather than by a decoder's allocation check.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (stored_width, stored_height) = decoder.dimensions();
    if u64::from(stored_width) * u64::from(stored_height) > MAX_PIXELS {
        return Err(ImageError::TooLarge {
            path: path.to_owned(),
            width: stored_width,
            height: stored_height,
        });
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(stored_width);
    limits.max_image_height = Some(stored_height);
    limits.max_alloc = Some(MAX_ALLOC);
    decoder.set_limits(limits).map_err(decode_error)?;
    // Unreadable EXIF is no reason to refuse the pixels: they are used as stored.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut decoded = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    decoded.apply_orientation(orientation);

    let rgb = decoded.into_rgb8();
    let (source_width, source_height) = rgb.dimensions();
    if source_width == 0 || source_height == 0 {
        return Err(ImageError::Empty {
            path: path.to_owned(),
            width: source_width,
            height: source_height,
        });
    }
    let fitted = cover(rgb, width, height);
    Ok(Image {
        width,
        height,
        rgb: fitted.into_raw(),
        source: ImageSource {
            format: format_name(format),
            width: source_width,
            height: source_height,
        },
    })
}

/// Scales `source` to cover `width` x `height`, keeping its aspect ratio, and cuts what
/// overflows evenly from both sides. The source is cropped to the target's aspect ratio
/// first and then scaled, which gives the same picture without ever building a scaled copy
/// larger than the target (a very wide image would otherwise make a huge one).
fn cover(source: RgbImage, width: u32, height: u32) -> RgbImage {
    let (source_width, source_height) = source.dimensions();
    if (source_width, source_height) == (width, height) {
        return source;
    }
    let (sw, sh) = (u64::from(source_width), u64::from(source_height));
    let (w, h) = (u64::from(width), u64::from(height));
    // Both results are at most the source's side, so they fit in a u32.
    let (crop_width, crop_height) = if sw * h > w * sh {
        // Wider than the target: keep the full height.
        ((((sh * w + h / 2) / h).clamp(1, sw)) as u32, source_height)
    } else {
        (source_width, (((sw * h + w / 2) / w).clamp(1, sh)) as u32)
    };
    let region = imageops::crop_imm(
        &source,
        (source_width - crop_width) / 2,
        (source_height - crop_height) / 2,
        crop_width,
        crop_height,
    )
    .to_image();
    if (crop_width, crop_height) == (width, height) {
        return region;
    }
    imageops::resize(&region, width, height, FilterType::Lanczos3)
}

/// The format's usual short name: "png", "jpeg", "webp", "bmp".
fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Png => "png".to_owned(),
        ImageFormat::Jpeg => "jpeg".to_owned(),
        ImageFormat::WebP => "webp".to_owned(),
        ImageFormat::Bmp => "bmp".to_owned(),
        other => other
            .extensions_str()
            .first()
            .map_or_else(|| format!("{other:?}").to_lowercase(), |e| (*e).to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use ::image::{Rgb, Rgba, RgbaImage};

    use super::*;

    const RED: Rgb<u8> = Rgb([220, 20, 30]);
    const GREEN: Rgb<u8> = Rgb([20, 200, 40]);
    const BLUE: Rgb<u8> = Rgb([30, 40, 210]);

    /// Three bands, red, green and blue, along the image's longer side.
    fn bands(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            let (position, length) = if width >= height {
                (x, width)
            } else {
                (y, height)
            };
            match position * 3 / length {
                0 => RED,
                1 => GREEN,
                _ => BLUE,
            }
        })
    }

    fn pixel(image: &Image, x: u32, y: u32) -> [u8; 3] {
        let at = ((y * image.width + x) * 3) as usize;
        [image.rgb[at], image.rgb[at + 1], image.rgb[at + 2]]
    }

    fn assert_close(actual: [u8; 3], expected: Rgb<u8>, tolerance: u8) {
        let near = actual
            .iter()
            .zip(expected.0)
            .all(|(&a, e)| a.abs_diff(e) <= tolerance);
        assert!(near, "{actual:?} is not close to {:?}", expected.0);
    }

    #[test]
    fn wide_png_is_scaled_and_cropped_from_the_center() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        bands(300, 100).save(&path).unwrap();

        let image = load_image(&path, 64, 64).unwrap();

        assert_eq!((image.width, image.height), (64, 64));
        assert_eq!(image.rgb.len(), 64 * 64 * 3);
        // The middle third is exactly the square at the center: all of it is green.
        assert_close(pixel(&image, 32, 32), GREEN, 1);
        for y in 0..64 {
            for x in 0..64 {
                assert_close(pixel(&image, x, y), GREEN, 2);
            }
        }
        assert_eq!(image.source.format, "png");
        assert_eq!((image.source.width, image.source.height), (300, 100));
    }

    #[test]
    fn tall_image_is_cropped_vertically_to_a_non_square_target() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tall.png");
        bands(100, 300).save(&path).unwrap();

        // 100 x 300 to 1:2 keeps the middle 100 x 200 rows 50..250: red, green, blue 1:2:1.
        let image = load_image(&path, 50, 100).unwrap();

        assert_eq!((image.width, image.height), (50, 100));
        assert_eq!(image.rgb.len(), 50 * 100 * 3);
        assert_close(pixel(&image, 25, 10), RED, 4);
        assert_close(pixel(&image, 25, 50), GREEN, 4);
        assert_close(pixel(&image, 25, 90), BLUE, 4);
    }

    #[test]
    fn small_image_with_alpha_is_upscaled_and_alpha_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.png");
        RgbaImage::from_pixel(10, 20, Rgba([10, 120, 230, 40]))
            .save(&path)
            .unwrap();

        let image = load_image(&path, 40, 30).unwrap();

        assert_eq!((image.width, image.height), (40, 30));
        assert_eq!(image.rgb.len(), 40 * 30 * 3);
        for y in 0..30 {
            for x in 0..40 {
                assert_close(pixel(&image, x, y), Rgb([10, 120, 230]), 1);
            }
        }
    }

    #[test]
    fn jpeg_webp_and_bmp_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let original = RgbImage::from_pixel(80, 60, Rgb([200, 100, 50]));
        for (name, format) in [
            ("photo.jpg", "jpeg"),
            ("photo.webp", "webp"),
            ("photo.bmp", "bmp"),
        ] {
            let path = dir.path().join(name);
            original.save(&path).unwrap();

            let image = load_image(&path, 32, 32).unwrap();

            assert_eq!(image.source.format, format);
            assert_eq!((image.source.width, image.source.height), (80, 60));
            assert_eq!((image.width, image.height), (32, 32));
            assert_close(pixel(&image, 16, 16), Rgb([200, 100, 50]), 6);
        }
    }

    #[test]
    fn format_is_found_by_content_not_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("really-a-png.jpg");
        bands(30, 10)
            .save_with_format(&path, ImageFormat::Png)
            .unwrap();

        let image = load_image(&path, 3, 3).unwrap();

        assert_eq!(image.source.format, "png");
    }

    #[test]
    fn truncated_png_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.png");
        bands(300, 100).save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

        let error = load_image(&path, 64, 64).unwrap_err();

        assert!(matches!(error, ImageError::Decode { .. }), "{error:?}");
        assert!(error.to_string().contains("broken.png"));
    }

    #[test]
    fn text_named_png_is_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.png");
        std::fs::write(&path, "not an image at all\n").unwrap();

        let error = load_image(&path, 64, 64).unwrap_err();

        assert!(matches!(error, ImageError::Decode { .. }), "{error:?}");
    }

    #[test]
    fn unknown_content_is_not_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("face.dat");
        std::fs::write(&path, "not an image at all\n").unwrap();

        let error = load_image(&path, 64, 64).unwrap_err();

        assert!(
            matches!(error, ImageError::NotRecognised { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("PNG, JPEG, WebP and BMP"));
    }

    #[test]
    fn gif_is_unsupported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("face.gif");
        std::fs::write(&path, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;").unwrap();

        let error = load_image(&path, 64, 64).unwrap_err();

        assert!(
            matches!(&error, ImageError::Unsupported { format, .. } if format == "gif"),
            "{error:?}"
        );
    }

    #[test]
    fn missing_image_is_not_found() {
        let dir = tempfile::tempdir().unwrap();

        let error = load_image(&dir.path().join("nowhere.png"), 64, 64).unwrap_err();

        assert!(matches!(error, ImageError::NotFound { .. }), "{error:?}");
    }

    #[test]
    fn zero_or_huge_target_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wide.png");
        bands(30, 10).save(&path).unwrap();

        for (width, height) in [(0, 64), (64, 0), (0, 0), (20_000, 20_000)] {
            let error = load_image(&path, width, height).unwrap_err();
            assert!(matches!(error, ImageError::Target { .. }), "{error:?}");
        }
    }

    /// The CRC-32 of PNG chunks (ISO 3309), bit by bit: test data only.
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn huge_image_is_refused_from_its_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.png");
        bands(30, 10).save(&path).unwrap();
        // Claim 20000 x 20000 in the header (IHDR: width at 16, height at 20, CRC at 29).
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[12..16], b"IHDR");
        bytes[16..20].copy_from_slice(&20_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&20_000u32.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();

        let error = load_image(&path, 64, 64).unwrap_err();

        assert!(
            matches!(
                error,
                ImageError::TooLarge {
                    width: 20_000,
                    height: 20_000,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("100 megapixels"));
    }
}
