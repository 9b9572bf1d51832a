//! The staged pipeline on the CPU with a generated `tiny` pipeline (random weights, the
//! real interfaces): placements agree, stages run in order and free what they no longer
//! need, the embedding cache skips the encoder, a job under a compute gate yields between
//! blocks and computes the same, and bad inputs are refused by name.
//!
//! The pipeline is generated once per test binary with `arbiter-video make-pipeline`,
//! which needs Python with PyTorch on PATH (`source scripts/env.sh`; scripts/test.sh does).

use arbiter_test_kit::media;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arbiter::pipeline::{Manifest, Placement, Placements, Shape};
use arbiter_torch::LoadOptions;
use arbiter_video::input::audio::{AudioSpec, load_audio};
use arbiter_video::pipeline::cache::EmbeddingCache;
use arbiter_video::pipeline::preloaded::Preloaded;
use arbiter_video::pipeline::staged::{self, Output, Request, Settings};
use arbiter_video::progress::{Progress, Stage, Stop};
use tch::Device;

/// The generated pipeline, shared by every test in this binary.
fn pipeline() -> &'static (PathBuf, Manifest) {
    static PIPELINE: OnceLock<(PathBuf, Manifest)> = OnceLock::new();
    PIPELINE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("arbiter-staged-test-{}", std::process::id()));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_arbiter-video"))
            .args([
                "make-pipeline",
                "--preset",
                "tiny",
                "--device",
                "cpu",
                "--name",
                "tiny-staged",
                "--out",
            ])
            .arg(&dir)
            .status()
            .expect("run arbiter-video make-pipeline");
        assert!(
            status.success(),
            "make-pipeline failed: is PyTorch on PATH (source scripts/env.sh)?"
        );
        let manifest = Manifest::load(&dir).expect("the generated manifest loads");
        (dir, manifest)
    })
}

/// The CPU, default loading, no NVML.
fn settings(cache: Option<EmbeddingCache>) -> Settings {
    Settings {
        device: Device::Cpu,
        load: LoadOptions::default(),
        cache,
        nvml: None,
        gate: None,
    }
}

#[derive(Default)]
struct Record {
    stages: Vec<(Stage, u32)>,
    steps: u32,
}

impl Progress for Record {
    fn begin(&mut self, stage: Stage, total: u32) -> Result<(), Stop> {
        self.stages.push((stage, total));
        Ok(())
    }
    fn step(&mut self, _: u32) -> Result<(), Stop> {
        self.steps += 1;
        Ok(())
    }
}

fn shape(manifest: &Manifest) -> Shape {
    manifest.shape(128, 128, 17, 8, 3).unwrap()
}

fn run_with(
    placements: &Placements,
    lease_bytes: u64,
    cache: Option<EmbeddingCache>,
    progress: &mut dyn Progress,
) -> Output {
    run_seeded(1234, placements, lease_bytes, cache, progress)
}

/// The tests' request: the red fox, without audio or an image.
fn fox<'a>(
    manifest: &Manifest,
    seed: u64,
    placements: &'a Placements,
    lease_bytes: u64,
) -> Request<'a> {
    Request {
        prompt: "a red fox in the snow",
        negative_prompt: "blurry",
        shape: shape(manifest),
        seed,
        audio: None,
        image: None,
        placements,
        lease_bytes,
    }
}

fn run_seeded(
    seed: u64,
    placements: &Placements,
    lease_bytes: u64,
    cache: Option<EmbeddingCache>,
    progress: &mut dyn Progress,
) -> Output {
    let (dir, manifest) = pipeline();
    let settings = settings(cache);
    let request = fox(manifest, seed, placements, lease_bytes);
    staged::run(manifest, dir, &settings, &request, progress).expect("the pipeline runs")
}

fn all(placement: Placement) -> Placements {
    let (_, manifest) = pipeline();
    manifest
        .components
        .iter()
        .map(|(name, c)| {
            let p = if placement == Placement::Stream && c.blocks == 0 {
                Placement::Gpu
            } else {
                placement
            };
            (name.clone(), p)
        })
        .collect()
}

#[test]
fn every_placement_gives_the_same_latents_for_the_same_seed() {
    let reference = run_with(&all(Placement::Gpu), 0, None, &mut Record::default());
    assert_eq!(reference.latents.size(), [1, 8, 3, 4, 4]);
    assert_eq!(
        (
            reference.frames.count,
            reference.frames.width,
            reference.frames.height
        ),
        (17, 128, 128)
    );
    for placement in [
        Placement::Cpu,
        Placement::Stream,
        Placement::Auto,
        Placement::Resident,
    ] {
        let other = run_with(&all(placement), 0, None, &mut Record::default());
        assert!(
            other
                .latents
                .allclose(&reference.latents, 1e-5, 1e-5, false),
            "{placement} gives other latents"
        );
        assert_eq!(other.frames.rgb, reference.frames.rgb, "{placement}");
    }
    // A tight lease makes auto stream the components with blocks.
    let tight = run_with(&all(Placement::Auto), 1, None, &mut Record::default());
    let text = &tight.stages[0];
    assert_eq!(
        (text.stage.as_str(), text.placement.as_str()),
        ("text", "stream")
    );
    assert!(
        tight
            .latents
            .allclose(&reference.latents, 1e-5, 1e-5, false)
    );
    let other = run_with(&Placements::new(), 0, None, &mut Record::default());
    let seeded = staged_with_seed(99);
    assert!(!seeded.latents.allclose(&other.latents, 1e-3, 1e-3, false));
}

fn staged_with_seed(seed: u64) -> Output {
    run_seeded(seed, &Placements::new(), 0, None, &mut Record::default())
}

#[test]
fn stages_run_in_order_and_free_what_no_later_stage_needs() {
    let mut record = Record::default();
    let output = run_with(&Placements::new(), 0, None, &mut record);
    assert_eq!(
        record.stages,
        [
            (Stage::Text, 1),
            (Stage::Audio, 1),
            (Stage::Image, 1),
            (Stage::Denoise, 3),
            (Stage::Upsample, 1),
            (Stage::Refine, 2),
            (Stage::Decode, 1),
        ]
    );
    assert_eq!(record.steps, 3 + 2);
    let held: Vec<(&str, Vec<&str>)> = output
        .stages
        .iter()
        .map(|s| {
            (
                s.stage.as_str(),
                s.held_after.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        held,
        [
            ("text", vec![]),
            ("audio", vec![]),
            // No reference image: the encoder is not even loaded.
            ("image", vec![]),
            // The transformer runs again in refine, so it stays across upsample.
            ("denoise", vec!["transformer"]),
            ("upsample", vec!["transformer"]),
            ("refine", vec![]),
            ("decode", vec![]),
        ]
    );
    assert_eq!(output.stages[2].placement, "skipped");
    assert!(output.stages[0].load_bytes > 0);
    assert!(
        output.stages[6].tiles.is_some_and(|t| t > 1),
        "decode is tiled"
    );

    // Resident components stay to the end.
    let mut resident = Placements::new();
    resident.insert("text_encoder".into(), Placement::Resident);
    let output = run_with(&resident, 0, None, &mut Record::default());
    assert!(
        output
            .stages
            .iter()
            .all(|s| s.held_after.contains(&"text_encoder".to_string()))
    );
}

#[test]
fn a_cached_prompt_skips_the_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let cache = || Some(EmbeddingCache::open(dir.path(), 1 << 20).unwrap());
    let first = run_with(&Placements::new(), 0, cache(), &mut Record::default());
    assert_eq!(first.stages[0].cache_hit, Some(false));
    assert!(first.stages[0].load_bytes > 0);
    let second = run_with(&Placements::new(), 0, cache(), &mut Record::default());
    let text = &second.stages[0];
    assert_eq!(text.cache_hit, Some(true));
    assert_eq!((text.placement.as_str(), text.load_bytes), ("skipped", 0));
    assert!(second.latents.allclose(&first.latents, 1e-6, 1e-6, false));
}

#[test]
fn audio_and_an_image_condition_the_video() {
    let (dir, manifest) = pipeline();
    let work = tempfile::tempdir().unwrap();
    let wav = work.path().join("tone.wav");
    write_tone(&wav, 22_050, 1, 0.5);
    let model = manifest.model.as_ref().unwrap();
    let audio = load_audio(
        &wav,
        AudioSpec {
            sample_rate: model.audio_sample_rate,
            channels: model.audio_channels,
        },
        17.0 / 8.0,
    )
    .unwrap();
    assert_eq!(audio.channels, 2);
    let png = work.path().join("face.png");
    image::RgbImage::from_fn(200, 100, |x, _| image::Rgb([(x % 256) as u8, 40, 200]))
        .save(&png)
        .unwrap();
    let image = arbiter_video::input::image::load_image(&png, 128, 128).unwrap();
    let settings = settings(None);
    let placements = Placements::new();
    let request = Request {
        prompt: "a red fox in the snow",
        negative_prompt: "blurry",
        shape: shape(manifest),
        seed: 1234,
        audio: Some(&audio),
        image: Some(&image),
        placements: &placements,
        lease_bytes: 0,
    };
    let conditioned =
        staged::run(manifest, dir, &settings, &request, &mut Record::default()).unwrap();
    assert_eq!(
        conditioned.stages[2].placement, "gpu",
        "the image encoder ran"
    );
    let plain = run_with(&Placements::new(), 0, None, &mut Record::default());
    assert!(
        !conditioned
            .latents
            .allclose(&plain.latents, 1e-4, 1e-4, false)
    );
}

/// A sine tone as 16-bit PCM WAV.
fn write_tone(path: &Path, rate: u32, channels: u16, seconds: f64) {
    let mono = media::sine(440.0, 12_000.0, seconds, rate);
    let samples: Vec<i16> = mono
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, usize::from(channels)))
        .collect();
    std::fs::write(path, media::wav(&samples, rate, channels)).unwrap();
}

#[test]
fn a_session_keeps_resident_components_from_one_run_to_the_next() {
    let (dir, manifest) = pipeline();
    let settings = settings(None);
    let mut placements = Placements::new();
    placements.insert("transformer".into(), Placement::Resident);
    let request = fox(manifest, 1234, &placements, 0);
    let mut session = staged::Session::default();
    let first = staged::run_in(
        &mut session,
        manifest,
        dir,
        &settings,
        &request,
        &mut Record::default(),
    )
    .unwrap();
    assert_eq!(session.loaded(), ["transformer"]);
    let second = staged::run_in(
        &mut session,
        manifest,
        dir,
        &settings,
        &request,
        &mut Record::default(),
    )
    .unwrap();
    let denoise = |o: &Output| {
        o.stages
            .iter()
            .find(|s| s.stage == "denoise")
            .unwrap()
            .load_bytes
    };
    assert!(denoise(&first) > 0);
    assert_eq!(
        denoise(&second),
        0,
        "the resident transformer was not loaded again"
    );
    // Each component's first call is timed once per process: the resident transformer's in
    // the first run only; components loaded again per run, in each run.
    let first_call = |o: &Output, stage: &str| {
        o.stages
            .iter()
            .find(|s| s.stage == stage)
            .unwrap()
            .first_call_ms
    };
    assert!(first_call(&first, "denoise").is_some());
    assert_eq!(first_call(&second, "denoise"), None);
    assert_eq!(first_call(&second, "refine"), None);
    assert!(first_call(&second, "text").is_some());
    assert!(second.latents.allclose(&first.latents, 1e-6, 1e-6, false));
}

#[test]
fn the_generator_writes_the_parameters_the_presets_count() {
    use arbiter_video::make::preset::{Preset, plan};
    let (_, manifest) = pipeline();
    for part in plan(Preset::Tiny, "x").parts {
        let written = manifest.components[part.name].parameter_bytes.0;
        assert_eq!(written, part.parameters() * 4, "{} (f32)", part.name);
    }
}

#[test]
fn weights_of_another_shape_are_refused_at_load_by_name() {
    use arbiter_video::pipeline::component::{ComponentError, Live};
    let (dir, manifest) = pipeline();
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.path().join(path.file_name().unwrap())).unwrap();
    }
    let weights = copy.path().join("transformer.safetensors");
    let loaded = arbiter_torch::load(&weights, Device::Cpu, &LoadOptions::default()).unwrap();
    let tensors: Vec<(String, tch::Tensor)> = loaded
        .tensors
        .into_iter()
        .map(|(name, t)| {
            let t = if name == "blocks.0.qkv" {
                tch::Tensor::zeros([t.size()[0] + 3, t.size()[1]], (t.kind(), Device::Cpu))
            } else {
                t.copy()
            };
            (name, t)
        })
        .collect();
    let refs: Vec<(&str, &tch::Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    arbiter_torch::safetensors::write(&weights, &refs, &Default::default()).unwrap();
    let error = Live::load(
        copy.path(),
        "transformer",
        &manifest.components["transformer"],
        Placement::Gpu,
        Device::Cpu,
        &LoadOptions::default(),
        None,
    )
    .err()
    .expect("a weights file of another shape is refused");
    assert!(matches!(error, ComponentError::Mismatch { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains("blocks.0.qkv") && message.contains("the code expects"),
        "{message}"
    );
}

#[test]
fn under_a_busy_compute_gate_blocks_yield_and_compute_the_same() {
    use arbiter::gate::{Gate, Settings as GateSettings};
    use arbiter_video::pipeline::yielding::Yielding;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let (dir, manifest) = pipeline();
    let placements = all(Placement::Gpu);
    let reference = run_with(&placements, 0, None, &mut Record::default());
    let gates = tempfile::tempdir().unwrap();
    let path = gates.path().join("gpu-0.gate");
    // A holder marked busy for good: every block boundary is a pause, each as short as
    // max_pause, within a share that allows them all.
    let gate = Arc::new(
        Gate::create(
            &path,
            GateSettings {
                max_pause: Duration::from_millis(1),
                max_share: 1.0,
                stale_after: Duration::from_secs(600),
            },
        )
        .unwrap(),
    );
    let holder = gate.holder().unwrap();
    let work = holder.work();
    let mut settings = settings(None);
    settings.gate = Some(Arc::new(Mutex::new(
        Yielding::open(&path, Device::Cpu).unwrap(),
    )));
    let request = fox(manifest, 1234, &placements, 0);
    let mut streamed = placements.clone();
    for (name, c) in &manifest.components {
        if c.blocks > 0 {
            streamed.insert(name.clone(), Placement::Stream);
        }
    }
    let yielded = staged::run(manifest, dir, &settings, &request, &mut Record::default()).unwrap();
    assert!(
        yielded
            .latents
            .allclose(&reference.latents, 1e-6, 1e-6, false),
        "block by block is the same computation as forward"
    );
    assert_eq!(yielded.frames.rgb, reference.frames.rgb);
    for stage in &yielded.stages {
        let blocks = manifest.components[&stage.component].blocks;
        let pauses = stage.yield_pauses.expect("recorded under a gate");
        if blocks > 0 {
            assert!(
                pauses >= u64::from(blocks),
                "{}: {pauses} pauses",
                stage.stage
            );
            assert!(stage.yield_paused_ms.unwrap() > 0.0);
        } else {
            assert_eq!(pauses, 0, "{} has no blocks to yield between", stage.stage);
        }
    }
    // Streamed components yield too.
    let request = Request {
        placements: &streamed,
        ..request
    };
    let yielded = staged::run(manifest, dir, &settings, &request, &mut Record::default()).unwrap();
    assert!(
        yielded
            .latents
            .allclose(&reference.latents, 1e-5, 1e-5, false)
    );
    let text = &yielded.stages[0];
    assert_eq!(text.placement, "stream");
    assert!(text.yield_pauses.unwrap() > 0);
    // With the holder done, nothing pauses.
    drop(work);
    let request = Request {
        placements: &placements,
        ..request
    };
    let idle = staged::run(manifest, dir, &settings, &request, &mut Record::default()).unwrap();
    assert!(idle.stages.iter().all(|s| s.yield_pauses == Some(0)));
}

#[test]
fn code_read_ahead_is_taken_once_and_gives_the_same_latents() {
    let (dir, manifest) = pipeline();
    let placements = all(Placement::Gpu);
    let reference = run_with(&placements, 0, None, &mut Record::default());

    let (_, preloaded) = Preloaded::load(dir).expect("the pipeline's code reads ahead");
    let mut components: Vec<String> = manifest
        .stages
        .iter()
        .map(|s| s.component.clone())
        .collect();
    components.sort();
    components.dedup();
    assert_eq!(preloaded.names(), components);
    let request = fox(manifest, 1234, &placements, 0);
    let mut session = staged::Session::with_preloaded(preloaded);
    let output = staged::run_in(
        &mut session,
        manifest,
        dir,
        &settings(None),
        &request,
        &mut Record::default(),
    )
    .expect("the pipeline runs on code read ahead");
    assert!(
        output
            .latents
            .allclose(&reference.latents, 1e-6, 1e-6, false)
    );

    // Each module once, and only for the file it was read from, unchanged.
    let (_, mut preloaded) = Preloaded::load(dir).unwrap();
    let spec = &manifest.components["text_encoder"];
    assert!(preloaded.take(dir, "text_encoder", spec).is_some());
    assert!(preloaded.take(dir, "text_encoder", spec).is_none());
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let (_, mut preloaded) = Preloaded::load(copy.path()).unwrap();
    let code = copy.path().join(&spec.code);
    let mut bytes = std::fs::read(&code).unwrap();
    bytes.push(0);
    std::fs::write(&code, &bytes).unwrap();
    assert!(
        preloaded.take(copy.path(), "text_encoder", spec).is_none(),
        "code changed since it was read is read again"
    );
}
