//! A lip-sync model written by scripts/make-test-lipsync.py (random weights), loaded in this
//! process: frames come out as many as the audio's length implies, of the face's size,
//! and they keep the face outside the mouth region; bad configs are refused with the rule.

use arbiter_test_kit::tts::make_lipsync as make_model;
use arbiter_tts::lip_sync::LipSyncModel;
use arbiter_tts::lip_sync::face::Face;

/// A grey face with a white forehead: the top rows must survive the model untouched.
fn face(size: u32) -> Face {
    let plane = (size * size) as usize;
    let mut pixels = vec![0.0f32; 3 * plane];
    for c in 0..3 {
        for i in 0..(size as usize * 4) {
            pixels[c * plane + i] = 1.0;
        }
    }
    Face { size, pixels }
}

#[test]
fn frames_follow_the_audio_length_and_keep_the_face() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny-lipsync");
    make_model(&model_dir, &["--face-size", "32", "--fps", "25"]);
    let model = LipSyncModel::load(&model_dir).expect("the model loads");
    assert_eq!(model.name(), "tiny-lipsync");
    assert_eq!(
        (model.face_size(), model.fps(), model.sample_rate()),
        (32, 25, 16000)
    );
    assert!(model.parameter_bytes() > 0);
    assert!(
        !model.device().is_cuda(),
        "on the CPU until a lease puts it on a GPU"
    );

    let face = face(32);
    for (samples, frames) in [(16000 * 2 + 7000, 61), (16000, 25), (320, 1), (319, 0)] {
        let audio: Vec<f32> = (0..samples)
            .map(|i| ((i as f32) * 0.01).sin() * 0.3)
            .collect();
        let rendered = model.render(&face, &audio).expect("renders");
        assert_eq!(rendered.frames.len(), frames, "{samples} samples");
        assert_eq!(model.frame_count(samples), frames);
        for frame in &rendered.frames {
            assert_eq!(frame.len(), 32 * 32 * 3);
            // The first 4 rows (the forehead) are the face, white.
            assert!(
                frame[..32 * 4 * 3].iter().all(|&v| v == 255),
                "the face is kept"
            );
        }
        if frames > 1 {
            let mouth = |f: &[u8]| f[32 * 28 * 3..].to_vec();
            assert_ne!(
                mouth(&rendered.frames[0]),
                mouth(&rendered.frames[frames - 1]),
                "the mouth region changes with the audio"
            );
        }
    }
    // Offloading a model that is not on a GPU is a no-op.
    assert!(!model.offload());
}

#[test]
fn bad_configs_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    make_model(&model_dir, &["--face-size", "16"]);
    let config = model_dir.join("lipsync.json");
    let good = std::fs::read_to_string(&config).unwrap();
    for (from, to, needle) in [
        ("\"waveform\"", "\"mel\"", "audio.features"),
        ("\"fps\": 25", "\"fps\": 0", "fps"),
        ("\"face_size\": 16", "\"face_size\": 4", "face_size"),
        (
            "\"sample_rate\": 16000",
            "\"sample_rate\": 100",
            "sample_rate",
        ),
    ] {
        std::fs::write(&config, good.replace(from, to)).unwrap();
        let error = LipSyncModel::load(&model_dir).unwrap_err();
        assert!(error.to_string().contains(needle), "{needle}: {error}");
    }
    let error = LipSyncModel::load(dir.path()).unwrap_err();
    assert!(error.to_string().contains("lipsync.json"), "{error}");
}
