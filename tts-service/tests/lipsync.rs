//! Lip-sync through the real `arbiter-tts serve` binary over its Unix socket, with the model
//! scripts/make-test-lipsync.py writes (random weights) and no GPU lease: timelines from
//! audio, mouth frames, a text's frames a sentence at a time (and that they are its whole
//! speech's), the status, and refusals that name the field.

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

/// A LipSyncStream's messages by the sentence each begins with its timeline: that share of
/// the timeline, the `render` it carries, and the frames that follow it.
struct Sentence {
    timeline: pb::LipSyncReply,
    render: Option<pb::MouthRender>,
    frames: Vec<pb::MouthFrame>,
}

impl Sentence {
    fn end(&self) -> f64 {
        secs(&self.timeline.duration)
    }
}

const FPS: f64 = 25.0;
const FRAME: f64 = 1.0 / FPS;
const SENTENCES: &str = "Peter picked a peck of pickled peppers. Where is the peck he picked? \
                         Nobody knows where Peter put the peppers he picked.";

/// The LipSyncStream of `SENTENCES` spoken by `voice` with a face, RGB24 frames, checked
/// to come a sentence at a time: each sentence's timeline, then the frames its audio
/// completes (the first sentence's before anything of the second), every frame once, in
/// order, frame `i` at `i / fps`, as many as the last `render` says.
async fn streamed_by_sentence(
    client: &mut TtsClient<Channel>,
    voice: &str,
    face: Vec<u8>,
) -> Vec<Sentence> {
    let mut request = face_request(Input::Text(SENTENCES.into()), face);
    request.voice = voice.into();
    request.frame_format = pb::FrameFormat::Rgb24 as i32;
    let chunks = lip_sync_stream(client, request)
        .await
        .expect("LipSyncStream of a text");
    assert!(chunks[0].timeline.is_some() && chunks[0].render.is_some());
    let mut sentences: Vec<Sentence> = Vec::new();
    for chunk in &chunks {
        if let Some(timeline) = &chunk.timeline {
            assert!(chunk.frame.is_none(), "a timeline comes alone: {chunk:?}");
            sentences.push(Sentence {
                timeline: timeline.clone(),
                render: chunk.render.clone(),
                frames: Vec::new(),
            });
        }
        if let Some(frame) = &chunk.frame {
            sentences.last_mut().unwrap().frames.push(frame.clone());
        }
    }
    assert_eq!(sentences.len(), 3, "one timeline a sentence");
    let ends: Vec<f64> = sentences.iter().map(Sentence::end).collect();
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");

    // Each sentence's frames are those of its audio: none after its end, none missing but
    // a last partial one (which the next sentence completes). The timeline's ends are whole
    // milliseconds, rounded down a sentence at a time: a few ms of slack. The very last
    // frame is rounded half up, so it may end after the audio.
    for (k, sentence) in sentences.iter().enumerate() {
        let before = if k == 0 { 0.0 } else { ends[k - 1] };
        let slack = if k + 1 == sentences.len() {
            FRAME
        } else {
            0.005
        };
        assert!(!sentence.frames.is_empty(), "frames for sentence {k}");
        for f in &sentence.frames {
            let (start, end) = (secs(&f.start), secs(&f.start) + secs(&f.duration));
            assert!(
                end <= ends[k] + slack,
                "sentence {k} ends at {}; frame {} ends at {end}",
                ends[k],
                f.index
            );
            assert!(
                start >= before - 2.0 * FRAME,
                "frame {} of sentence {k} waited only for the sentence before",
                f.index
            );
        }
        let last = sentence.frames.last().unwrap();
        let last_end = secs(&last.start) + secs(&last.duration);
        assert!(
            last_end > ends[k] - 2.0 * FRAME,
            "sentence {k}'s frames go to its end ({}), not {last_end}",
            ends[k]
        );
        for v in &sentence.timeline.visemes {
            assert!(secs(&v.start) >= before - 1e-6 && secs(&v.start) < ends[k]);
        }
    }

    let frames: Vec<&pb::MouthFrame> = sentences.iter().flat_map(|s| &s.frames).collect();
    let counts: Vec<u32> = sentences
        .iter()
        .map(|s| s.render.as_ref().expect("a render a sentence").frame_count)
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(
        frames.len(),
        counts[2] as usize,
        "the last render counts them all"
    );
    assert!(
        (f64::from(counts[2]) - ends[2] * FPS).abs() <= 1.0,
        "{} frames for {} s",
        counts[2],
        ends[2]
    );
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.index as usize, i);
        assert!((secs(&f.start) - i as f64 / FPS).abs() < 1e-6);
        assert!((secs(&f.duration) - FRAME).abs() < 1e-6);
        assert_eq!(f.image.len(), 48 * 48 * 3);
    }
    assert!(chunks.last().unwrap().last);
    assert_eq!(chunks.iter().filter(|c| c.last).count(), 1);
    sentences
}

/// The unary LipSync of `SENTENCES` spoken by `voice`.
async fn unary_timeline(client: &mut TtsClient<Channel>, voice: &str) -> pb::LipSyncReply {
    client
        .lip_sync(pb::LipSyncRequest {
            input: Some(Input::Text(SENTENCES.into())),
            voice: voice.into(),
            ..Default::default()
        })
        .await
        .expect("LipSync of the text")
        .into_inner()
}

/// With eSpeak NG: a text's mouth frames and timeline stream a sentence at a time, and
/// without a face the timeline alone does, one message a sentence. eSpeak NG speaks the
/// same sentence a little differently from one call to the next (a few ms; it keeps state
/// between calls), so comparisons across calls allow for that; the next test compares
/// exactly, with a voice that does not.
#[tokio::test]
async fn a_texts_mouth_frames_stream_a_sentence_at_a_time() {
    let mut served = serve_with_model(&[]).await;
    let client = &mut served.client;
    let face = picture(80, 80, image::ImageFormat::Png);
    let sentences = streamed_by_sentence(client, "", face).await;
    let end = sentences[2].end();

    let unary = unary_timeline(client, "").await;
    assert!((secs(&unary.duration) - end).abs() < 0.2, "{unary:?}");
    let covered: f64 = unary.visemes.iter().map(|v| secs(&v.duration)).sum();
    assert!(
        (covered - secs(&unary.duration)).abs() < 0.005,
        "the sentences' visemes cover the whole speech"
    );

    let timelines = lip_sync_stream(
        client,
        pb::LipSyncRequest {
            input: Some(Input::Text(SENTENCES.into())),
            ..Default::default()
        },
    )
    .await
    .expect("LipSyncStream of a text without a face");
    assert_eq!(timelines.len(), 3, "one message a sentence");
    assert!(
        timelines
            .iter()
            .all(|c| c.timeline.is_some() && c.render.is_none() && c.frame.is_none())
    );
    let ends: Vec<f64> = timelines
        .iter()
        .map(|c| secs(&c.timeline.as_ref().unwrap().duration))
        .collect();
    assert!(ends.windows(2).all(|w| w[0] < w[1]), "{ends:?}");
    assert!(timelines[2].last && !timelines[0].last && !timelines[1].last);
}

/// With a voice whose audio is the same at every call (a generated TorchScript voice at
/// 22050 Hz, resampled for the 16 kHz model, so sentences end off frame boundaries): the
/// streamed frames are those of the whole speech rendered at once (Synthesize's audio sent
/// back as audio): as many, with the same indices and times, and, since the test model
/// draws each frame from its own audio only, the same pixels. The unary LipSync's timeline
/// ends where the streamed one does, and Synthesize's sentences end where its shares do.
#[tokio::test]
async fn a_texts_streamed_mouth_frames_are_those_of_its_whole_speech() {
    let voices = tempfile::tempdir().unwrap();
    let voice_dir = voices.path().join("tiny-vits");
    tts::make_voice(&voice_dir, &[]);
    let mut served = serve_with_model(&["--voice-dir", voice_dir.to_str().unwrap()]).await;
    let client = &mut served.client;
    let face = picture(80, 80, image::ImageFormat::Png);
    let sentences = streamed_by_sentence(client, "tiny-vits", face.clone()).await;
    let ends: Vec<f64> = sentences.iter().map(Sentence::end).collect();
    let frames: Vec<&pb::MouthFrame> = sentences.iter().flat_map(|s| &s.frames).collect();

    let unary = unary_timeline(client, "tiny-vits").await;
    assert_eq!(unary.duration, sentences[2].timeline.duration);
    let streamed: usize = sentences.iter().map(|s| s.timeline.visemes.len()).sum();
    assert_eq!(
        unary.visemes.len(),
        streamed,
        "the sentences' visemes together"
    );

    let mut stream = client
        .synthesize(pb::SynthesizeRequest {
            text: SENTENCES.into(),
            voice: "tiny-vits".into(),
            ..Default::default()
        })
        .await
        .expect("Synthesize")
        .into_inner();
    let (mut audio, mut rate, mut synthesized) = (Vec::new(), 0, Vec::new());
    while let Some(chunk) = stream.message().await.expect("a chunk") {
        audio.extend_from_slice(&chunk.audio);
        rate = chunk.sample_rate;
        synthesized.push(secs(&chunk.start) + secs(&chunk.duration));
    }
    assert_eq!(rate, 22050);
    assert_eq!(synthesized.len(), 3, "the sentences Synthesize speaks");
    for (synthesized, end) in synthesized.iter().zip(&ends) {
        assert!((synthesized - end).abs() < 1e-6, "{synthesized} and {end}");
    }
    let mut request = face_request(
        Input::Audio(pb::AudioInput {
            data: audio,
            format: pb::AudioFormat::PcmS16le as i32,
            sample_rate: rate,
        }),
        face,
    );
    request.frame_format = pb::FrameFormat::Rgb24 as i32;
    let whole = lip_sync_stream(client, request)
        .await
        .expect("LipSyncStream of the same audio");
    assert_eq!(
        whole[0].render.as_ref().unwrap().frame_count as usize,
        frames.len()
    );
    let whole: Vec<&pb::MouthFrame> = whole.iter().filter_map(|c| c.frame.as_ref()).collect();
    assert_eq!(whole.len(), frames.len());
    // Sentence ends fall inside one-second windows, which are then rendered in pieces; the
    // one such split that may change the test model's pixels (lip_sync::windows), in the
    // last window, this text does not have.
    assert!(
        ends[..2].iter().all(|&end| end < ends[2].floor()),
        "the last sentence starts before the last second: {ends:?}"
    );
    for (i, (streamed, whole)) in frames.iter().zip(&whole).enumerate() {
        assert_eq!(
            (streamed.index, streamed.start, streamed.duration),
            (whole.index, whole.start, whole.duration)
        );
        assert!(streamed.image == whole.image, "frame {i} is the whole's");
    }
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
