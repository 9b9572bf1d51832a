//! The one place where domain errors become gRPC status codes.
//!
//! INVALID_ARGUMENT: the request itself is wrong and must change. FAILED_PRECONDITION: the
//! request is well formed but this supervisor cannot satisfy it as configured. NOT_FOUND,
//! PERMISSION_DENIED, DEADLINE_EXCEEDED and UNAVAILABLE mean what they say. The message is
//! the error's own text, which says what to change.

use tonic::Status;

use crate::job::JobError;
use crate::lease::LeaseError;

impl From<LeaseError> for Status {
    fn from(error: LeaseError) -> Status {
        let message = arbiter::echo::cap_message(error.to_string());
        match error {
            LeaseError::EmptyHolder
            | LeaseError::BadHolder(_)
            | LeaseError::ZeroBytes
            | LeaseError::UnknownGpu { .. }
            | LeaseError::BadDuration { .. }
            | LeaseError::BadValue { .. }
            | LeaseError::BadShrink { .. } => Status::invalid_argument(message),
            LeaseError::NeverFits { .. }
            | LeaseError::NotUnary(_)
            | LeaseError::Invisible { .. } => Status::failed_precondition(message),
            LeaseError::UnknownLease(_) => Status::not_found(message),
            LeaseError::NotOwner(_) => Status::permission_denied(message),
            LeaseError::OverQuota { .. } | LeaseError::TooManyWaiting { .. } => {
                Status::resource_exhausted(message)
            }
            LeaseError::DeadlineExceeded { .. } => Status::deadline_exceeded(message),
            LeaseError::ShuttingDown => Status::unavailable(message),
        }
    }
}

impl From<JobError> for Status {
    fn from(error: JobError) -> Status {
        let message = arbiter::echo::cap_message(error.to_string());
        match error {
            JobError::Invalid { .. } => Status::invalid_argument(message),
            JobError::QueueFull { .. } | JobError::OverQuota { .. } => {
                Status::resource_exhausted(message)
            }
            JobError::NotOwner(_) => Status::permission_denied(message),
            JobError::NotFound(_) => Status::not_found(message),
            JobError::Ended { .. } | JobError::WontFit(_) => Status::failed_precondition(message),
            JobError::BadToken | JobError::WrongPeer => Status::permission_denied(message),
            JobError::ShuttingDown => Status::unavailable(message),
            JobError::Store(_) | JobError::Files(_) => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn bad_input_is_invalid_argument_and_capacity_is_a_precondition() {
        assert_eq!(
            Status::from(LeaseError::ZeroBytes).code(),
            Code::InvalidArgument
        );
        let never = LeaseError::NeverFits {
            asked: arbiter::ByteSize(2),
            gpu: "GPU 0".into(),
            limit: arbiter::ByteSize(1),
            capacity: arbiter::ByteSize(1),
            reserve: arbiter::ByteSize(0),
            hint: "",
        };
        assert_eq!(Status::from(never).code(), Code::FailedPrecondition);
    }
}
