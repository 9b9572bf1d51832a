//! What the supervisor refuses before anything runs: bad video requests, naming the field
//! and the rule (sizes, pipelines, timeouts, media paths outside the allowed directories,
//! media that is not what it claims; inline WAV is accepted and muxed), and calls to the
//! internal worker service with a wrong token or from a process other than the worker.
//!
//! Each test starts its own supervisor on a simulated GPU (`arbiter_test_kit::jobs`
//! describes the test pipeline its jobs run), on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use std::path::PathBuf;

use arbiter::pb::video::v1 as vpb;
use arbiter::pb::worker::v1 as wpb;
use arbiter_test_kit::assert_refused;
use arbiter_test_kit::jobs::{
    BASE_CONFIG, FOREVER, assert_state, cancel, check_video, final_job, get, job_dir, list,
    request, running, start, submit, test_job, test_pipelines,
};
use arbiter_test_kit::media::wav_tone;
use arbiter_test_kit::supervisor::Supervisor;
use tonic::Code;
use vpb::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field_and_inline_wav_is_muxed() {
    let inputs = tempfile::tempdir().expect("a temporary directory");
    let allowed = inputs.path().join("allowed");
    let elsewhere = inputs.path().join("elsewhere");
    std::fs::create_dir(&allowed).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::write(elsewhere.join("sound.wav"), wav_tone()).unwrap();
    std::fs::write(allowed.join("not-a-wav.wav"), b"just some text, no RIFF").unwrap();
    let supervisor = Supervisor::builder()
        .gpus("4GiB")
        .config(&format!(
            "{BASE_CONFIG}allowed_input_dirs = [{:?}]\n",
            allowed.display().to_string()
        ))
        .start()
        .await;
    let video = supervisor.video_client().await;
    let tiny = |prompt: &str| request("", prompt, 0);
    let submit_raw = |request: vpb::VideoRequest| {
        let mut video = video.clone();
        async move { video.submit(request).await.map(|r| r.into_inner()) }
    };
    let invalid = Code::InvalidArgument;

    let r = vpb::VideoRequest {
        width: 100,
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["width", "100", "32"]);
    let r = vpb::VideoRequest {
        frames: 16,
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["frames", "8k+1"]);
    assert_refused(
        submit_raw(request("no-such-pipeline", "a cat", 0)).await,
        invalid,
        &["pipeline", "no-such-pipeline", "tiny"],
    );
    assert_refused(submit_raw(tiny("  ")).await, invalid, &["prompt", "empty"]);
    let r = vpb::VideoRequest {
        timeout: Some(prost_types::Duration {
            seconds: 0,
            nanos: 500_000_000,
        }),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["timeout"]);
    let audio = |source: vpb::media::Source| {
        Some(vpb::Media {
            source: Some(source),
        })
    };
    let outside = elsewhere.join("sound.wav").display().to_string();
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(outside.clone())),
        ..tiny("a cat")
    };
    let forbidden = assert_refused(
        submit_raw(r).await,
        invalid,
        &[
            "audio",
            &outside,
            "not a file inside the allowed input directories",
        ],
    );
    // A file that does not exist gets the same answer, word for word, as one that exists
    // outside: an error must not tell a caller which files exist on the host.
    let missing = elsewhere.join("no-such-sound.wav").display().to_string();
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(missing.clone())),
        ..tiny("a cat")
    };
    let absent = assert_refused(submit_raw(r).await, invalid, &["audio", &missing]);
    assert_eq!(
        absent.message().replace(&missing, "PATH"),
        forbidden.message().replace(&outside, "PATH"),
        "missing and forbidden files are refused alike"
    );
    // A priority or a timeout the wire cannot mean is refused, naming the field.
    let r = vpb::VideoRequest {
        priority: 99,
        ..tiny("a cat")
    };
    assert_refused(
        submit_raw(r).await,
        invalid,
        &["priority", "99", "PRIORITY_NORMAL"],
    );
    for (seconds, nanos) in [(5, -5), (1, 2_000_000_000), (-1, 0)] {
        let r = vpb::VideoRequest {
            timeout: Some(prost_types::Duration { seconds, nanos }),
            ..tiny("a cat")
        };
        assert_refused(submit_raw(r).await, invalid, &["timeout"]);
    }
    // Unknown states in a List are refused, not read as "every job".
    let mut listing = video.clone();
    assert_refused(
        listing
            .list(vpb::ListJobsRequest {
                states: vec![99],
                limit: 0,
            })
            .await,
        invalid,
        &["states", "99"],
    );
    // A huge pipeline name comes back as a short prefix, so the reply fits any client.
    let huge = "p".repeat(1 << 20);
    let status = assert_refused(
        submit_raw(request(&huge, "a cat", 0)).await,
        invalid,
        &["pipeline", "bytes in all"],
    );
    assert!(
        status.message().len() < 4096,
        "{} bytes",
        status.message().len()
    );
    // A way out of the allowed directory through `..` is no way out.
    let sneaky = allowed.join("../elsewhere/sound.wav").display().to_string();
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(sneaky)),
        ..tiny("a cat")
    };
    assert_refused(
        submit_raw(r).await,
        invalid,
        &["audio", "not a file inside the allowed input directories"],
    );
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Path(
            allowed.join("not-a-wav.wav").display().to_string(),
        )),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["audio", "WAV"]);
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Data(
            b"GIF89a: a picture, not a sound".to_vec(),
        )),
        ..tiny("a cat")
    };
    assert_refused(submit_raw(r).await, invalid, &["audio", "inline", "WAV"]);
    assert!(
        list(&video).await.is_empty(),
        "no refused request became a job"
    );

    // Inline WAV is saved into the job's directory, and the video gets it as its soundtrack.
    let r = vpb::VideoRequest {
        audio: audio(vpb::media::Source::Data(wav_tone())),
        seed: Some(1),
        ..tiny("a cat with a tune")
    };
    let id = submit_raw(r).await.expect("Submit with inline WAV").job_id;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    let saved = match job.request.as_ref().unwrap().audio.as_ref().unwrap().source {
        Some(vpb::media::Source::Path(ref path)) => PathBuf::from(path),
        ref other => panic!("inline audio should be recorded as its saved path: {other:?}"),
    };
    assert!(saved.starts_with(job_dir(&job)), "{}", saved.display());
    assert_eq!(std::fs::read(&saved).unwrap(), wav_tone());
    check_video(&job, 128, 128, 17, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_service_refuses_wrong_tokens_and_other_processes() {
    let pipelines = test_pipelines();
    let supervisor = start(&pipelines, "4GiB", "").await;
    let video = supervisor.video_client().await;
    let mut worker = supervisor.worker_client().await;
    let denied = Code::PermissionDenied;

    for token in ["not-a-token", ""] {
        assert_refused(
            worker
                .claim(wpb::ClaimRequest {
                    token: token.into(),
                })
                .await,
            denied,
            &["token"],
        );
        assert_refused(
            worker
                .report(wpb::ProgressReport {
                    token: token.into(),
                    ..Default::default()
                })
                .await,
            denied,
            &["token"],
        );
        assert_refused(
            worker
                .fail(wpb::Failure {
                    token: token.into(),
                    error: "no".into(),
                })
                .await,
            denied,
            &["token"],
        );
    }

    // A job's real token, read from its worker's environment, is no use to another
    // process: the kernel's peer credentials show it is not the worker.
    let id = submit(&video, test_job("a job", FOREVER)).await;
    let job = running(&video, &id).await;
    let environ = std::fs::read(format!("/proc/{}/environ", job.worker_pid)).unwrap();
    let token = environ
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .find_map(|kv| kv.strip_prefix("ARBITER_JOB_TOKEN="))
        .expect("the worker has its token")
        .to_string();
    let complete = wpb::Completion {
        token: token.clone(),
        video_path: "/etc/passwd".into(),
        metadata_path: "/etc/passwd".into(),
    };
    assert_refused(
        worker.complete(complete.clone()).await,
        denied,
        &["not the worker process"],
    );
    // Over TCP there is no peer identity at all.
    let mut tcp = supervisor.tcp_worker_client().await;
    assert_refused(tcp.complete(complete).await, denied, &[]);
    assert_refused(
        tcp.report(wpb::ProgressReport {
            token,
            ..Default::default()
        })
        .await,
        denied,
        &[],
    );

    assert_state(&get(&video, &id).await, JobState::Running);
    cancel(&video, &id).await.expect("Cancel");
    assert_state(&final_job(&video, &id).await, JobState::Cancelled);
}
