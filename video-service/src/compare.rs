//! `arbiter-video compare-encoders`: text encoders loaded and run one after the other on
//! the same prompts, each measured (stored bytes, load time, forward time, memory) and its
//! output compared with the first one's: how much a quantized encoder saves, and how far
//! its embeddings move, on the same (random) weights.
//!
//! Each encoder is a pipeline directory (its manifest's text encoder) or a directory that
//! `make-pipeline --only text_encoder` wrote (its `components.toml`). On a GPU the host to
//! device copy rate from pinned memory is measured in the same process first, since loads
//! are only meaningful as a ratio to it. With random weights the error says how faithfully
//! the format reproduces the bf16 encoder's arithmetic, nothing about the quality of a real
//! model's embeddings.

use std::path::{Path, PathBuf};
use std::time::Instant;

use arbiter::pipeline::{Component, MANIFEST_FILE, Manifest, Placement, Role};
use arbiter_torch::LoadOptions;
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::make::{COMPONENTS_FILE, Partial};
use crate::pipeline::component::{ComponentError, Live, device_index};
use crate::pipeline::tokens;

/// Why an encoder could not be compared.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error("{dir}: {message}")]
    Directory { dir: PathBuf, message: String },
    #[error(transparent)]
    Component(#[from] ComponentError),
    #[error("{what}: {source}")]
    Torch {
        what: &'static str,
        source: tch::TchError,
    },
    #[error(
        "{dir}: its output is {got:?}, the reference's {expected:?}: compare encoders of one pipeline's shape"
    )]
    Shape {
        dir: PathBuf,
        got: Vec<i64>,
        expected: Vec<i64>,
    },
}

fn torch(what: &'static str) -> impl Fn(tch::TchError) -> CompareError {
    move |source| CompareError::Torch { what, source }
}

/// A text encoder on disk: its directory, component name, manifest entry and prompt length.
#[derive(Clone, Debug)]
pub struct Encoder {
    pub dir: PathBuf,
    pub name: String,
    pub spec: Component,
    pub text_tokens: u32,
}

impl Encoder {
    /// The text encoder of the pipeline (or `--only` components) in `dir`.
    pub fn find(dir: &Path) -> Result<Encoder, CompareError> {
        let bad = |message: String| CompareError::Directory {
            dir: dir.to_path_buf(),
            message,
        };
        let (components, text_tokens) = if dir.join(MANIFEST_FILE).is_file() {
            let manifest = Manifest::load(dir).map_err(|e| bad(e.to_string()))?;
            let tokens = manifest.model.as_ref().map_or(0, |m| m.text_tokens);
            (manifest.components, tokens)
        } else {
            let partial = Partial::load(dir).map_err(|e| {
                bad(format!(
                    "no {MANIFEST_FILE}, and no {COMPONENTS_FILE} either ({e})"
                ))
            })?;
            (partial.components, partial.text_tokens)
        };
        let mut encoders = components
            .into_iter()
            .filter(|(_, c)| c.role == Role::TextEncoder);
        let Some((name, spec)) = encoders.next() else {
            return Err(bad("it has no text encoder".into()));
        };
        if encoders.next().is_some() {
            return Err(bad("it has more than one text encoder".into()));
        }
        if text_tokens == 0 {
            return Err(bad("its prompt length (model.text_tokens) is 0".into()));
        }
        Ok(Encoder {
            dir: dir.to_path_buf(),
            name,
            spec,
            text_tokens,
        })
    }

    /// The weights file's size on disk.
    pub fn file_bytes(&self) -> u64 {
        std::fs::metadata(self.dir.join(&self.spec.weights)).map_or(0, |m| m.len())
    }
}

/// What one encoder did.
#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    pub dir: PathBuf,
    pub component: String,
    pub dtype: String,
    pub placement: String,
    /// The weights file, header included.
    pub file_bytes: u64,
    /// What was loaded (the data section).
    pub load_bytes: u64,
    pub load_s: f64,
    pub load_gb_per_s: f64,
    /// What the component holds on the device once loaded.
    pub device_bytes: u64,
    /// The first forward: a fresh process pays for its kernels and cuBLAS here.
    pub first_call_ms: f64,
    /// The later forwards, each synchronized.
    pub forward_ms: Vec<f64>,
    pub forward_ms_median: f64,
    /// The caching allocator's peak during the forwards, above what was allocated before
    /// them (0 on the CPU).
    pub forward_peak_bytes: u64,
    /// Against the reference (the first encoder); `None` for the reference itself.
    pub error: Option<Error>,
}

/// How far an output is from the reference's.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Error {
    pub max_abs: f64,
    /// `||out - reference|| / ||reference||`.
    pub relative: f64,
    /// The lowest cosine similarity between a token's embedding and the reference's.
    pub min_cosine: f64,
    /// The reference's largest magnitude, for scale.
    pub reference_max_abs: f64,
}

/// `out` against `reference` (same shape, `[..., D]`).
pub fn error(out: &Tensor, reference: &Tensor) -> Result<Error, CompareError> {
    let (out, reference) = (
        out.f_to_kind(Kind::Double).map_err(torch("error"))?,
        reference.f_to_kind(Kind::Double).map_err(torch("error"))?,
    );
    let diff = (&out - &reference).abs();
    let scalar = |t: Tensor| f64::try_from(t).map_err(torch("error"));
    let cosine =
        Tensor::f_cosine_similarity(&out, &reference, -1, 1e-12).map_err(torch("cosine"))?;
    Ok(Error {
        max_abs: scalar(diff.max())?,
        relative: scalar((&out - &reference).norm())? / scalar(reference.norm())?.max(1e-300),
        min_cosine: scalar(cosine.min())?,
        reference_max_abs: scalar(reference.abs().max())?,
    })
}

/// What a run of one encoder leaves: its measurements (without the error) and its output
/// on the CPU, in float32.
pub struct Run {
    pub measured: Measured,
    pub output: Tensor,
}

/// Loads `encoder` onto `device` with `placement`, runs it on `prompts` once plus
/// `repeat` timed times, and frees it.
pub fn run(
    encoder: &Encoder,
    prompts: &[&str],
    device: Device,
    placement: Placement,
    repeat: usize,
    options: &LoadOptions,
) -> Result<Run, CompareError> {
    let mut live = Live::load(
        &encoder.dir,
        &encoder.name,
        &encoder.spec,
        placement,
        device,
        options,
        None,
    )?;
    let ids = tokens::tokenize(prompts, encoder.text_tokens, device);
    let before = cuda_stats(device).map_or(0, |s| s.allocated);
    if device.is_cuda() {
        let _ = arbiter_torch::allocator::reset_peak(device_index(device) as i32);
    }
    let output = live.call(&[&ids])?;
    let first_call_ms = live.take_first_call_ms().unwrap_or(0.0);
    let mut forward_ms = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        synchronize(device);
        let started = Instant::now();
        let _ = live.call(&[&ids])?;
        synchronize(device);
        forward_ms.push(crate::metadata::ms(started.elapsed()));
    }
    let forward_peak_bytes =
        cuda_stats(device).map_or(0, |s| s.max_allocated.saturating_sub(before));
    let output = output.f_to_device(Device::Cpu).map_err(torch("output"))?;
    let mut sorted = forward_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let measured = Measured {
        dir: encoder.dir.clone(),
        component: encoder.name.clone(),
        dtype: encoder.spec.dtype.name().into(),
        placement: live.placement.name().into(),
        file_bytes: encoder.file_bytes(),
        load_bytes: live.load.bytes,
        load_s: live.load.seconds,
        load_gb_per_s: live.load.gb_per_s(),
        device_bytes: live.device_bytes,
        first_call_ms,
        forward_ms_median: sorted
            .get(sorted.len() / 2)
            .copied()
            .unwrap_or(first_call_ms),
        forward_ms,
        forward_peak_bytes,
        error: None,
    };
    drop(live);
    if device.is_cuda() {
        let _ = arbiter_torch::allocator::empty_cache();
    }
    Ok(Run { measured, output })
}

/// Every encoder in order, each compared with the first.
pub fn compare(
    encoders: &[Encoder],
    prompts: &[&str],
    device: Device,
    placement: Placement,
    repeat: usize,
    options: &LoadOptions,
) -> Result<Vec<Measured>, CompareError> {
    let mut reference: Option<Tensor> = None;
    let mut all = Vec::with_capacity(encoders.len());
    for encoder in encoders {
        let Run {
            mut measured,
            output,
        } = run(encoder, prompts, device, placement, repeat, options)?;
        match &reference {
            None => reference = Some(output),
            Some(reference) => {
                if output.size() != reference.size() {
                    return Err(CompareError::Shape {
                        dir: encoder.dir.clone(),
                        got: output.size(),
                        expected: reference.size(),
                    });
                }
                measured.error = Some(error(&output, reference)?);
            }
        }
        all.push(measured);
    }
    Ok(all)
}

fn cuda_stats(device: Device) -> Option<arbiter_torch::allocator::MemoryStats> {
    device
        .is_cuda()
        .then(|| arbiter_torch::allocator::stats(device_index(device) as i32).ok())
        .flatten()
}

fn synchronize(device: Device) {
    if device.is_cuda() {
        tch::Cuda::synchronize(device_index(device));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_of_an_output_is_zero_against_itself_and_scales_with_its_difference() {
        let reference = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let same = error(&reference, &reference).unwrap();
        assert_eq!((same.max_abs, same.relative), (0.0, 0.0));
        assert!((same.min_cosine - 1.0).abs() < 1e-12);
        let moved = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 2.5]).view([2, 2]);
        let e = error(&moved, &reference).unwrap();
        assert!((e.max_abs - 0.5).abs() < 1e-12);
        assert!((e.relative - 0.5 / 5f64.sqrt()).abs() < 1e-12);
        assert_eq!(e.reference_max_abs, 2.0);
    }

    #[test]
    fn a_directory_without_an_encoder_says_what_it_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let error = Encoder::find(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("no manifest.toml, and no components.toml either"),
            "{error}"
        );
        std::fs::write(
            dir.path().join(COMPONENTS_FILE),
            "name = \"p\"\ndescription = \"\"\ntext_tokens = 8\n[components]\n",
        )
        .unwrap();
        let error = Encoder::find(dir.path()).unwrap_err().to_string();
        assert!(error.contains("it has no text encoder"), "{error}");
    }
}
