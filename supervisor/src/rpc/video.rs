//! `arbiter.video.v1.Video` (clients) and `arbiter.worker.v1.Worker` (spawned workers):
//! thin handlers over the job hub.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use arbiter::pb::video::v1 as pb;
use arbiter::pb::worker::v1 as wpb;
use pb::video_server::Video;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use wpb::worker_server::Worker;

use super::until::{Through, Until};
use crate::job::jobs::{Jobs, WorkerOutcome};
use crate::job::{JobRecord, JobState, run};

/// Starts the task that drives a job.
pub fn start(jobs: &Arc<Jobs>, id: String) {
    tokio::spawn(run::run(Arc::clone(jobs), id, None));
}

/// Starts jobs in the given order, each entering the lease queue before the next starts,
/// so jobs re-queued after a restart keep their turn.
pub async fn start_in_order(jobs: &Arc<Jobs>, ids: Vec<String>) {
    for id in ids {
        let (entered, queued) = tokio::sync::oneshot::channel();
        tokio::spawn(run::run(Arc::clone(jobs), id, Some(entered)));
        let _ = queued.await;
    }
}

pub struct VideoService {
    jobs: Arc<Jobs>,
    shutdown: CancellationToken,
}

impl VideoService {
    pub fn new(jobs: Arc<Jobs>, shutdown: CancellationToken) -> VideoService {
        VideoService { jobs, shutdown }
    }

    fn watch(&self, id: &str) -> Result<JobStream, Status> {
        let receiver = self.jobs.watch(id)?;
        let stream = tokio_stream::wrappers::WatchStream::new(receiver);
        // Every change, up to and including the final state.
        let stream = Through::new(stream, |record: &JobRecord| record.state.is_final())
            .map(|record| Ok(job(&record)));
        Ok(Box::pin(Until::new(stream, self.shutdown.clone())))
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Video for VideoService {
    type WatchStream = JobStream;
    type GenerateStream = JobStream;

    async fn submit(
        &self,
        request: Request<pb::VideoRequest>,
    ) -> Result<Response<pb::SubmitReply>, Status> {
        let record = self.jobs.submit(request.into_inner())?;
        let queue_position = self.jobs.list(&[JobState::Queued], usize::MAX).len() as u32;
        start(&self.jobs, record.id.clone());
        Ok(Response::new(pb::SubmitReply {
            job_id: record.id,
            queue_position: queue_position.saturating_sub(1),
        }))
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(job(&self
            .jobs
            .get(&request.into_inner().job_id)?)))
    }

    async fn watch(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<JobStream>, Status> {
        Ok(Response::new(self.watch(&request.into_inner().job_id)?))
    }

    async fn cancel(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(job(&self
            .jobs
            .cancel(&request.into_inner().job_id)?)))
    }

    async fn list(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsReply>, Status> {
        let request = request.into_inner();
        let states: Vec<JobState> = request.states().filter_map(state_from_pb).collect();
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit as usize
        };
        let jobs = self.jobs.list(&states, limit).iter().map(job).collect();
        Ok(Response::new(pb::ListJobsReply { jobs }))
    }

    async fn generate(
        &self,
        request: Request<pb::VideoRequest>,
    ) -> Result<Response<JobStream>, Status> {
        let record = self.jobs.submit(request.into_inner())?;
        let stream = self.watch(&record.id)?;
        start(&self.jobs, record.id);
        Ok(Response::new(stream))
    }
}

pub struct WorkerService {
    jobs: Arc<Jobs>,
}

impl WorkerService {
    pub fn new(jobs: Arc<Jobs>) -> WorkerService {
        WorkerService { jobs }
    }
}

/// The caller's pid from the kernel; workers only ever come over the Unix socket.
fn pid<T>(request: &Request<T>) -> Option<u32> {
    let info = request.extensions().get::<UdsConnectInfo>()?;
    info.peer_cred?.pid().and_then(|p| u32::try_from(p).ok())
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn claim(
        &self,
        request: Request<wpb::ClaimRequest>,
    ) -> Result<Response<wpb::Assignment>, Status> {
        let pid = pid(&request);
        let record = self.jobs.claim(&request.into_inner().token, pid)?;
        let pipeline = self.jobs.pipeline_dir(&record.spec.pipeline);
        Ok(Response::new(wpb::Assignment {
            job_id: record.id.clone(),
            request: Some(request_pb(&record)),
            pipeline: record.spec.pipeline.clone(),
            pipeline_dir: pipeline
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            seed: record.spec.seed,
            output_dir: record.output_dir().display().to_string(),
            lease_bytes: record.spec.lease_bytes,
            gpu_uuid: record.gpu_uuid.clone(),
            attempt: record.attempt,
            embedding_cache_dir: self
                .jobs
                .embedding_cache()
                .map(|(dir, _)| dir.display().to_string())
                .unwrap_or_default(),
            embedding_cache_bytes: self.jobs.embedding_cache().map_or(0, |(_, bytes)| bytes),
            frames_without_ffmpeg: self.jobs.frames_without_ffmpeg(),
        }))
    }

    async fn report(
        &self,
        request: Request<wpb::ProgressReport>,
    ) -> Result<Response<wpb::ReportReply>, Status> {
        let pid = pid(&request);
        let r = request.into_inner();
        let (_, cancel) = self
            .jobs
            .report(&r.token, pid, r.stage, r.step, r.total_steps)?;
        Ok(Response::new(wpb::ReportReply { cancel }))
    }

    async fn complete(
        &self,
        request: Request<wpb::Completion>,
    ) -> Result<Response<wpb::Ack>, Status> {
        let pid = pid(&request);
        let r = request.into_inner();
        let outcome = WorkerOutcome::Completed {
            video: r.video_path.into(),
            metadata: r.metadata_path.into(),
        };
        self.jobs.finish(&r.token, pid, outcome)?;
        Ok(Response::new(wpb::Ack {}))
    }

    async fn fail(&self, request: Request<wpb::Failure>) -> Result<Response<wpb::Ack>, Status> {
        let pid = pid(&request);
        let r = request.into_inner();
        self.jobs
            .finish(&r.token, pid, WorkerOutcome::Failed(r.error))?;
        Ok(Response::new(wpb::Ack {}))
    }
}

fn state_from_pb(state: pb::JobState) -> Option<JobState> {
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

fn duration(d: std::time::Duration) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(d).ok()
}

fn time(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
}

fn path_media(path: &Option<std::path::PathBuf>) -> Option<pb::Media> {
    path.as_ref().map(|p| pb::Media {
        source: Some(pb::media::Source::Path(p.display().to_string())),
    })
}

/// The request as accepted: defaults filled in, media as paths.
fn request_pb(record: &JobRecord) -> pb::VideoRequest {
    let s = &record.spec;
    pb::VideoRequest {
        prompt: s.prompt.clone(),
        negative_prompt: s.negative_prompt.clone(),
        audio: path_media(&s.audio),
        reference_image: path_media(&s.reference_image),
        width: s.width,
        height: s.height,
        frames: s.frames,
        fps: s.fps,
        seed: Some(s.seed),
        steps: s.steps,
        pipeline: s.pipeline.clone(),
        priority: super::convert::priority_to_pb(s.priority) as i32,
        timeout: duration(s.timeout),
        placement: s
            .placement
            .iter()
            .map(|(name, placement)| (name.clone(), placement.name().to_string()))
            .collect(),
    }
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
        pipeline: record.spec.pipeline.clone(),
        seed: record.spec.seed,
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
    }
}
