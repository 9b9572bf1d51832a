//! Video requests to [`JobRequest`]s, and job records back to the wire: for clients
//! (`pb::Job`) and for the worker that runs the job (`Assignment`).

use std::path::Path;
use std::time::{Duration, SystemTime};

use arbiter::pb::video::v1 as pb;
use arbiter::pb::worker::v1 as wpb;
use pb::media::Source;

use super::{duration as duration_from_pb, priority, priority_to_pb};
use crate::job::{JobError, JobRecord, JobRequest, JobState, Media};

/// The wire request as plain values; what can be malformed on the wire itself (the
/// timeout, the priority's number) is refused here, the rest by `job::spec`.
pub fn job_request(request: pb::VideoRequest) -> Result<JobRequest, JobError> {
    let timeout = duration_from_pb(request.timeout).map_err(|rule| JobError::Invalid {
        field: "timeout",
        rule,
    })?;
    let priority = priority(request.priority).map_err(|rule| JobError::Invalid {
        field: "priority",
        rule,
    })?;
    Ok(JobRequest {
        shape: (&request).into(),
        prompt: request.prompt,
        negative_prompt: request.negative_prompt,
        audio: media(request.audio),
        reference_image: media(request.reference_image),
        seed: request.seed,
        pipeline: request.pipeline,
        priority,
        timeout,
        placement: request.placement.into_iter().collect(),
    })
}

fn media(media: Option<pb::Media>) -> Option<Media> {
    match media?.source? {
        Source::Data(data) => Some(Media::Inline(data)),
        Source::Path(path) => Some(Media::Path(path.into())),
    }
}

fn path_media(path: Option<&Path>) -> Option<pb::Media> {
    path.map(|p| pb::Media {
        source: Some(Source::Path(p.display().to_string())),
    })
}

/// The request as accepted: defaults filled in, media as paths.
fn request_pb(record: &JobRecord) -> pb::VideoRequest {
    let s = &record.spec;
    let r = &s.request;
    pb::VideoRequest {
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        audio: path_media(r.audio.as_deref()),
        reference_image: path_media(r.reference_image.as_deref()),
        width: r.shape.width,
        height: r.shape.height,
        frames: r.shape.frames,
        fps: r.shape.fps,
        seed: Some(r.seed),
        steps: r.shape.steps,
        pipeline: r.pipeline.clone(),
        priority: priority_to_pb(s.priority) as i32,
        timeout: duration(s.timeout),
        placement: r
            .placement
            .iter()
            .map(|(name, placement)| (name.clone(), placement.name().to_string()))
            .collect(),
    }
}

/// What the worker is told to run. The caller adds what only the job hub knows.
pub struct AssignmentExtras {
    pub pipeline_dir: Option<std::path::PathBuf>,
    pub embedding_cache: Option<(std::path::PathBuf, u64)>,
    pub frames_without_ffmpeg: bool,
}

pub fn assignment(record: &JobRecord, extras: AssignmentExtras) -> wpb::Assignment {
    wpb::Assignment {
        job_id: record.id.clone(),
        request: Some(request_pb(record)),
        pipeline: record.spec.request.pipeline.clone(),
        pipeline_dir: extras
            .pipeline_dir
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        seed: record.spec.request.seed,
        output_dir: record.output_dir().display().to_string(),
        lease_bytes: record.spec.lease_bytes,
        gpu_uuid: record.gpu_uuid.clone(),
        attempt: record.attempt,
        embedding_cache_dir: extras
            .embedding_cache
            .as_ref()
            .map(|(dir, _)| dir.display().to_string())
            .unwrap_or_default(),
        embedding_cache_bytes: extras.embedding_cache.map_or(0, |(_, bytes)| bytes),
        frames_without_ffmpeg: extras.frames_without_ffmpeg,
    }
}

/// The states a List asks for. A number the enum does not name is refused: ignoring it
/// would turn `states = [99]` into "every job".
pub fn states_from_pb(states: &[i32]) -> Result<Vec<JobState>, JobError> {
    states
        .iter()
        .map(|&value| {
            pb::JobState::try_from(value)
                .ok()
                .and_then(state_from_pb)
                .ok_or_else(|| JobError::Invalid {
                    field: "states",
                    rule: format!(
                        "holds {value}, which is not a job state: use JOB_STATE_QUEUED (1) to JOB_STATE_CANCELLED (7), or leave states empty for every job"
                    ),
                })
        })
        .collect()
}

pub fn state_from_pb(state: pb::JobState) -> Option<JobState> {
    Some(match state {
        pb::JobState::Queued => JobState::Queued,
        pb::JobState::Starting => JobState::Starting,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Releasing => JobState::Releasing,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
        pb::JobState::Unspecified => return None,
    })
}

fn state_pb(state: JobState) -> pb::JobState {
    match state {
        JobState::Queued => pb::JobState::Queued,
        JobState::Starting => pb::JobState::Starting,
        JobState::Running => pb::JobState::Running,
        JobState::Releasing => pb::JobState::Releasing,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn duration(d: Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn time(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
}

pub fn job(record: &JobRecord) -> pb::Job {
    let elapsed = record.started_at.and_then(|at| {
        let end = record.finished_at.unwrap_or_else(SystemTime::now);
        end.duration_since(at).ok()
    });
    pb::Job {
        job_id: record.id.clone(),
        state: state_pb(record.state) as i32,
        request: Some(request_pb(record)),
        pipeline: record.spec.request.pipeline.clone(),
        seed: record.spec.request.seed,
        attempt: record.attempt,
        progress: Some(pb::Progress {
            stage: record.progress.stage.clone(),
            step: record.progress.step,
            total_steps: record.progress.total_steps,
            elapsed: elapsed.and_then(duration),
            vram_bytes: record.progress.vram_bytes,
            peak_vram_bytes: record.progress.peak_vram_bytes,
        }),
        result: record.result.as_ref().map(|r| pb::Result {
            video_path: r.video_path.display().to_string(),
            video_bytes: r.video_bytes,
            metadata_path: r.metadata_path.display().to_string(),
            metadata_bytes: r.metadata_bytes,
            queued: duration(r.queued),
            worker: duration(r.worker),
            memory_return: duration(r.memory_return),
            used_before_bytes: r.used_before,
            used_peak_bytes: r.used_peak,
            used_after_bytes: r.used_after,
        }),
        error: record.error.clone(),
        created_at: time(Some(record.created_at)),
        started_at: time(record.started_at),
        finished_at: time(record.finished_at),
        lease_id: record.lease_id.clone(),
        gpu_uuid: record.gpu_uuid.clone(),
        lease_bytes: record.spec.lease_bytes,
        worker_pid: record.worker_pid.unwrap_or(0),
        log_path: record.log_path().display().to_string(),
        queue_position: 0,
        prestarted: record.prestarted,
    }
}
