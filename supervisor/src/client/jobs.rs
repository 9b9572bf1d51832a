//! The operator's video commands: `generate` (submit and follow a job to its end), `jobs`
//! and `cancel`.

use std::path::PathBuf;

use arbiter::ByteSize;
use arbiter::pb::video::v1 as pb;
use pb::video_client::VideoClient;
use tokio_stream::StreamExt;

use super::{ClientError, channel, human, status_error};
use crate::cli::{ClientArgs, GenerateArgs};
use crate::config::Config;

fn state_name(state: i32) -> &'static str {
    match pb::JobState::try_from(state).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Queued => "queued",
        pb::JobState::Starting => "starting",
        pb::JobState::Running => "running",
        pb::JobState::Releasing => "releasing",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Unspecified => "unknown",
    }
}

/// Inline bytes for a file given with `@path` (sent to the supervisor), a path otherwise
/// (read by the supervisor, which must allow its directory).
fn media(value: &Option<String>) -> Result<Option<pb::Media>, ClientError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let source = match value.strip_prefix('@') {
        Some(path) => pb::media::Source::Data(
            std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?,
        ),
        None => pb::media::Source::Path(
            std::fs::canonicalize(value)
                .unwrap_or_else(|_| PathBuf::from(value))
                .display()
                .to_string(),
        ),
    };
    Ok(Some(pb::Media {
        source: Some(source),
    }))
}

pub async fn generate(args: &GenerateArgs, config: &Config) -> Result<(), ClientError> {
    let mut client = VideoClient::new(channel(&args.client, config).await?);
    let request = pb::VideoRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone().unwrap_or_default(),
        audio: media(&args.audio)?,
        reference_image: media(&args.image)?,
        width: args.width.unwrap_or(0),
        height: args.height.unwrap_or(0),
        frames: args.frames.unwrap_or(0),
        fps: args.fps.unwrap_or(0),
        seed: args.seed,
        steps: args.steps.unwrap_or(0),
        pipeline: args.pipeline.clone().unwrap_or_default(),
        priority: 0,
        timeout: None,
        placement: arbiter::pipeline::placement_pairs(&args.placement)?
            .into_iter()
            .collect(),
    };
    let mut stream = client
        .generate(request)
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last = String::new();
    let mut job = None;
    while let Some(update) = stream.next().await {
        let update = update.map_err(status_error)?;
        let line = describe(&update);
        if line != last {
            println!("{line}");
            last = line;
        }
        job = Some(update);
    }
    let Some(job) = job else {
        return Err("the supervisor ended the stream without a job".into());
    };
    match pb::JobState::try_from(job.state) {
        Ok(pb::JobState::Succeeded) => {
            if let Some(r) = &job.result {
                println!("video:    {} ({})", r.video_path, ByteSize(r.video_bytes));
                println!(
                    "metadata: {} ({})",
                    r.metadata_path,
                    ByteSize(r.metadata_bytes)
                );
                println!(
                    "timings:  queued {}, worker {}, memory back {} after the worker exited",
                    r.queued.map(|d| human(d, false)).unwrap_or_default(),
                    r.worker.map(|d| human(d, false)).unwrap_or_default(),
                    r.memory_return
                        .map(|d| format!(
                            "{:.3} ms",
                            std::time::Duration::try_from(d)
                                .unwrap_or_default()
                                .as_secs_f64()
                                * 1e3
                        ))
                        .unwrap_or_default(),
                );
                println!(
                    "GPU used: {} before the spawn, {} at peak, {} after release",
                    ByteSize(r.used_before_bytes),
                    ByteSize(r.used_peak_bytes),
                    ByteSize(r.used_after_bytes)
                );
            }
            Ok(())
        }
        _ => Err(format!(
            "job {} {}: {}",
            job.job_id,
            state_name(job.state),
            job.error
        )
        .into()),
    }
}

/// One line per distinct state of a job, for people.
fn describe(job: &pb::Job) -> String {
    let mut line = format!("{} {:<9}", job.job_id, state_name(job.state));
    if !job.lease_id.is_empty() {
        line.push_str(&format!(
            " lease {} ({} on {})",
            job.lease_id,
            ByteSize(job.lease_bytes),
            job.gpu_uuid
        ));
    }
    if let Some(p) = &job.progress {
        if !p.stage.is_empty() {
            line.push_str(&format!(" stage {}", p.stage));
            if p.total_steps > 0 {
                line.push_str(&format!(" {}/{}", p.step, p.total_steps));
            }
        }
        if p.vram_bytes > 0 {
            line.push_str(&format!(" vram {}", ByteSize(p.vram_bytes)));
        }
    }
    line
}

pub async fn list(args: &ClientArgs, config: &Config) -> Result<(), ClientError> {
    let mut client = VideoClient::new(channel(args, config).await?);
    let jobs = client
        .list(pb::ListJobsRequest::default())
        .await
        .map_err(status_error)?
        .into_inner()
        .jobs;
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    println!("JOB                    STATE      PIPELINE   ATTEMPT    LEASE  VIDEO OR ERROR");
    for job in jobs {
        let detail = match (&job.result, job.error.lines().next()) {
            (Some(r), _) if !r.video_path.is_empty() => r.video_path.clone(),
            (_, Some(error)) => error.to_string(),
            _ => String::new(),
        };
        println!(
            "{:<22} {:<10} {:<10} {:>7} {:>8}  {}",
            job.job_id,
            state_name(job.state),
            job.pipeline,
            job.attempt,
            ByteSize(job.lease_bytes).to_string(),
            detail
        );
    }
    Ok(())
}

pub async fn cancel(args: &ClientArgs, config: &Config, id: &str) -> Result<(), ClientError> {
    let mut client = VideoClient::new(channel(args, config).await?);
    let job = client
        .cancel(pb::GetJobRequest {
            job_id: id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("{}", describe(&job));
    Ok(())
}
