//! Why a claimed job did not produce its video: one error for every step after the claim,
//! so that each failure reaches the supervisor's Fail as one message.
//!
//! A [`Stop`] from inside a pipeline becomes the same error wherever it was raised, so a
//! cancel ends the job the same way from any stage.

use std::path::PathBuf;

use crate::input::audio::AudioError;
use crate::input::image::ImageError;
use crate::metadata::MetadataError;
use crate::mux::MuxError;
use crate::pipeline::PipelineError;
use crate::pipeline::staged::StagedError;
use crate::pipeline::tiny::TinyError;
use crate::progress::Stop;
use crate::residency::RecordError;
use crate::worker::{AssignmentError, WorkerError};

/// Why a claimed job did not produce its video.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("the supervisor's assignment cannot be run: {0}")]
    Assignment(#[from] AssignmentError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot create the output directory {path}: {source}")]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(TinyError),
    /// Boxed: the staged pipeline's errors carry a lot of context.
    #[error(transparent)]
    Staged(Box<StagedError>),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("pipeline {0} has no image stage, so it cannot take a reference image: leave it out")]
    NoImageStage(String),
    #[error(transparent)]
    Mux(#[from] MuxError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error("lost the supervisor in the middle of the job: {0}")]
    Supervisor(WorkerError),
    #[error("the job was cancelled")]
    Cancelled,
}

impl From<Stop> for JobError {
    fn from(stop: Stop) -> JobError {
        match stop {
            Stop::Cancelled => JobError::Cancelled,
            Stop::Supervisor(error) => JobError::Supervisor(error),
            Stop::Record(error) => JobError::Record(error),
        }
    }
}

impl From<StagedError> for JobError {
    fn from(error: StagedError) -> JobError {
        match error {
            StagedError::Stopped(stop) => stop.into(),
            other => JobError::Staged(Box::new(other)),
        }
    }
}

impl From<TinyError> for JobError {
    fn from(error: TinyError) -> JobError {
        match error {
            TinyError::Stopped(stop) => stop.into(),
            other => JobError::Model(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use tch::Device;

    use super::*;
    use crate::job::device::device_name;

    #[test]
    fn a_stop_inside_the_model_ends_the_job_the_same_way() {
        assert!(matches!(
            JobError::from(TinyError::Stopped(Stop::Cancelled)),
            JobError::Cancelled
        ));
        assert_eq!(device_name(Device::Cuda(0)), "cuda:0");
    }
}
