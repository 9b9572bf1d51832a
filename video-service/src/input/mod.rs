//! The request's audio and reference image, normalized to exactly what the model takes.
//!
//! A pipeline's model is traced for one shape: stereo audio at its own sample rate, exactly
//! as many samples as the frames it is asked for imply, and an image of exactly the requested
//! width and height. Users send whatever they have: a mono 44.1 kHz MP3 a little too short, a
//! phone's portrait JPEG. Everything that bridges the two (decoding, channel conversion,
//! resampling, padding or trimming, scaling and cropping) happens here, on the CPU, before
//! the worker asks for GPU memory, so that:
//! - every rule violation is a clear error naming the file and what to change, reported
//!   before the GPU is touched and before a lease is spent on a job that cannot run;
//! - the model code never sees a shape it was not built for;
//! - what was done to the inputs (padding, trimming, the source's format and size) is
//!   recorded, so that `metadata.json` can say why the video's sound ends in silence.
//!
//! - [`audio`]: any WAV, FLAC, MP3 or OGG Vorbis file to interleaved `f32` samples of the
//!   model's rate and channel count, and the exact duration;
//! - [`image`]: any PNG, JPEG, WebP or BMP file to RGB8 of the exact size, scaled to cover
//!   and center-cropped.

pub mod audio;
pub mod image;
