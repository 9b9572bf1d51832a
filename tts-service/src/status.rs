//! The service's errors as gRPC statuses, in one place. What the caller must change is
//! INVALID_ARGUMENT (the message names the field and the rule); a request this service
//! cannot serve as configured is FAILED_PRECONDITION; what failed inside is INTERNAL.

use tonic::Status;

use crate::audio::AudioError;
use crate::espeak;
use crate::lipsync::face::FaceError;
use crate::lipsync::frames::FrameError;
use crate::lipsync::model;
use crate::service::LipSyncError;
use crate::torchscript;

/// A synthesis error: bad voices and rates are the caller's to fix.
pub fn synthesis(error: espeak::Error) -> Status {
    match error {
        espeak::Error::Init(_) | espeak::Error::Synthesis(_) => Status::internal(error.to_string()),
        _ => Status::invalid_argument(error.to_string()),
    }
}

/// A blocking task that panicked or was cancelled.
pub fn task(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("a worker task failed: {error}"))
}

impl From<AudioError> for Status {
    fn from(error: AudioError) -> Status {
        Status::invalid_argument(error.to_string())
    }
}

impl From<FaceError> for Status {
    fn from(error: FaceError) -> Status {
        Status::invalid_argument(error.to_string())
    }
}

impl From<LipSyncError> for Status {
    fn from(error: LipSyncError) -> Status {
        match error {
            LipSyncError::NoModel => Status::failed_precondition(error.to_string()),
            _ => Status::invalid_argument(error.to_string()),
        }
    }
}

impl From<model::Error> for Status {
    fn from(error: model::Error) -> Status {
        Status::internal(error.to_string())
    }
}

impl From<FrameError> for Status {
    fn from(error: FrameError) -> Status {
        Status::internal(error.to_string())
    }
}

impl From<torchscript::Error> for Status {
    fn from(error: torchscript::Error) -> Status {
        Status::internal(error.to_string())
    }
}
