//! Video jobs on pipelines other than the built-in one: the example external command
//! (`examples/external-pipeline`: success, a crash, a refusal), and a generated staged
//! pipeline (`make-pipeline --preset tiny`): inputs normalized, stages run one by one with
//! their placements, start-up timed from the spawn, and prewarming at start.
//!
//! Each test starts its own supervisor on a simulated GPU (`arbiter_test_kit::jobs`
//! describes the test pipeline its jobs run), on a multi-threaded runtime
//! (`arbiter_test_kit::supervisor` says why). Waits are bounded by generous timeouts;
//! nothing asserts how fast something happened.

use std::path::Path;

use arbiter::pb::video::v1 as vpb;
use arbiter_test_kit::assert_refused;
use arbiter_test_kit::binaries::workspace_root;
use arbiter_test_kit::jobs::{
    BASE_CONFIG, EXAMPLE_LEASE, JOB_TIMEOUT, assert_state, check_video, final_job, nothing_leased,
    request, staged_pipelines, start, submit,
};
use arbiter_test_kit::media::{ImageFormat, audio_track, picture, wav_tone};
use arbiter_test_kit::supervisor::Supervisor;
use arbiter_test_kit::waiting::eventually;
use tonic::Code;
use vpb::JobState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_external_pipeline_succeeds_crashes_and_refuses() {
    // 8GiB: the three 2.5GiB leases fit at once.
    let supervisor = Supervisor::builder()
        .gpus("8GiB")
        .config(BASE_CONFIG)
        .pipelines_dir(workspace_root().join("examples"))
        .start()
        .await;
    let video = supervisor.video_client().await;
    let pipeline = "external-example";

    let ok = submit(&video, request(pipeline, "a test pattern", 0)).await;
    let crash = submit(&video, request(pipeline, "crash now", 0)).await;
    let refuse = submit(&video, request(pipeline, "refuse this", 0)).await;

    let job = final_job(&video, &ok).await;
    assert_state(&job, JobState::Succeeded);
    assert_eq!(job.lease_bytes, EXAMPLE_LEASE);
    check_video(&job, 256, 256, 25, false);
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&job.result.unwrap().metadata_path).unwrap())
            .unwrap();
    assert_eq!(metadata["lease_bytes"], EXAMPLE_LEASE);

    let job = final_job(&video, &crash).await;
    assert_state(&job, JobState::Failed);
    assert!(
        job.error.contains("exit status: 9") && job.error.contains("without reporting"),
        "{}",
        job.error
    );

    let job = final_job(&video, &refuse).await;
    assert_state(&job, JobState::Failed);
    assert!(
        job.error
            .contains("this example refuses prompts starting with 'refuse'"),
        "{}",
        job.error
    );
    nothing_leased(&supervisor.unix_client().await).await;
}

/// A copy of the staged pipeline in `pipelines` without its image stage (and component),
/// named `no-image`.
fn without_image_stage(pipelines: &Path) {
    let from = pipelines.join("tiny-staged");
    let to = pipelines.join("no-image");
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let path = to.join("manifest.toml");
    let mut manifest: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    manifest.insert("name".into(), "no-image".into());
    manifest["components"]
        .as_table_mut()
        .unwrap()
        .remove("image_encoder");
    manifest["stages"]
        .as_array_mut()
        .unwrap()
        .retain(|stage| stage["stage"].as_str() != Some("image"));
    std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_pipeline_job_normalizes_its_inputs_and_runs_stage_by_stage() {
    let pipelines = staged_pipelines();
    without_image_stage(pipelines.path());
    let supervisor = start(&pipelines, "8GiB", "").await;
    let video = supervisor.video_client().await;
    let client = supervisor.unix_client().await;

    // A reference image for a pipeline that has no stage to take it is refused up front.
    let mut with_image = request("no-image", "a fox", 2);
    with_image.reference_image = Some(vpb::Media {
        source: Some(vpb::media::Source::Data(picture(64, 64, ImageFormat::Png))),
    });
    assert_refused(
        video.clone().submit(with_image).await,
        Code::InvalidArgument,
        &["reference_image", "no-image", "no image stage"],
    );

    // Placements are checked against the pipeline's components before anything is queued.
    for (placement, words) in [
        (
            ("nowhere", "gpu"),
            vec!["no component `nowhere`", "text_encoder"],
        ),
        (
            ("vae_decoder", "stream"),
            vec!["cannot stream", "no blocks"],
        ),
        (("text_encoder", "fast"), vec!["not a placement"]),
    ] {
        let mut request = request("tiny-staged", "a fox", 2);
        request
            .placement
            .insert(placement.0.into(), placement.1.into());
        assert_refused(
            video.clone().submit(request).await,
            Code::InvalidArgument,
            &words,
        );
    }

    let mut request = request("tiny-staged", "a red fox in the snow", 3);
    request.seed = Some(5);
    request.audio = Some(vpb::Media {
        source: Some(vpb::media::Source::Data(wav_tone())),
    });
    request.reference_image = Some(vpb::Media {
        source: Some(vpb::media::Source::Data(picture(
            200,
            100,
            ImageFormat::Png,
        ))),
    });
    request
        .placement
        .insert("text_encoder".into(), "stream".into());
    let id = submit(&video, request).await;
    let job = final_job(&video, &id).await;
    assert_state(&job, JobState::Succeeded);
    // One second of 8 kHz mono became 17 frames at 8 fps of 16 kHz stereo, and the MP4
    // carries it as its soundtrack, as long as the video (AAC adds at most a frame or two).
    check_video(&job, 128, 128, 17, true);
    let result = job.result.as_ref().unwrap();
    let (channels, seconds) = audio_track(Path::new(&result.video_path));
    assert_eq!(channels, 2);
    assert!(
        (seconds - 17.0 / 8.0).abs() < 0.1,
        "audio lasts {seconds} s"
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&result.metadata_path).unwrap()).unwrap();
    let stages: Vec<(&str, &str)> = metadata["pipeline_stages"]
        .as_array()
        .expect("per-stage records")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap(),
                s["placement"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        stages,
        [
            ("text", "stream"),
            ("audio", "gpu"),
            ("image", "gpu"),
            ("denoise", "gpu"),
            ("upsample", "gpu"),
            ("refine", "gpu"),
            ("decode", "gpu"),
        ]
    );
    let audio = &metadata["inputs"]["audio"];
    assert_eq!(
        (audio["sample_rate"].as_u64(), audio["channels"].as_u64()),
        (Some(8000), Some(1))
    );
    assert!(
        (audio["padded_s"].as_f64().unwrap() - 1.125).abs() < 1e-3,
        "{audio}"
    );
    assert_eq!(metadata["inputs"]["image"]["width"], 200);
    assert_eq!(metadata["placements"]["text_encoder"], "stream");
    // The supervisor stamped the spawn: the worker's start-up is timed from it, and the
    // first step's overhead is what is left after the model work of the stages before it.
    let ms = |key: &str| {
        metadata[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} in {metadata}"))
    };
    let (spawn, first, overhead) = (
        ms("spawn_ms"),
        ms("first_step_ms"),
        ms("first_step_overhead_ms"),
    );
    assert!(
        spawn > 0.0 && spawn < first,
        "spawn {spawn} ms, first step {first} ms"
    );
    let before: f64 = metadata["pipeline_stages"].as_array().unwrap()[..3]
        .iter()
        .map(|s| s["load_ms"].as_f64().unwrap() + s["compute_ms"].as_f64().unwrap())
        .sum();
    assert!(
        (first - before - overhead).abs() < 0.05 && overhead > 0.0,
        "first step {first} ms, model work before it {before} ms, overhead {overhead} ms"
    );
    nothing_leased(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prewarm_the_staged_pipelines_are_read_into_the_page_cache_at_start() {
    let pipelines = staged_pipelines();
    let supervisor = start(&pipelines, "8GiB", "prewarm = true\n").await;
    eventually(JOB_TIMEOUT, "the prewarm to be logged", || {
        let log = supervisor.log();
        async move {
            (log.contains("prewarmed") && log.contains("of pipeline tiny-staged")).then_some(())
        }
    })
    .await;
}
