//! The real `arbiter-tts serve` binary over its real Unix socket: streamed speech from the
//! eSpeak NG voice, visemes, voices, and refusals.

use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::processes::Process;
use arbiter_test_kit::tts::{self, SERVING, make_voice, secs};
use pb::tts_client::TtsClient;
use tonic::Code;
use tonic::transport::Channel;

struct Service {
    _tts: Process,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[&str]) -> (Service, TtsClient<Channel>) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let tts = tts::serve(&socket, extra);
    let (client, health) = tts::answering(&socket).await;
    assert_eq!(health, SERVING, "health says SERVING");
    (
        Service {
            _tts: tts,
            _dir: dir,
        },
        client,
    )
}

async fn chunks(
    client: &mut TtsClient<Channel>,
    request: pb::SynthesizeRequest,
) -> Vec<pb::SynthesizeChunk> {
    let mut stream = client
        .synthesize(request)
        .await
        .expect("Synthesize")
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        out.push(chunk);
    }
    out
}

#[tokio::test]
async fn speech_streams_a_chunk_per_sentence_with_contiguous_visemes() {
    let (_service, mut client) = start(&[]).await;
    let text = "Hello world. This is Arbiter speaking from one GPU. Goodbye!";
    let chunks = chunks(
        &mut client,
        pb::SynthesizeRequest {
            text: text.into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(chunks.len(), 3, "one chunk per sentence");
    assert_eq!(chunks[0].text, "Hello world.");
    assert!(chunks[2].last && !chunks[0].last && !chunks[1].last);
    let mut expected_start = 0.0;
    let mut total = 0.0;
    for chunk in &chunks {
        assert_eq!(chunk.sample_rate, 22050);
        assert!(
            (secs(&chunk.start) - expected_start).abs() < 0.002,
            "chunks follow each other"
        );
        let samples: Vec<i16> = chunk
            .audio
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let seconds = samples.len() as f64 / 22050.0;
        assert!(
            (seconds - secs(&chunk.duration)).abs() < 0.002,
            "duration matches the audio"
        );
        let rms = (samples.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / samples.len() as f64)
            .sqrt();
        assert!(rms > 300.0, "speech, not silence: rms {rms}");
        // Visemes tile the chunk in order.
        let mut at = secs(&chunk.start);
        for viseme in &chunk.visemes {
            assert!(
                (secs(&viseme.start) - at).abs() < 0.002,
                "no gap or overlap at {at}"
            );
            assert!(viseme.id < 15 && !viseme.name.is_empty());
            at += secs(&viseme.duration);
        }
        assert!(
            (at - (secs(&chunk.start) + secs(&chunk.duration))).abs() < 0.002,
            "visemes cover the chunk"
        );
        expected_start += seconds;
        total += seconds;
    }
    assert!(
        (2.0..12.0).contains(&total),
        "a sane length for the text: {total}s"
    );
}

#[tokio::test]
async fn wav_output_starts_with_a_header_and_rate_changes_length() {
    let (_service, mut client) = start(&[]).await;
    let wav = chunks(
        &mut client,
        pb::SynthesizeRequest {
            text: "One sentence only.".into(),
            format: pb::AudioFormat::Wav as i32,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(&wav[0].audio[0..4], b"RIFF");
    assert_eq!(&wav[0].audio[8..12], b"WAVE");
    let slow = chunks(
        &mut client,
        pb::SynthesizeRequest {
            text: "One sentence only.".into(),
            speaking_rate: 0.5,
            ..Default::default()
        },
    )
    .await;
    assert!(secs(&slow[0].duration) > secs(&wav[0].duration) * 1.4);
}

/// LipSync of a short text with `voice`, checked to cover the speech's whole duration.
async fn lip_sync_covering_its_audio(
    client: &mut TtsClient<Channel>,
    voice: &str,
) -> pb::LipSyncReply {
    let reply = client
        .lip_sync(pb::LipSyncRequest {
            input: Some(pb::lip_sync_request::Input::Text(
                "Peter picked a pepper.".into(),
            )),
            voice: voice.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let covered: f64 = reply.visemes.iter().map(|v| secs(&v.duration)).sum();
    assert!((covered - secs(&reply.duration)).abs() < 0.002);
    reply
}

/// The voices the service lists.
async fn list_voices(client: &mut TtsClient<Channel>) -> Vec<pb::Voice> {
    client
        .list_voices(pb::ListVoicesRequest {})
        .await
        .unwrap()
        .into_inner()
        .voices
}

#[tokio::test]
async fn voices_are_listed_and_lip_sync_covers_the_speech() {
    let (_service, mut client) = start(&[]).await;
    let voices = list_voices(&mut client).await;
    let english = voices
        .iter()
        .find(|v| v.name == "en-us")
        .expect("en-us is listed");
    assert_eq!(english.backend, "espeak-ng");
    assert_eq!(english.sample_rate, 22050);
    assert!(!english.on_gpu);
    let reply = lip_sync_covering_its_audio(&mut client, "en").await;
    assert!(
        reply.visemes.iter().any(|v| v.name == "PP"),
        "p is a closed-lips viseme"
    );
}

#[tokio::test]
async fn bad_requests_are_refused_with_the_rule() {
    let (_service, mut client) = start(&["--max-text-chars", "40"]).await;
    let refused = |text: &str, voice: &str, rate: f32| pb::SynthesizeRequest {
        text: text.into(),
        voice: voice.into(),
        speaking_rate: rate,
        ..Default::default()
    };
    for (request, needle) in [
        (refused("   ", "", 0.0), "empty"),
        (refused("Hi.", "klingon", 0.0), "ListVoices"),
        (refused("Hi.", "", 3.0), "speaking_rate"),
        (refused(&"word ".repeat(20), "", 0.0), "40"),
    ] {
        let status = client.synthesize(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    let status = client
        .lip_sync(pb::LipSyncRequest {
            input: None,
            voice: String::new(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_torchscript_voice_is_listed_and_speaks_with_contiguous_visemes() {
    let voices_dir = tempfile::tempdir().unwrap();
    let voice_dir = voices_dir.path().join("tiny-vits");
    make_voice(&voice_dir, &["--sample-rate", "16000", "--hop", "160"]);
    let dir = voice_dir.to_str().unwrap();
    let (_service, mut client) = start(&["--voice-dir", dir]).await;
    let voices = list_voices(&mut client).await;
    let tiny = voices
        .iter()
        .find(|v| v.name == "tiny-vits")
        .expect("the TorchScript voice is listed");
    assert_eq!(tiny.backend, "torchscript");
    assert_eq!(tiny.sample_rate, 16000);
    assert_eq!(tiny.language, "en-us");
    assert!(voices.iter().any(|v| v.backend == "espeak-ng"));

    let chunks = chunks(
        &mut client,
        pb::SynthesizeRequest {
            text: "Hello world. Goodbye!".into(),
            voice: "tiny-vits".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(chunks.len(), 2, "one chunk per sentence");
    let mut expected_start = 0.0;
    for chunk in &chunks {
        assert_eq!(chunk.sample_rate, 16000);
        let samples = chunk.audio.len() / 2;
        assert!(
            samples > 0 && samples % 160 == 0,
            "whole frames of 160: {samples}"
        );
        let seconds = samples as f64 / 16000.0;
        assert!((secs(&chunk.duration) - seconds).abs() < 0.002);
        assert!((secs(&chunk.start) - expected_start).abs() < 0.002);
        assert!(chunk.audio.iter().any(|&b| b != 0), "not silence");
        let mut at = secs(&chunk.start);
        for viseme in &chunk.visemes {
            assert!((secs(&viseme.start) - at).abs() < 0.002, "no gap at {at}");
            at += secs(&viseme.duration);
        }
        assert!(
            (at - (secs(&chunk.start) + seconds)).abs() < 0.002,
            "visemes cover the model's audio"
        );
        expected_start += seconds;
    }

    // The voice's rate is checked against its own sample rate, and LipSync takes it too.
    let status = client
        .synthesize(pb::SynthesizeRequest {
            text: "Hi.".into(),
            voice: "tiny-vits".into(),
            sample_rate: 22050,
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert!(status.message().contains("16000"), "{}", status.message());
    lip_sync_covering_its_audio(&mut client, "tiny-vits").await;
}

/// grpcurl with its defaults over the socket: it sends the socket path as `:authority`,
/// which the shared listener (`arbiter::listen::serve`) rewrites rather than let h2 reset
/// the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_lists_voices_over_the_socket_without_an_authority_option() {
    use arbiter_test_kit::tools::grpcurl_ok;

    let dir = tempfile::tempdir().expect("a temp dir");
    let socket = dir.path().join("tts.sock");
    let _tts = tts::serve(&socket, &[]);
    let (_client, health) = tts::answering(&socket).await;
    assert_eq!(health, SERVING, "health says SERVING");
    let path = socket.to_str().expect("a UTF-8 socket path");

    let services = grpcurl_ok(&["-plaintext", "-unix", path, "list"]).await;
    assert!(
        services.lines().any(|l| l.trim() == "arbiter.tts.v1.Tts"),
        "{services}"
    );
    let voices = grpcurl_ok(&["-plaintext", "-unix", path, "arbiter.tts.v1.Tts/ListVoices"]).await;
    let english = voices
        .split("\"name\"")
        .find(|voice| voice.contains("\"en-us\""))
        .unwrap_or_else(|| panic!("en-us is listed: {voices}"));
    assert!(english.contains("\"backend\": \"espeak-ng\""), "{voices}");
}
