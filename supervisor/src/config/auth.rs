//! `[server]`'s TLS files, `[auth]` (who has which role) and `[quota]` (what each identity
//! may have at once), as an operator writes them.

use std::path::PathBuf;

use arbiter::ByteSize;
use arbiter::auth::Pattern;
use serde::{Deserialize, Serialize, Serializer};

/// TLS on the TCP listener. Either `cert` and `key` are set (TLS), or neither (then TCP
/// needs `insecure_tcp`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Its private key (PEM); readable by the supervisor's user only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The CA whose client certificates name their callers (`cert:NAME`). Unset: TCP
    /// callers authenticate with a bearer token only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// Roles: who may do what. An identity may be in several lists; operators may do
/// everything, on every lease and job.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens (`NAME sha256:HEX` lines), for TCP callers without a certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// May see and act on everything: status with every id, the event feed, any lease,
    /// any job. Root and the supervisor's own user are operators whatever this says.
    #[serde(serialize_with = "patterns")]
    pub operators: Vec<Pattern>,
    /// May take leases (Hold, Acquire) and act on their own.
    #[serde(serialize_with = "patterns")]
    pub holders: Vec<Pattern>,
    /// May submit video jobs and act on their own.
    #[serde(serialize_with = "patterns")]
    pub submitters: Vec<Pattern>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        // Reaching the Unix socket (mode 0660, its group) is the local gate: whoever can
        // open it may take leases and submit jobs, as before identities existed. So may
        // plaintext TCP callers, which exist only where the operator passed --insecure-tcp
        // (and which can act on no one else's leases or jobs). Callers with a certificate
        // or a token get a role only where the operator names them.
        AuthConfig {
            tokens_file: None,
            operators: Vec::new(),
            holders: vec![Pattern::AnyUnix, Pattern::InsecureTcp],
            submitters: vec![Pattern::AnyUnix, Pattern::InsecureTcp],
        }
    }
}

fn patterns<S: Serializer>(patterns: &[Pattern], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(patterns.iter().map(ToString::to_string))
}

/// Identity lists as the config file writes them (`["unix", "token:ci"]`).
pub(super) fn serialize_patterns<S: Serializer>(
    patterns: &[Pattern],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    self::patterns(patterns, serializer)
}

/// What one identity may have at once, and how fast it may call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub leases: u32,
    pub bytes: Option<ByteSize>,
    pub waiting: u32,
    pub queued_jobs: u32,
    pub rate: f64,
    pub burst: f64,
}

/// `[quota]`: the limits every identity gets, and `[[quota.for]]` entries that give some
/// identities others (the first entry naming an identity wins; what it leaves out is the
/// default).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Granted leases.
    pub leases: u32,
    /// Bytes granted, over all its leases. Unset: up to the budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteSize>,
    /// Lease requests waiting in the queue.
    pub waiting: u32,
    /// Video jobs queued or running.
    pub queued_jobs: u32,
    /// Requests a second, on average; 0: no limit.
    pub rate: f64,
    /// Requests at once above the rate.
    pub burst: f64,
    #[serde(rename = "for", skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<QuotaOverride>,
}

impl Default for QuotaConfig {
    fn default() -> QuotaConfig {
        // Generous for one well-behaved service, small enough that one runaway client
        // cannot fill the queue (lease.max_waiting, jobs.max_queue) for everyone.
        QuotaConfig {
            leases: 64,
            bytes: None,
            waiting: 64,
            queued_jobs: 32,
            rate: 1000.0,
            burst: 2000.0,
            overrides: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverride {
    #[serde(serialize_with = "patterns")]
    pub identities: Vec<Pattern>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leases: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<ByteSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_jobs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<f64>,
}

impl QuotaConfig {
    /// The limits of `identity`.
    pub fn of(&self, identity: &arbiter::auth::Identity) -> Limits {
        let base = Limits {
            leases: self.leases,
            bytes: self.bytes,
            waiting: self.waiting,
            queued_jobs: self.queued_jobs,
            rate: self.rate,
            burst: self.burst,
        };
        let Some(o) = self
            .overrides
            .iter()
            .find(|o| arbiter::auth::pattern::any_matches(&o.identities, identity))
        else {
            return base;
        };
        Limits {
            leases: o.leases.unwrap_or(base.leases),
            bytes: o.bytes.or(base.bytes),
            waiting: o.waiting.unwrap_or(base.waiting),
            queued_jobs: o.queued_jobs.unwrap_or(base.queued_jobs),
            rate: o.rate.unwrap_or(base.rate),
            burst: o.burst.unwrap_or(base.burst),
        }
    }
}
