//! Lip-sync through the real `arbiter-tts serve` binary over its Unix socket, with the model
//! scripts/make-test-lipsync.py writes (random weights) and no GPU lease: timelines from
//! audio, mouth frames, the status, and refusals that name the field.

use arbiter::pb::tts::v1 as pb;
use arbiter_test_kit::assert_refused;
use arbiter_test_kit::binaries;
use arbiter_test_kit::media::{picture, tone};
use arbiter_test_kit::processes::Process;
use arbiter_test_kit::tts::{
    self, connected, face_request, lip_sync_stream, make_lipsync, pcm, secs,
};
use pb::lip_sync_request::Input;
use pb::tts_client::TtsClient;
use tonic::Code;
use tonic::transport::Channel;

struct Served {
    _tts: Process,
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    client: TtsClient<Channel>,
}

/// The service with a 48-pixel, 25 fps test model (and `extra` flags).
async fn serve_with_model(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().expect("a temp dir");
    let model = dir.path().join("tiny-lipsync");
    make_lipsync(&model, &["--face-size", "48", "--fps", "25"]);
    let socket = dir.path().join("tts.sock");
    let mut args = vec!["--lipsync-dir", model.to_str().expect("a UTF-8 temp path")];
    args.extend_from_slice(extra);
    let tts = tts::serve(&socket, &args);
    let client = connected(&socket).await;
    Served {
        _tts: tts,
        dir,
        socket,
        client,
    }
}

/// Checks that `visemes` tile 0..`duration` in order; returns them as (name, start, end).
fn tiled(reply: &pb::LipSyncReply) -> Vec<(String, f64, f64)> {
    let mut at = 0.0;
    let mut out = Vec::new();
    for v in &reply.visemes {
        assert!(
            (secs(&v.start) - at).abs() < 0.0005,
            "no gap or overlap at {at}: {reply:?}"
        );
        assert!(secs(&v.duration) > 0.0);
        assert!(v.id < 15);
        out.push((v.name.clone(), at, at + secs(&v.duration)));
        at += secs(&v.duration);
    }
    assert!(
        (at - secs(&reply.duration)).abs() < 0.0005,
        "the visemes cover the audio"
    );
    out
}

#[tokio::test]
async fn lip_sync_from_audio_covers_it_in_order_and_silence_is_closed() {
    let mut served = serve_with_model(&[]).await;
    let client = &mut served.client;

    // The result of a Synthesize (WAV, two sentences), sent back as it came.
    let mut stream = client
        .synthesize(pb::SynthesizeRequest {
            text: "Hello world. This is Arbiter speaking.".into(),
            format: pb::AudioFormat::Wav as i32,
            ..Default::default()
        })
        .await
        .expect("Synthesize")
        .into_inner();
    let (mut wav, mut spoken) = (Vec::new(), 0.0);
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        wav.extend_from_slice(&chunk.audio);
        spoken += secs(&chunk.duration);
    }
    let reply = client
        .lip_sync(pb::LipSyncRequest {
            input: Some(Input::Audio(pb::AudioInput {
                data: wav,
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("LipSync from audio")
        .into_inner();
    assert!(
        (secs(&reply.duration) - spoken).abs() < 0.005,
        "the audio's length"
    );
    let spans = tiled(&reply);
    assert!(
        spans.iter().any(|s| s.0 != "sil"),
        "speech opens the mouth: {spans:?}"
    );
    assert!(
        spans
            .iter()
            .all(|s| ["sil", "E", "aa"].contains(&s.0.as_str())),
        "from audio only closed, half open and open: {spans:?}"
    );

    // Silence, a tone, silence: closed, open, closed, at the right times.
    let mut samples = vec![0i16; 8000];
    samples.extend(tone(1.0, 16000));
    samples.extend(vec![0i16; 8000]);
    let reply = client
        .lip_sync(pb::LipSyncRequest {
            input: Some(Input::Audio(pcm(&samples, 16000))),
            ..Default::default()
        })
        .await
        .expect("LipSync from PCM")
        .into_inner();
    let spans = tiled(&reply);
    assert_eq!(secs(&reply.duration), 2.0);
    assert_eq!(spans.first().map(|s| s.0.as_str()), Some("sil"));
    assert!(
        (spans[0].2 - 0.5).abs() < 0.03,
        "closed until the tone: {spans:?}"
    );
    assert_eq!(spans.last().map(|s| s.0.as_str()), Some("sil"));
    assert!(
        (spans.last().unwrap().1 - 1.5).abs() < 0.03,
        "closed after it: {spans:?}"
    );
    assert!(
        spans[1..spans.len() - 1].iter().all(|s| s.0 != "sil"),
        "{spans:?}"
    );

    // Only silence: one closed mouth over all of it.
    let reply = client
        .lip_sync(pb::LipSyncRequest {
            input: Some(Input::Audio(pcm(&vec![0i16; 22050], 22050))),
            ..Default::default()
        })
        .await
        .expect("LipSync of silence")
        .into_inner();
    assert_eq!(tiled(&reply), [("sil".to_string(), 0.0, 1.0)]);
}

#[tokio::test]
async fn mouth_frames_from_the_generated_model_match_the_audio_and_the_face_size() {
    let mut served = serve_with_model(&[]).await;
    let client = &mut served.client;
    let face = picture(200, 160, image::ImageFormat::Png);

    // 2.4 s at 16 kHz and 25 fps: 60 frames of 48 x 48, PNG.
    let chunks = lip_sync_stream(
        client,
        face_request(Input::Audio(pcm(&tone(2.4, 16000), 16000)), face.clone()),
    )
    .await
    .expect("LipSyncStream");
    let first = &chunks[0];
    let timeline = first.timeline.as_ref().expect("the timeline first");
    assert!((secs(&timeline.duration) - 2.4).abs() < 0.001);
    let render = first.render.as_ref().expect("how frames are rendered");
    assert_eq!((render.width, render.height, render.fps), (48, 48, 25));
    assert_eq!(render.frame_count, 60, "duration * fps");
    assert_eq!(render.format, pb::FrameFormat::Png as i32);
    assert_eq!(render.device, "cpu");
    assert!(!render.leased, "no lease configured");
    assert!(render.note.contains("no lip-sync lease"), "{}", render.note);
    assert!(!first.last && first.frame.is_none());
    let frames: Vec<&pb::MouthFrame> = chunks[1..]
        .iter()
        .filter_map(|c| c.frame.as_ref())
        .collect();
    assert_eq!(frames.len(), 60);
    assert_eq!(chunks.len(), 61, "one frame a message");
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.index as usize, i);
        assert!((secs(&frame.start) - i as f64 / 25.0).abs() < 1e-6);
        assert!((secs(&frame.duration) - 0.04).abs() < 1e-6);
        assert_eq!(frame.device, "cpu");
        let decoded = image::load_from_memory_with_format(&frame.image, image::ImageFormat::Png)
            .expect("a PNG");
        assert_eq!((decoded.width(), decoded.height()), (48, 48));
    }
    assert!(chunks.last().unwrap().last);
    assert_eq!(chunks.iter().filter(|c| c.last).count(), 1);

    // Text with a JPEG face, raw RGB frames: as many as the speech's length implies.
    let jpeg = picture(64, 64, image::ImageFormat::Jpeg);
    let mut request = face_request(Input::Text("Peter picked a pepper.".into()), jpeg);
    request.frame_format = pb::FrameFormat::Rgb24 as i32;
    let chunks = lip_sync_stream(client, request)
        .await
        .expect("LipSyncStream from text");
    let timeline = chunks[0].timeline.as_ref().unwrap();
    let render = chunks[0].render.as_ref().unwrap();
    let expected = secs(&timeline.duration) * 25.0;
    assert!(
        (f64::from(render.frame_count) - expected).abs() <= 1.0,
        "{} frames for {expected}",
        render.frame_count
    );
    assert!(
        timeline.visemes.iter().any(|v| v.name == "PP"),
        "text keeps its phoneme visemes"
    );
    let frames: Vec<&pb::MouthFrame> = chunks.iter().filter_map(|c| c.frame.as_ref()).collect();
    assert_eq!(frames.len(), render.frame_count as usize);
    assert!(
        frames.iter().all(|f| f.image.len() == 48 * 48 * 3),
        "raw RGB"
    );

    // Without a face: the timeline only, in one message.
    let chunks = lip_sync_stream(
        client,
        pb::LipSyncRequest {
            input: Some(Input::Audio(pcm(&tone(0.5, 16000), 16000))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(chunks.len(), 1);
    assert!(chunks[0].last && chunks[0].timeline.is_some() && chunks[0].render.is_none());

    // The status says where the model is and counts the windows rendered without a lease.
    let status = client
        .get_lip_sync_status(pb::GetLipSyncStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.model, "tiny-lipsync");
    assert_eq!(
        (status.face_size, status.fps, status.sample_rate),
        (48, 25, 16000)
    );
    assert_eq!(status.residency, pb::LipSyncResidency::CpuOnly as i32);
    assert_eq!(status.device, "cpu");
    assert!(status.fallback_windows >= 3 + 2, "{status:?}");
    assert_eq!(status.leased_windows, 0);
}

#[tokio::test]
async fn bad_lip_sync_inputs_are_refused_naming_the_field() {
    let mut served =
        serve_with_model(&["--max-audio-seconds", "2", "--max-face-bytes", "64KiB"]).await;
    let client = &mut served.client;
    let audio = |input: pb::AudioInput| pb::LipSyncRequest {
        input: Some(Input::Audio(input)),
        ..Default::default()
    };
    let ok_audio = pcm(&tone(0.5, 16000), 16000);
    let mut with_voice = audio(ok_audio.clone());
    with_voice.voice = "en-us".into();
    let mut face_on_unary = audio(ok_audio.clone());
    face_on_unary.face_image = picture(32, 32, image::ImageFormat::Png);
    for (request, field, rule) in [
        (pb::LipSyncRequest::default(), "input", "missing"),
        (audio(pb::AudioInput::default()), "audio.data", "empty"),
        (
            audio(pb::AudioInput {
                sample_rate: 0,
                ..ok_audio.clone()
            }),
            "audio.sample_rate",
            "raw PCM needs its rate",
        ),
        (
            audio(pb::AudioInput {
                data: vec![0; 11],
                ..ok_audio.clone()
            }),
            "audio.data",
            "odd",
        ),
        (
            audio(pb::AudioInput {
                data: b"RIFF\x04\0\0\0WAVE".to_vec(),
                format: 0,
                sample_rate: 0,
            }),
            "audio.data",
            "WAV",
        ),
        (
            audio(pcm(&tone(3.0, 16000), 16000)),
            "audio.data",
            "limit of 2 s",
        ),
        (
            audio(pb::AudioInput {
                format: 9,
                ..ok_audio.clone()
            }),
            "audio.format",
            "not an AudioFormat",
        ),
        (with_voice, "voice", "leave voice empty"),
        (face_on_unary, "face_image", "LipSyncStream"),
    ] {
        assert_refused(
            client.lip_sync(request).await,
            Code::InvalidArgument,
            &[field, rule],
        );
    }

    let streamed = |face: Vec<u8>, format: i32| {
        let mut request = face_request(Input::Audio(ok_audio.clone()), face);
        request.frame_format = format;
        request
    };
    let big = vec![0u8; 65 << 10];
    for (request, field, rule) in [
        (
            streamed(b"GIF89a....".to_vec(), 0),
            "face_image",
            "not a PNG or JPEG",
        ),
        (
            streamed(picture(8, 40, image::ImageFormat::Png), 0),
            "face_image",
            "at least 16",
        ),
        (streamed(big, 0), "face_image", "over the limit"),
        (
            streamed(picture(32, 32, image::ImageFormat::Png)[..50].to_vec(), 0),
            "face_image",
            "cannot be decoded",
        ),
        (
            streamed(picture(32, 32, image::ImageFormat::Png), 7),
            "frame_format",
            "not a FrameFormat",
        ),
    ] {
        assert_refused(
            lip_sync_stream(client, request).await,
            Code::InvalidArgument,
            &[field, rule],
        );
    }

    // A service without a lip-sync model cannot render a face: it says how to get one.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("tts.sock");
    let _plain = tts::serve(&socket, &[]);
    let mut plain = connected(&socket).await;
    let status = lip_sync_stream(
        &mut plain,
        face_request(
            Input::Audio(ok_audio),
            picture(32, 32, image::ImageFormat::Png),
        ),
    )
    .await
    .expect_err("refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("--lipsync-dir"),
        "{}",
        status.message()
    );
    let status = plain
        .get_lip_sync_status(pb::GetLipSyncStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.residency, pb::LipSyncResidency::None as i32);
}

/// `arbiter-tts lip-sync`, the client for scripts: one PNG file per frame of the audio, of
/// the model's size, and a report (also as JSON) of where they were rendered; a text works
/// as well as a WAV; a missing face is refused naming the file.
#[tokio::test]
async fn the_lip_sync_client_writes_the_frames_and_says_where_they_were_rendered() {
    let served = serve_with_model(&[]).await;
    let dir = served.dir.path();
    let face = dir.join("face.png");
    std::fs::write(&face, picture(64, 64, image::ImageFormat::Png)).unwrap();
    let audio = dir.join("speech.wav");
    std::fs::write(&audio, arbiter::wav::encode(&tone(1.0, 16000), 16000, 1)).unwrap();
    let client = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(binaries::tts())
            .arg("lip-sync")
            .arg("--socket")
            .arg(&served.socket)
            .args(args)
            .output()
            .expect("arbiter-tts lip-sync runs")
    };

    let frames = dir.join("frames");
    let report = dir.join("report.json");
    let out = client(&[
        "--face".as_ref(),
        face.as_os_str(),
        "--audio".as_ref(),
        audio.as_os_str(),
        "--out".as_ref(),
        frames.as_os_str(),
        "--json".as_ref(),
        report.as_os_str(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("wrote 25 frames (48x48 at 25 fps)"),
        "{stdout}"
    );
    let mut written: Vec<String> = std::fs::read_dir(&frames)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let expected: Vec<String> = (0..25).map(|i| format!("frame-{i:05}.png")).collect();
    assert_eq!(written, expected);
    let last = image::open(frames.join("frame-00024.png")).expect("a PNG frame");
    assert_eq!((last.width(), last.height()), (48, 48));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["frames"], 25);
    assert_eq!(json["leased"], false);
    assert_eq!(json["device"], "cpu");
    assert_eq!(json["frames_on"], serde_json::json!([["cpu", 25]]));
    assert_eq!(json["residency"], "LIP_SYNC_RESIDENCY_CPU_ONLY");

    let spoken = dir.join("spoken");
    let out = client(&[
        "--face".as_ref(),
        face.as_os_str(),
        "--text".as_ref(),
        "Hello there.".as_ref(),
        "--out".as_ref(),
        spoken.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_dir(&spoken).unwrap().count() > 0);

    let missing = dir.join("no-such-face.png");
    let out = client(&[
        "--face".as_ref(),
        missing.as_os_str(),
        "--audio".as_ref(),
        audio.as_os_str(),
        "--out".as_ref(),
        dir.join("never").as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read the face") && stderr.contains("no-such-face.png"),
        "{stderr}"
    );
}
