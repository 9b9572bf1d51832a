//! Quantized text encoders on the CPU, with the generated `tiny` pipeline three times over:
//! its text encoder in bf16 (the reference), in NF4 (`tiny-nf4`) and in fp8 e4m3
//! (`tiny-fp8`), all drawn from the same seed. The generator's files are what the reference
//! quantizer in `pipeline::quant` makes of the bf16 weights, the generated code dequantizes
//! exactly as the reference does, the files are as small as the presets count, the error of
//! the encoder's output against bf16 is within its bound, the pipeline runs under every
//! placement, and a file quantized otherwise than its manifest says is refused.
//!
//! THE WEIGHTS ARE RANDOM: the errors measured here say how closely each format reproduces
//! the bf16 encoder's arithmetic, nothing about the quality of a real model's embeddings.
//!
//! Needs Python with PyTorch on PATH, as `make-pipeline` does (`source scripts/env.sh`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbiter::pipeline::{Dtype, Manifest, Placement, Placements};
use arbiter_torch::LoadOptions;
use arbiter_video::compare::{self, Encoder};
use arbiter_video::make::preset::{Preset, plan};
use arbiter_video::pipeline::component::{ComponentError, Live};
use arbiter_video::pipeline::quant::{Fp8, NF4_CODE, Nf4};
use arbiter_video::pipeline::staged::{self, Request, Settings};
use arbiter_video::progress::{Progress, Stage, Stop};
use tch::{Device, Kind, Tensor};

/// The three pipelines, generated once per test binary: bf16, nf4, fp8.
struct Fixture {
    bf16: PathBuf,
    nf4: PathBuf,
    fp8: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("arbiter-quantized-{}", std::process::id()));
        let make = |preset: &str, name: &str, extra: &[&str]| {
            let dir = root.join(name);
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter-video"))
                .args([
                    "make-pipeline",
                    "--preset",
                    preset,
                    "--device",
                    "cpu",
                    "--name",
                    name,
                ])
                .args(extra)
                .arg("--out")
                .arg(&dir)
                .status()
                .expect("run arbiter-video make-pipeline");
            assert!(
                status.success(),
                "make-pipeline failed: is PyTorch on PATH (source scripts/env.sh)?"
            );
            dir
        };
        Fixture {
            bf16: make("tiny", "tiny-bf16", &["--text-encoder-dtype", "bf16"]),
            nf4: make("tiny-nf4", "tiny-nf4", &[]),
            fp8: make("tiny-fp8", "tiny-fp8", &[]),
        }
    })
}

fn weights(dir: &Path) -> PathBuf {
    dir.join("text_encoder.safetensors")
}

/// A weights file's tensors, on the CPU.
fn tensors(path: &Path) -> HashMap<String, Tensor> {
    arbiter_torch::load(path, Device::Cpu, &LoadOptions::default())
        .expect("the weights load")
        .tensors
        .into_iter()
        .collect()
}

fn floats(t: &Tensor) -> Vec<f32> {
    Vec::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()
}

fn bytes(t: &Tensor) -> Vec<u8> {
    let t = if t.kind() == Kind::Float8e4m3fn {
        t.view_dtype(Kind::Uint8)
    } else {
        t.shallow_clone()
    };
    Vec::try_from(t.flatten(0, -1)).unwrap()
}

/// The bf16 encoder's block matrices: `(name, rows, cols)`, what the quantized ones store
/// quantized.
fn matrices(reference: &HashMap<String, Tensor>) -> Vec<(String, i64, i64)> {
    let mut found: Vec<_> = reference
        .iter()
        .filter(|(name, t)| name.starts_with("blocks.") && t.dim() == 2)
        .map(|(name, t)| (name.clone(), t.size()[0], t.size()[1]))
        .collect();
    found.sort();
    found
}

fn relative(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn the_generator_quantizes_the_bf16_weights_as_the_reference_does() {
    let f = fixture();
    let reference = tensors(&weights(&f.bf16));
    let nf4 = tensors(&weights(&f.nf4));
    let fp8 = tensors(&weights(&f.fp8));
    let found = matrices(&reference);
    assert_eq!(found.len(), 2 * 5, "five matrices in each of two blocks");
    let (mut all, mut nf4_back, mut fp8_back) = (Vec::new(), Vec::new(), Vec::new());
    for (name, rows, cols) in &found {
        let values = floats(&reference[name]);
        let get =
            |t: &HashMap<String, Tensor>, part: &str| t[&format!("{name}.{part}")].shallow_clone();
        // NF4: the 4-bit codes bit for bit; the absmax codes up to a rounding of the mean.
        let ours = Nf4::quantize(&values).unwrap();
        assert_eq!(bytes(&get(&nf4, "nf4")), ours.packed, "{name}: nf4 codes");
        assert_eq!(
            floats(&get(&nf4, "code")),
            NF4_CODE,
            "{name}: the code table"
        );
        let absmax: Vec<i8> = Vec::try_from(get(&nf4, "absmax")).unwrap();
        let differ = absmax
            .iter()
            .zip(&ours.absmax)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            absmax
                .iter()
                .zip(&ours.absmax)
                .all(|(a, b)| (i16::from(*a) - i16::from(*b)).abs() <= 1)
                && differ * 1000 <= absmax.len(),
            "{name}: {differ} of {} absmax codes differ",
            absmax.len()
        );
        let offset = floats(&get(&nf4, "absmax_offset"))[0];
        assert!(
            (offset - ours.absmax_offset).abs() <= 1e-6 * offset.abs(),
            "{name}: offset"
        );
        for (a, b) in floats(&get(&nf4, "absmax_scale"))
            .iter()
            .zip(&ours.absmax_scale)
        {
            assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: scale {a} vs {b}");
        }
        let file = Nf4 {
            packed: bytes(&get(&nf4, "nf4")),
            absmax,
            absmax_scale: floats(&get(&nf4, "absmax_scale")),
            absmax_offset: offset,
        };
        nf4_back.extend(file.dequantize());
        // fp8: the bits and the scales exactly.
        let ours = Fp8::quantize(&values, *rows as usize, *cols as usize).unwrap();
        assert_eq!(bytes(&get(&fp8, "fp8")), ours.bits, "{name}: fp8 bits");
        assert_eq!(
            floats(&get(&fp8, "scale")),
            ours.scale,
            "{name}: fp8 scales"
        );
        fp8_back.extend(ours.dequantize());
        all.extend(values);
    }
    // The files' weights against bf16, every matrix together.
    let (nf4_error, fp8_error) = (relative(&nf4_back, &all), relative(&fp8_back, &all));
    eprintln!(
        "tiny text encoder, block matrices: nf4 relative error {nf4_error:.4}, fp8 {fp8_error:.4}"
    );
    assert!((0.085..0.100).contains(&nf4_error), "nf4: {nf4_error}");
    assert!((0.020..0.030).contains(&fp8_error), "fp8: {fp8_error}");
    // What is not a block matrix is the bf16 encoder's, unchanged.
    for (name, t) in &reference {
        if !found.iter().any(|(m, _, _)| m == name) {
            assert!(
                nf4[name].equal(t) && fp8[name].equal(t),
                "{name} is not kept as bf16"
            );
        }
    }
}

/// `encoder` copied from `dir` with its weights replaced by `tensors` (and its code kept).
fn encoder_with(dir: &Path, tensors: &[(String, Tensor)], into: &Path) -> Encoder {
    std::fs::create_dir_all(into).unwrap();
    let encoder = Encoder::find(dir).unwrap();
    std::fs::copy(dir.join(&encoder.spec.code), into.join(&encoder.spec.code)).unwrap();
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    arbiter_torch::safetensors::write(
        &into.join(&encoder.spec.weights),
        &refs,
        &Default::default(),
    )
    .unwrap();
    Encoder {
        dir: into.to_path_buf(),
        ..encoder
    }
}

fn output(encoder: &Encoder) -> Tensor {
    let prompts = ["a red fox in the snow", "blurry"];
    compare::run(
        encoder,
        &prompts,
        Device::Cpu,
        Placement::Gpu,
        0,
        &LoadOptions::default(),
    )
    .expect("the encoder runs")
    .output
}

#[test]
fn the_generated_code_dequantizes_exactly_as_the_reference_does() {
    let f = fixture();
    let reference = tensors(&weights(&f.bf16));
    for (dir, dtype) in [(&f.nf4, Dtype::Nf4), (&f.fp8, Dtype::Fp8E4m3)] {
        let stored = tensors(&weights(dir));
        let get = |name: &str, part: &str| stored[&format!("{name}.{part}")].shallow_clone();
        // The bf16 encoder, with every block matrix what the reference dequantizes from the
        // quantized file, rounded to bf16 as the generated code rounds.
        let dequantized: Vec<(String, Tensor)> = reference
            .iter()
            .map(|(name, t)| {
                let Some((_, rows, cols)) =
                    matrices(&reference).into_iter().find(|(m, _, _)| m == name)
                else {
                    return (name.clone(), t.shallow_clone());
                };
                let values = match dtype {
                    Dtype::Nf4 => Nf4 {
                        packed: bytes(&get(name, "nf4")),
                        absmax: Vec::try_from(get(name, "absmax")).unwrap(),
                        absmax_scale: floats(&get(name, "absmax_scale")),
                        absmax_offset: floats(&get(name, "absmax_offset"))[0],
                    }
                    .dequantize(),
                    _ => Fp8 {
                        bits: bytes(&get(name, "fp8")),
                        scale: floats(&get(name, "scale")),
                    }
                    .dequantize(),
                };
                let w = Tensor::from_slice(&values)
                    .view([rows, cols])
                    .to_kind(Kind::BFloat16);
                (name.clone(), w)
            })
            .collect();
        let scratch = tempfile::tempdir().unwrap();
        let plain = encoder_with(&f.bf16, &dequantized, scratch.path());
        let (quantized, expected) = (output(&Encoder::find(dir).unwrap()), output(&plain));
        let e = compare::error(&quantized, &expected).unwrap();
        assert!(
            e.max_abs <= 1e-6,
            "{dtype}: the code's dequantization differs from the reference's by {}",
            e.max_abs
        );
    }
}

#[test]
fn the_encoders_output_error_against_bf16_is_within_its_bound() {
    let f = fixture();
    let encoders: Vec<Encoder> = [&f.bf16, &f.fp8, &f.nf4]
        .into_iter()
        .map(|dir| Encoder::find(dir).unwrap())
        .collect();
    let prompts = ["a red fox in the snow", "blurry"];
    let measured = compare::compare(
        &encoders,
        &prompts,
        Device::Cpu,
        Placement::Gpu,
        1,
        &LoadOptions::default(),
    )
    .unwrap();
    assert!(
        measured[0].error.is_none(),
        "the reference is not compared with itself"
    );
    let (fp8, nf4) = (measured[1].error.unwrap(), measured[2].error.unwrap());
    eprintln!("tiny text encoder output against bf16 (random weights): fp8 {fp8:?}, nf4 {nf4:?}");
    // Measured: fp8 relative 0.049, nf4 0.190 (two blocks; the gated MLP multiplies two
    // quantized matrices' errors, and random weights are not trained to be robust to it).
    assert!((0.03..0.09).contains(&fp8.relative), "fp8: {fp8:?}");
    assert!((0.12..0.30).contains(&nf4.relative), "nf4: {nf4:?}");
    assert!(
        fp8.min_cosine > 0.98 && nf4.min_cosine > 0.9,
        "{fp8:?} {nf4:?}"
    );
    assert!(
        nf4.relative > 2.0 * fp8.relative,
        "4 bits are coarser than 8"
    );
}

#[test]
fn the_quantized_files_are_as_small_as_the_presets_count() {
    let f = fixture();
    let header = |dir: &Path| arbiter_torch::safetensors::read_header(&weights(dir)).unwrap();
    let (bf16, nf4, fp8) = (header(&f.bf16), header(&f.nf4), header(&f.fp8));
    // Every byte is what the preset counts, so ltx-full's figures (unit tests) hold too.
    for (dir, preset, h) in [
        (&f.nf4, Preset::TinyNf4, &nf4),
        (&f.fp8, Preset::TinyFp8, &fp8),
    ] {
        let manifest = Manifest::load(dir).unwrap();
        let counted = plan(preset, "p").parts[0].stored_bytes();
        assert_eq!(
            manifest.components["text_encoder"].parameter_bytes.0,
            counted,
            "{}",
            preset.name()
        );
        assert_eq!(h.data_len(), counted);
    }
    let mut reference = plan(Preset::Tiny, "p");
    reference.store_text_encoder(Dtype::Bf16).unwrap();
    assert_eq!(bf16.data_len(), reference.parts[0].stored_bytes());
    // The block matrices, scales and codes included, against their bf16 bytes.
    let in_blocks = |h: &arbiter_torch::safetensors::Header, bf16: bool| -> u64 {
        h.entries
            .iter()
            .filter(|e| {
                e.name.starts_with("blocks.")
                    && !e.name.ends_with(".norm1")
                    && !e.name.ends_with(".norm2")
            })
            .filter(|e| !bf16 || e.shape.len() == 2)
            .map(|e| e.byte_len())
            .sum()
    };
    let matrices = in_blocks(&bf16, true) as f64;
    let (nf4_ratio, fp8_ratio) = (
        matrices / in_blocks(&nf4, false) as f64,
        matrices / in_blocks(&fp8, false) as f64,
    );
    let whole =
        |h: &arbiter_torch::safetensors::Header| bf16.data_len() as f64 / h.data_len() as f64;
    eprintln!(
        "tiny text encoder: block matrices {nf4_ratio:.3}x (nf4) and {fp8_ratio:.3}x (fp8) smaller than bf16; whole files {:.3}x and {:.3}x (the byte embedding is a large share at this size)",
        whole(&nf4),
        whole(&fp8)
    );
    // At 64x64 to 192x64 an NF4 matrix's 84 bytes of scales and code table show, and fp8's
    // 4 bytes a row are 1/16 of a 64-wide row; at ltx-full size (rows of 3840 and 15360)
    // the same formulas give 3.87x and 1.998x (make::preset's tests).
    assert!((3.7..3.9).contains(&nf4_ratio), "{nf4_ratio}");
    assert!((1.85..1.95).contains(&fp8_ratio), "{fp8_ratio}");
    // The loader moves the quantized bytes, not bf16 ones.
    let load = |dir: &Path| {
        let e = Encoder::find(dir).unwrap();
        Live::load(
            &e.dir,
            &e.name,
            &e.spec,
            Placement::Gpu,
            Device::Cpu,
            &LoadOptions::default(),
            None,
        )
        .unwrap()
        .load
        .bytes
    };
    assert_eq!(load(&f.nf4), nf4.data_len());
    assert_eq!(load(&f.bf16), bf16.data_len());
}

struct Quiet;

impl Progress for Quiet {
    fn begin(&mut self, _: Stage, _: u32) -> Result<(), Stop> {
        Ok(())
    }
    fn step(&mut self, _: u32) -> Result<(), Stop> {
        Ok(())
    }
}

#[test]
fn a_pipeline_with_a_quantized_text_encoder_runs_under_every_placement() {
    let f = fixture();
    let manifest = Manifest::load(&f.nf4).unwrap();
    let settings = Settings {
        device: Device::Cpu,
        load: LoadOptions::default(),
        cache: None,
        nvml: None,
        gate: None,
    };
    let run = |placement: Placement, lease_bytes: u64| {
        let placements = Placements::from([("text_encoder".to_string(), placement)]);
        let request = Request {
            prompt: "a red fox in the snow",
            negative_prompt: "blurry",
            shape: manifest.shape(128, 128, 17, 8, 3).unwrap(),
            seed: 1234,
            audio: None,
            image: None,
            placements: &placements,
            lease_bytes,
        };
        staged::run(&manifest, &f.nf4, &settings, &request, &mut Quiet).expect("the pipeline runs")
    };
    let reference = run(Placement::Gpu, 0);
    let text = &reference.stages[0];
    assert_eq!(
        (text.stage.as_str(), text.load_bytes),
        (
            "text",
            manifest.components["text_encoder"].parameter_bytes.0
        )
    );
    assert!(f64::try_from(reference.latents.isfinite().all().to_kind(Kind::Float)).unwrap() == 1.0);
    for (placement, lease, expected) in [
        (Placement::Cpu, 0, "cpu"),
        (Placement::Stream, 0, "stream"),
        (Placement::Resident, 0, "resident"),
        // A lease too small for it: auto streams its quantized blocks.
        (Placement::Auto, 1, "stream"),
    ] {
        let other = run(placement, lease);
        assert_eq!(other.stages[0].placement, expected);
        assert!(
            other
                .latents
                .allclose(&reference.latents, 1e-5, 1e-5, false),
            "{placement} gives other latents"
        );
    }
}

#[test]
fn weights_quantized_otherwise_than_the_manifest_says_are_refused() {
    let f = fixture();
    let refuse = |manifest_dir: &Path, weights_from: &Path| -> String {
        let copy = tempfile::tempdir().unwrap();
        let e = Encoder::find(manifest_dir).unwrap();
        std::fs::copy(
            manifest_dir.join(&e.spec.code),
            copy.path().join(&e.spec.code),
        )
        .unwrap();
        std::fs::copy(weights(weights_from), copy.path().join(&e.spec.weights)).unwrap();
        let error = Live::load(
            copy.path(),
            &e.name,
            &e.spec,
            Placement::Gpu,
            Device::Cpu,
            &LoadOptions::default(),
            None,
        )
        .err()
        .expect("refused");
        assert!(matches!(error, ComponentError::Mismatch { .. }), "{error}");
        error.to_string()
    };
    let cases = [
        (
            &f.nf4,
            &f.fp8,
            "the manifest says nf4, but the weights are quantized as fp8-e4m3",
        ),
        (
            &f.nf4,
            &f.bf16,
            "the manifest says nf4, but the weights are not quantized",
        ),
        (
            &f.bf16,
            &f.nf4,
            "the manifest says bf16, but the weights are quantized as nf4",
        ),
    ];
    for (manifest_dir, weights_from, expected) in cases {
        let message = refuse(manifest_dir, weights_from);
        assert!(
            message.contains("component text_encoder") && message.contains(expected),
            "{message}"
        );
    }
    // An nf4 file whose tensors are not of the kinds its code declares.
    let copy = tempfile::tempdir().unwrap();
    let mut stored: Vec<(String, Tensor)> = tensors(&weights(&f.nf4)).into_iter().collect();
    for (name, t) in &mut stored {
        if name == "blocks.0.qkv.absmax" {
            *t = t.to_kind(Kind::Uint8);
        }
    }
    let e = encoder_with(&f.nf4, &stored, copy.path());
    let metadata = arbiter_torch::safetensors::read_header(&weights(&f.nf4))
        .unwrap()
        .metadata;
    let refs: Vec<(&str, &Tensor)> = stored.iter().map(|(n, t)| (n.as_str(), t)).collect();
    arbiter_torch::safetensors::write(&copy.path().join(&e.spec.weights), &refs, &metadata)
        .unwrap();
    let error = Live::load(
        &e.dir,
        &e.name,
        &e.spec,
        Placement::Gpu,
        Device::Cpu,
        &LoadOptions::default(),
        None,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(
        error.contains("blocks.0.qkv.absmax is Uint8, the code declares Int8"),
        "{error}"
    );
}
