//! The supervisor's rules for callers, applied by `arbiter::auth`'s layer before any
//! handler runs: which role each method needs, who has which role (`[auth]`), and each
//! identity's quota and request rate (`[quota]`).
//!
//! Methods by role: holders `Hold`, `Acquire`, `KeepAlive`, `Shrink`, `Release` (on their
//! own leases: the broker checks the owner); submitters `Submit`, `Generate`, `Get`,
//! `Watch`, `Cancel` (on their own jobs: the job hub checks); everyone with a role
//! `GetStatus`, `ListLeases`, `Video/List` and `Ping`, which show others' leases and jobs
//! to operators only; operators alone `WatchEvents`. The internal Worker service is for
//! processes on this host (its one-time job tokens are its authorization).

use arbiter::auth::pattern::any_matches;
use arbiter::auth::rate::Rate;
use arbiter::auth::{Authorize, Caller, Identity, Pattern};
use tonic::Status;

use crate::config::{AuthConfig, Limits, QuotaConfig};
use crate::lease::{Actor, Quota};

/// What a method asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Need {
    /// Any identity with at least one role.
    AnyRole,
    Holder,
    Submitter,
    Operator,
    /// A process on this host (the Unix socket).
    Local,
}

fn need(method: &str) -> Need {
    let (service, name) = method
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((method, ""));
    match (service, name) {
        (
            "arbiter.supervisor.v1.Supervisor",
            "Hold" | "Acquire" | "KeepAlive" | "Shrink" | "Release",
        ) => Need::Holder,
        ("arbiter.supervisor.v1.Supervisor", "WatchEvents") => Need::Operator,
        ("arbiter.video.v1.Video", "List") => Need::AnyRole,
        ("arbiter.video.v1.Video", _) => Need::Submitter,
        ("arbiter.worker.v1.Worker", _) => Need::Local,
        // GetStatus, ListLeases, Ping, and methods no service has (UNIMPLEMENTED follows).
        _ => Need::AnyRole,
    }
}

/// `[auth]` and `[quota]`, resolved.
pub struct CallerPolicy {
    operators: Vec<Pattern>,
    holders: Vec<Pattern>,
    submitters: Vec<Pattern>,
    quota: QuotaConfig,
}

impl CallerPolicy {
    pub fn new(auth: &AuthConfig, quota: &QuotaConfig) -> CallerPolicy {
        // Root and the supervisor's own user are always operators: they own the process
        // and its state files anyway, and the operator's commands run as them.
        let mut operators = vec![
            Pattern::Uid(0),
            Pattern::Uid(nix::unistd::getuid().as_raw()),
        ];
        operators.extend(auth.operators.iter().cloned());
        CallerPolicy {
            operators,
            holders: auth.holders.clone(),
            submitters: auth.submitters.clone(),
            quota: quota.clone(),
        }
    }

    fn is_operator(&self, identity: &Identity) -> bool {
        any_matches(&self.operators, identity)
    }

    /// The limits `identity` has.
    pub fn limits(&self, identity: &Identity) -> Limits {
        self.quota.of(identity)
    }
}

impl Authorize for CallerPolicy {
    fn authorize(&self, identity: Identity, method: &str) -> Result<Caller, Status> {
        let operator = self.is_operator(&identity);
        let holder = operator || any_matches(&self.holders, &identity);
        let submitter = operator || any_matches(&self.submitters, &identity);
        let refuse = |role: &str, list: &str| {
            Err(Status::permission_denied(format!(
                "{identity} may not call {method}: it needs the {role} role; the operator lists who has it under [auth] {list}"
            )))
        };
        match need(method) {
            Need::Holder if !holder => return refuse("holder", "holders"),
            Need::Submitter if !submitter => return refuse("submitter", "submitters"),
            Need::Operator if !operator => return refuse("operator", "operators"),
            Need::AnyRole if !(holder || submitter) => {
                return refuse("holder or submitter", "holders or submitters");
            }
            Need::Local if !matches!(identity, Identity::Unix { .. }) => {
                return Err(Status::permission_denied(
                    "the Worker service is for the supervisor's own workers, on its Unix socket",
                ));
            }
            _ => {}
        }
        let limits = self.limits(&identity);
        Ok(Caller {
            identity,
            operator,
            rate: (limits.rate > 0.0).then_some(Rate {
                per_second: limits.rate,
                burst: limits.burst.max(1.0),
            }),
        })
    }
}

/// The domain's view of a caller: who owns what it makes, and whether it may act on all.
pub fn actor(caller: &Caller) -> Actor {
    Actor {
        owner: caller.owner(),
        operator: caller.operator,
    }
}

/// The lease quota of a caller, as the broker checks it.
pub fn quota(limits: &Limits) -> Quota {
    Quota {
        leases: limits.leases,
        bytes: limits.bytes.map(|b| b.0),
        waiting: limits.waiting,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(uid: u32) -> Identity {
        Identity::Unix {
            uid,
            gid: uid,
            pid: Some(1),
        }
    }

    #[test]
    fn each_method_needs_its_role_and_operators_have_every_role() {
        let auth = AuthConfig {
            tokens_file: None,
            operators: vec!["token:admin".parse().unwrap()],
            holders: vec!["unix".parse().unwrap(), "token:ci".parse().unwrap()],
            submitters: vec!["cert:render".parse().unwrap()],
        };
        let policy = CallerPolicy::new(&auth, &QuotaConfig::default());
        let call = |identity: Identity, method: &str| policy.authorize(identity, method);
        let ci = Identity::Token("ci".into());
        assert!(call(ci.clone(), "/arbiter.supervisor.v1.Supervisor/Hold").is_ok());
        assert!(call(ci.clone(), "/arbiter.video.v1.Video/Submit").is_err());
        assert!(call(ci.clone(), "/arbiter.supervisor.v1.Supervisor/WatchEvents").is_err());
        assert!(call(ci.clone(), "/arbiter.worker.v1.Worker/Claim").is_err());
        let render = Identity::Certificate("render".into());
        assert!(call(render.clone(), "/arbiter.video.v1.Video/Submit").is_ok());
        assert!(call(render, "/arbiter.supervisor.v1.Supervisor/Acquire").is_err());
        let stranger = Identity::Token("stranger".into());
        let refused = call(stranger, "/arbiter.supervisor.v1.Supervisor/GetStatus").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("[auth]"),
            "{}",
            refused.message()
        );
        let admin = call(
            Identity::Token("admin".into()),
            "/arbiter.supervisor.v1.Supervisor/WatchEvents",
        )
        .unwrap();
        assert!(admin.operator);
        let own = call(
            unix(nix::unistd::getuid().as_raw()),
            "/arbiter.supervisor.v1.Supervisor/Release",
        )
        .unwrap();
        assert!(own.operator, "the supervisor's own user is an operator");
        let other = call(unix(4242), "/arbiter.supervisor.v1.Supervisor/Release").unwrap();
        assert!(!other.operator);
        assert!(call(unix(4242), "/arbiter.worker.v1.Worker/Claim").is_ok());
        assert!(
            call(
                Identity::InsecureTcp,
                "/arbiter.supervisor.v1.Supervisor/Ping"
            )
            .is_err()
        );
        let defaults = CallerPolicy::new(&AuthConfig::default(), &QuotaConfig::default());
        assert!(
            defaults
                .authorize(
                    Identity::InsecureTcp,
                    "/arbiter.supervisor.v1.Supervisor/Acquire"
                )
                .is_ok(),
            "plaintext TCP, once the operator opens it, may take leases of its own"
        );
    }

    #[test]
    fn quota_overrides_apply_to_the_identities_they_name() {
        let quota: QuotaConfig = toml::from_str(
            "leases = 8\n[[for]]\nidentities = [\"token:ci\"]\nleases = 2\nrate = 0\n",
        )
        .unwrap();
        let policy = CallerPolicy::new(&AuthConfig::default(), &quota);
        assert_eq!(policy.limits(&Identity::Token("ci".into())).leases, 2);
        assert_eq!(policy.limits(&Identity::Token("ci".into())).waiting, 64);
        assert_eq!(policy.limits(&unix(5)).leases, 8);
        let ci = policy
            .authorize(Identity::Token("ci".into()), "/x.Y/Z")
            .err();
        assert!(ci.is_some(), "no role, whatever the quota");
    }
}
