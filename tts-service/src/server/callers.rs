//! Who may call arbiter-tts, for `arbiter::auth`'s layer. The service owns nothing per
//! caller (no leases, no jobs), so the rule is one list: the identities that may call
//! (`--caller`, default everyone with an identity: a process that can open the socket, or
//! a TCP caller with a valid certificate or token), each at its own request rate.

use arbiter::auth::pattern::any_matches;
use arbiter::auth::rate::Rate;
use arbiter::auth::{Authorize, Caller, Identity, Pattern};
use tonic::Status;

pub struct TtsPolicy {
    callers: Vec<Pattern>,
    rate: Option<Rate>,
}

impl TtsPolicy {
    /// `callers` empty: anyone with an identity. `per_second` 0: no rate limit.
    pub fn new(callers: Vec<Pattern>, per_second: f64, burst: f64) -> TtsPolicy {
        TtsPolicy {
            callers: if callers.is_empty() {
                vec![Pattern::Anyone]
            } else {
                callers
            },
            rate: (per_second > 0.0).then_some(Rate {
                per_second,
                burst: burst.max(1.0),
            }),
        }
    }
}

impl Authorize for TtsPolicy {
    fn authorize(&self, identity: Identity, method: &str) -> Result<Caller, Status> {
        if !any_matches(&self.callers, &identity) {
            return Err(Status::permission_denied(format!(
                "{identity} may not call {method}: arbiter-tts serves the identities its operator lists with --caller"
            )));
        }
        Ok(Caller {
            identity,
            operator: false,
            rate: self.rate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_callers_are_served() {
        let open = TtsPolicy::new(Vec::new(), 0.0, 0.0);
        assert!(
            open.authorize(Identity::InsecureTcp, "/arbiter.tts.v1.Tts/Synthesize")
                .is_ok()
        );
        let listed = TtsPolicy::new(vec!["token:web".parse().unwrap()], 10.0, 20.0);
        let web = listed
            .authorize(
                Identity::Token("web".into()),
                "/arbiter.tts.v1.Tts/Synthesize",
            )
            .unwrap();
        assert_eq!(web.rate.map(|r| r.per_second), Some(10.0));
        let refused = listed
            .authorize(
                Identity::Token("other".into()),
                "/arbiter.tts.v1.Tts/Synthesize",
            )
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    }
}
