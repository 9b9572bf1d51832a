//! The service's errors as gRPC statuses, in one place, so that the code a client sees for a
//! failure is decided once rather than at each call site. What the caller must change is
//! INVALID_ARGUMENT (the message names the field and the rule); a request this service
//! cannot serve as configured is FAILED_PRECONDITION; what failed inside is INTERNAL. The
//! message is always the error's own text, which says what to change.
//!
//! The table below names every variant, with no catch-all: a new variant does not compile
//! until someone decides its code. This module sits below the service: it imports only the
//! domain modules whose errors it maps, never the service itself.

use tonic::Status;

use crate::audio::AudioError;
use crate::espeak::EspeakError;
use crate::lip_sync::LipSyncRequestError;
use crate::lip_sync::face::FaceError;
use crate::lip_sync::frames::FrameError;
use crate::lip_sync::model::LipSyncModelError;
use crate::model_lease::LeaseAskError;
use crate::torchscript::TorchVoiceError;
use crate::voice_residency::VoiceLoadError;

/// A blocking task that panicked or was cancelled. A function, not a `From`, because both
/// `JoinError` and `Status` are other crates' types.
pub fn task(error: tokio::task::JoinError) -> Status {
    Status::internal(format!("a worker task failed: {error}"))
}

/// `From<$error> for Status`, from a table of codes and the variants that get each. The
/// generated match has no catch-all, so a variant the table leaves out does not compile.
macro_rules! codes {
    ($error:ident { $($code:ident: $($variant:ident)|+;)+ }) => {
        impl From<$error> for Status {
            fn from(error: $error) -> Status {
                let message = arbiter::echo::cap_message(error.to_string());
                match error {
                    $($($error::$variant { .. })|+ => Status::$code(message),)+
                }
            }
        }
    };
}

// Bad text, voices and rates are the caller's to fix; an engine that will not start or
// speak is not.
codes!(EspeakError {
    invalid_argument: EmptyText | NulInText | UnknownVoice | RateOutOfRange;
    internal: Init | Synthesis;
});

codes!(AudioError {
    invalid_argument: Empty | TooLarge | UnknownFormat | Wav | PcmRate | RateMismatch
        | RateRange | OddPcm | NoSamples | NonFinite | TooLong;
});

codes!(FaceError {
    invalid_argument: TooLarge | Format | Decode | TooSmall;
});

// A face sent to a service without a model is well formed, just not servable here.
codes!(LipSyncRequestError {
    invalid_argument: NoInput | VoiceWithAudio | FaceOnUnary | FrameFormat;
    failed_precondition: NoModel;
});

// What fails inside (a model or a voice that will not load or run, a frame that will not
// encode) is never the client's to fix.
codes!(LipSyncModelError {
    internal: Read | Config | Invalid | Load | Run | Output;
});

codes!(TorchVoiceError {
    internal: Read | Config | Invalid | Load | Run | Output;
});

codes!(FrameError {
    internal: Size | Png;
});

// A voice that cannot load for want of GPU memory is the card's state, worth a retry: a
// full card is RESOURCE_EXHAUSTED, a supervisor away is UNAVAILABLE, a lease the supervisor
// will never grant (larger than the card) FAILED_PRECONDITION.
impl From<VoiceLoadError> for Status {
    fn from(error: VoiceLoadError) -> Status {
        let message = arbiter::echo::cap_message(error.to_string());
        match error {
            VoiceLoadError::Lease { source, .. } => match source {
                LeaseAskError::NoRoom { .. } => Status::resource_exhausted(message),
                LeaseAskError::Unreachable { .. } | LeaseAskError::Ended => {
                    Status::unavailable(message)
                }
                LeaseAskError::Refused { .. } => Status::failed_precondition(message),
            },
            VoiceLoadError::Load(error) => Status::from(error),
            VoiceLoadError::Task { .. } => Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn the_callers_mistakes_are_invalid_argument_and_the_services_are_not() {
        for (status, code) in [
            (
                Status::from(EspeakError::UnknownVoice("xx".into())),
                Code::InvalidArgument,
            ),
            (
                Status::from(EspeakError::Init("no data".into())),
                Code::Internal,
            ),
            (Status::from(AudioError::PcmRate), Code::InvalidArgument),
            (
                Status::from(LipSyncRequestError::FaceOnUnary),
                Code::InvalidArgument,
            ),
            (
                Status::from(LipSyncRequestError::NoModel),
                Code::FailedPrecondition,
            ),
        ] {
            assert_eq!(status.code(), code, "{}", status.message());
        }
        let status = Status::from(LipSyncRequestError::NoModel);
        assert_eq!(
            status.message(),
            LipSyncRequestError::NoModel.to_string(),
            "the message is the error's own text"
        );
    }
}
