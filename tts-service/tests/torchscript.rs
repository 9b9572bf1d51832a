//! A TorchScript voice written by scripts/make-test-voice.py (random weights), loaded in this
//! process: the audio is as long as the model's durations and the config's hop imply.

use arbiter_test_kit::tts::make_voice;
use arbiter_tts::espeak::{DEFAULT_VOICE, Espeak, Phoneme, RATE_WPM_DEFAULT};
use arbiter_tts::torchscript::{TorchVoice, default_device};

fn p(symbol: &str) -> Phoneme {
    Phoneme {
        symbol: symbol.into(),
        start_ms: 0,
        duration_ms: 0,
    }
}

#[test]
fn audio_length_is_the_models_durations_times_hop() {
    let dir = tempfile::tempdir().unwrap();
    let voice_dir = dir.path().join("tiny");
    make_voice(&voice_dir, &["--sample-rate", "16000", "--hop", "200"]);
    let voice = TorchVoice::load(&voice_dir, default_device()).expect("the voice loads");
    assert_eq!(voice.name(), "tiny");
    assert_eq!(voice.sample_rate(), 16000);
    assert_eq!(voice.config().hop_length, Some(200));

    // "hello": h @ l oU, framed Piper's way: ^ _ h _ @ _ l _ oU _ $.
    let hello: Vec<Phoneme> = ["h", "@", "l", "oU"].map(p).to_vec();
    let map = &voice.config().phoneme_id_map;
    let id = |s: &str| map[s][0];
    assert_eq!(
        voice.ids(&hello),
        vec![
            id("^"),
            id("_"),
            id("h"),
            id("_"),
            id("@"),
            id("_"),
            id("l"),
            id("_"),
            id("oU"),
            id("_"),
            id("$")
        ]
    );
    // An unknown symbol is sent as <unk>.
    assert_eq!(voice.ids(&[p("Q!")])[2], id("<unk>"));

    let durations = voice.durations(&hello, 1.0).expect("durations");
    assert_eq!(durations.len(), 11);
    assert!(durations.iter().all(|&d| d >= 1));
    let audio = voice.speak(&hello).expect("speaks");
    let frames: i64 = durations.iter().sum();
    assert_eq!(audio.len() as i64, frames * 200, "N = sum(durations) * hop");
    assert!(audio.iter().any(|&s| s != 0), "not all zero");

    // length_scale stretches every duration.
    let slow = voice.speak_scaled(&hello, 2.0).unwrap();
    let slow_frames: i64 = voice.durations(&hello, 2.0).unwrap().iter().sum();
    assert_eq!(slow.len() as i64, slow_frames * 200);
    assert!(slow.len() > audio.len());
}

#[test]
fn different_texts_give_different_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let voice_dir = dir.path().join("tiny");
    make_voice(&voice_dir, &[]);
    let voice = TorchVoice::load(&voice_dir, default_device()).unwrap();
    let espeak = Espeak::get().unwrap();
    let mut lengths = Vec::new();
    for text in [
        "Hi.",
        "Hello world, this is a much longer sentence to speak.",
    ] {
        let front = espeak
            .synthesize(text, DEFAULT_VOICE, RATE_WPM_DEFAULT)
            .unwrap();
        let audio = voice.speak(&front.phonemes).unwrap();
        let frames: i64 = voice.durations(&front.phonemes, 1.0).unwrap().iter().sum();
        assert_eq!(audio.len() as i64, frames * 256);
        lengths.push(audio.len());
    }
    assert!(lengths[1] > lengths[0] * 2, "{lengths:?}");
}

#[test]
fn bad_configs_are_refused_with_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let voice_dir = dir.path().join("tiny");
    make_voice(&voice_dir, &[]);
    let config = voice_dir.join("voice.json");
    let good = std::fs::read_to_string(&config).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&good).unwrap();
    json.as_object_mut().unwrap().remove("audio");
    std::fs::write(&config, json.to_string()).unwrap();
    let error = TorchVoice::load(&voice_dir, default_device()).unwrap_err();
    assert!(error.to_string().contains("audio"), "{error}");
    std::fs::write(
        &config,
        good.replace("\"sample_rate\": 22050", "\"sample_rate\": 0"),
    )
    .unwrap();
    let error = TorchVoice::load(&voice_dir, default_device()).unwrap_err();
    assert!(error.to_string().contains("sample_rate"), "{error}");
    let error = TorchVoice::load(dir.path(), default_device()).unwrap_err();
    assert!(error.to_string().contains("voice.json"), "{error}");
}
