//! `arbiter.video.v1.Video`: the clients' job API, thin handlers over the job hub.

use std::pin::Pin;
use std::sync::Arc;

use arbiter::pb::video::v1 as pb;
use pb::video_server::Video;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::convert::job::{job, job_request, state_from_pb};
use super::until::{Through, Until};
use crate::job::jobs::Jobs;
use crate::job::run::start;
use crate::job::{JobRecord, JobState};

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
        let record = self.jobs.submit(job_request(request.into_inner())?)?;
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
        let record = self.jobs.submit(job_request(request.into_inner())?)?;
        let stream = self.watch(&record.id)?;
        start(&self.jobs, record.id);
        Ok(Response::new(stream))
    }
}
