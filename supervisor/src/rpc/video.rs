//! `arbiter.video.v1.Video`: the clients' job API, thin handlers over the job hub.

use std::pin::Pin;
use std::sync::Arc;

use arbiter::pb::video::v1 as pb;
use pb::video_server::Video;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth::{CallerPolicy, actor};
use super::convert::job::{job, job_request, states_from_pb};
use super::until::{Through, Until};
use crate::job::jobs::Jobs;
use crate::job::run::start;
use crate::job::{JobError, JobRecord, JobState};
use arbiter::auth::Caller;

pub struct VideoService {
    jobs: Arc<Jobs>,
    policy: Arc<CallerPolicy>,
    shutdown: CancellationToken,
}

impl VideoService {
    pub fn new(
        jobs: Arc<Jobs>,
        policy: Arc<CallerPolicy>,
        shutdown: CancellationToken,
    ) -> VideoService {
        VideoService {
            jobs,
            policy,
            shutdown,
        }
    }

    /// Accepts a request from the caller, as its owner, within its job quota.
    fn submit(&self, request: Request<pb::VideoRequest>) -> Result<JobRecord, Status> {
        let caller = Caller::of(&request)?;
        let limits = self.policy.limits(&caller.identity);
        Ok(self.jobs.submit(
            job_request(request.into_inner())?,
            caller.owner(),
            Some(limits.queued_jobs),
        )?)
    }

    /// The job `id`, if the caller may see it: its owner or an operator. Someone else's
    /// job is refused as PERMISSION_DENIED (ids are random; only operators list others').
    fn owned<T>(&self, request: &Request<T>, id: &str) -> Result<JobRecord, Status> {
        let caller = Caller::of(request)?;
        let record = self.jobs.get(id)?;
        if !actor(&caller).may_act_for(&record.owner) {
            return Err(JobError::NotOwner(id.to_string()).into());
        }
        Ok(record)
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
        let record = self.submit(request)?;
        let queue_position = self.jobs.list(&[JobState::Queued], usize::MAX).len() as u32;
        start(&self.jobs, record.id.clone());
        Ok(Response::new(pb::SubmitReply {
            job_id: record.id,
            queue_position: queue_position.saturating_sub(1),
        }))
    }

    async fn get(&self, request: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let record = self.owned(&request, &request.get_ref().job_id)?;
        Ok(Response::new(job(&record)))
    }

    async fn watch(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<JobStream>, Status> {
        let record = self.owned(&request, &request.get_ref().job_id)?;
        Ok(Response::new(self.watch(&record.id)?))
    }

    async fn cancel(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let record = self.owned(&request, &request.get_ref().job_id)?;
        Ok(Response::new(job(&self.jobs.cancel(&record.id)?)))
    }

    async fn list(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsReply>, Status> {
        let actor = actor(&Caller::of(&request)?);
        let request = request.into_inner();
        let states = states_from_pb(&request.states)?;
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit as usize
        };
        // Only operators see other identities' jobs (and so their ids).
        let jobs = self
            .jobs
            .list(&states, usize::MAX)
            .iter()
            .filter(|record| actor.may_act_for(&record.owner))
            .take(limit)
            .map(job)
            .collect();
        Ok(Response::new(pb::ListJobsReply { jobs }))
    }

    async fn generate(
        &self,
        request: Request<pb::VideoRequest>,
    ) -> Result<Response<JobStream>, Status> {
        let record = self.submit(request)?;
        let stream = self.watch(&record.id)?;
        start(&self.jobs, record.id);
        Ok(Response::new(stream))
    }
}
