//! `arbiter.worker.v1.Worker`: the internal service spawned workers call to claim their job
//! (with the one-time token and the pid the kernel reports), report progress, and end it.

use std::sync::Arc;

use arbiter::pb::worker::v1 as wpb;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use wpb::worker_server::Worker;

use super::convert::job::{AssignmentExtras, assignment};
use crate::job::jobs::{Jobs, WorkerOutcome};

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
        let extras = AssignmentExtras {
            pipeline_dir: self.jobs.pipeline_dir(&record.spec.request.pipeline),
            embedding_cache: self.jobs.embedding_cache(),
            frames_without_ffmpeg: self.jobs.frames_without_ffmpeg(),
        };
        Ok(Response::new(assignment(&record, extras)))
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
