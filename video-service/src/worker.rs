//! The worker's edge to the supervisor that spawned it: `arbiter.worker.v1.Worker` over the
//! supervisor's Unix socket.
//!
//! The worker proves who it is with the one-time token from its environment (the
//! supervisor also checks, through the socket's peer credentials, that the caller is the
//! pid it spawned). [`Supervisor::claim`] exchanges the token for the job; every later call
//! carries the same token. The assignment is converted here, once, into a [`Job`], so that
//! no prost type goes further into the worker.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arbiter::endpoint::{Address, ConnectError, connect};
use arbiter::pb::video::v1::media::Source;
use arbiter::pb::worker::v1 as pb;
use pb::worker_client::WorkerClient;
use tonic::transport::Channel;

/// The environment variable that names the supervisor's socket.
pub const SOCKET_ENV: &str = "ARBITER_SUPERVISOR_SOCKET";
/// The environment variable that carries the one-time token.
pub const TOKEN_ENV: &str = "ARBITER_JOB_TOKEN";

/// The longest any one call to the supervisor may take. The supervisor answers from
/// memory, so this only matters when it hangs; then the worker gives up rather than wait
/// for the job's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A call to the supervisor that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("the supervisor refused to hand over the job ({code:?}): {message}", code = .0.code(), message = .0.message())]
    Claim(tonic::Status),
    #[error("the supervisor did not take the {call} call ({code:?}): {message}", code = .status.code(), message = .status.message())]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
}

/// A claimed job's connection to the supervisor. Cloning the client is cheap (it shares
/// the channel), so the calls take `&self`.
#[derive(Clone, Debug)]
pub struct Supervisor {
    client: WorkerClient<Channel>,
    token: String,
}

impl Supervisor {
    /// Connects to the supervisor's socket and exchanges `token` for the job.
    pub async fn claim(
        socket: &Path,
        token: String,
    ) -> Result<(Self, pb::Assignment), WorkerError> {
        let channel = connect(&Address::unix(socket)).await?;
        let mut client = WorkerClient::new(channel);
        let assignment = client
            .claim(timed(pb::ClaimRequest {
                token: token.clone(),
            }))
            .await
            .map_err(WorkerError::Claim)?
            .into_inner();
        Ok((Supervisor { client, token }, assignment))
    }

    /// Reports where the job is. `Ok(true)` means the job was cancelled: stop.
    pub async fn report(
        &self,
        stage: &str,
        step: u32,
        total_steps: u32,
        vram_bytes: u64,
    ) -> Result<bool, WorkerError> {
        let reply = self
            .client
            .clone()
            .report(timed(pb::ProgressReport {
                token: self.token.clone(),
                stage: stage.to_string(),
                step,
                total_steps,
                vram_bytes,
            }))
            .await
            .map_err(|status| WorkerError::Call {
                call: "Report",
                status,
            })?;
        Ok(reply.into_inner().cancel)
    }

    /// Says the job succeeded and where its files are.
    pub async fn complete(&self, video: &Path, metadata: &Path) -> Result<(), WorkerError> {
        self.client
            .clone()
            .complete(timed(pb::Completion {
                token: self.token.clone(),
                video_path: video.display().to_string(),
                metadata_path: metadata.display().to_string(),
            }))
            .await
            .map_err(|status| WorkerError::Call {
                call: "Complete",
                status,
            })?;
        Ok(())
    }

    /// Says the job failed, and why (shown to the client with the tail of the log).
    pub async fn fail(&self, error: &str) -> Result<(), WorkerError> {
        self.client
            .clone()
            .fail(timed(pb::Failure {
                token: self.token.clone(),
                error: error.to_string(),
            }))
            .await
            .map_err(|status| WorkerError::Call {
                call: "Fail",
                status,
            })?;
        Ok(())
    }
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// The job as the worker runs it: the request in its one shape (the root crate's
/// `arbiter::job::Request`, as the supervisor stored it) and what the assignment says about
/// where to run it. Sizes are as the supervisor filled them in; the pipeline checks them
/// again.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: String,
    pub attempt: u32,
    pub request: arbiter::job::Request,
    /// The pipeline's directory; `None` for a built-in pipeline.
    pub pipeline_dir: Option<PathBuf>,
    pub output_dir: PathBuf,
    pub lease_bytes: u64,
    pub gpu_uuid: String,
    /// The shared text-embedding cache and its cap, when the supervisor keeps one.
    pub embedding_cache: Option<(PathBuf, u64)>,
    /// Without ffmpeg, write PNG frames instead of failing.
    pub frames_without_ffmpeg: bool,
}

/// An assignment the worker cannot run as given: the supervisor broke the contract.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssignmentError {
    #[error("the assignment carries no request")]
    NoRequest,
    #[error("the assignment names no output directory")]
    NoOutputDir,
    #[error(
        "the request's {0} came inline; the supervisor saves inline media to a file and passes its path"
    )]
    InlineMedia(&'static str),
    #[error("placement of {0}")]
    Placement(#[from] arbiter::pipeline::PlacementError),
}

impl TryFrom<pb::Assignment> for Job {
    type Error = AssignmentError;

    fn try_from(assignment: pb::Assignment) -> Result<Job, AssignmentError> {
        let request = assignment.request.ok_or(AssignmentError::NoRequest)?;
        if assignment.output_dir.is_empty() {
            return Err(AssignmentError::NoOutputDir);
        }
        let media = |media: Option<arbiter::pb::video::v1::Media>, what| match media
            .and_then(|m| m.source)
        {
            None => Ok(None),
            Some(Source::Path(path)) if path.is_empty() => Ok(None),
            Some(Source::Path(path)) => Ok(Some(PathBuf::from(path))),
            Some(Source::Data(_)) => Err(AssignmentError::InlineMedia(what)),
        };
        let placements = arbiter::pipeline::parse_placements(&request.placement)?;
        let embedding_cache = (!assignment.embedding_cache_dir.is_empty()
            && assignment.embedding_cache_bytes > 0)
            .then(|| {
                (
                    PathBuf::from(&assignment.embedding_cache_dir),
                    assignment.embedding_cache_bytes,
                )
            });
        Ok(Job {
            id: assignment.job_id,
            attempt: assignment.attempt,
            request: arbiter::job::Request {
                shape: (&request).into(),
                prompt: request.prompt,
                negative_prompt: request.negative_prompt,
                audio: media(request.audio, "audio")?,
                reference_image: media(request.reference_image, "reference image")?,
                seed: assignment.seed,
                pipeline: assignment.pipeline,
                placement: placements,
            },
            pipeline_dir: (!assignment.pipeline_dir.is_empty())
                .then(|| PathBuf::from(assignment.pipeline_dir)),
            output_dir: PathBuf::from(assignment.output_dir),
            lease_bytes: assignment.lease_bytes,
            gpu_uuid: assignment.gpu_uuid,
            embedding_cache,
            frames_without_ffmpeg: assignment.frames_without_ffmpeg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter::pb::video::v1::{Media, VideoRequest};

    fn assignment() -> pb::Assignment {
        pb::Assignment {
            job_id: "j1".into(),
            request: Some(VideoRequest {
                prompt: "a cat".into(),
                audio: Some(Media {
                    source: Some(Source::Path("/in/a.wav".into())),
                }),
                width: 128,
                height: 64,
                frames: 9,
                fps: 8,
                steps: 2,
                ..Default::default()
            }),
            pipeline: "tiny".into(),
            seed: 7,
            output_dir: "/out/j1".into(),
            lease_bytes: 1 << 30,
            attempt: 1,
            ..Default::default()
        }
    }

    #[test]
    fn an_assignment_becomes_a_job() {
        let job = Job::try_from(assignment()).unwrap();
        assert_eq!(job.request.audio.as_deref(), Some(Path::new("/in/a.wav")));
        assert_eq!(
            (
                job.request.shape.width,
                job.request.shape.height,
                job.request.seed
            ),
            (128, 64, 7)
        );
        assert_eq!(job.pipeline_dir, None);
        assert_eq!(job.request.reference_image, None);
    }

    #[test]
    fn an_assignment_that_breaks_the_contract_is_named() {
        let mut inline = assignment();
        inline.request.as_mut().unwrap().audio = Some(Media {
            source: Some(Source::Data(vec![1, 2])),
        });
        assert_eq!(
            Job::try_from(inline),
            Err(AssignmentError::InlineMedia("audio"))
        );
        let mut bare = assignment();
        bare.request = None;
        assert_eq!(Job::try_from(bare), Err(AssignmentError::NoRequest));
    }
}
