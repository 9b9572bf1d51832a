//! Why a lease request or operation was refused. Each message says what to change; the
//! mapping to gRPC status codes lives in one place, `crate::rpc::status`.

use arbiter::ByteSize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseError {
    #[error(
        "holder is empty: name the process asking for memory (\"tts-service\", \"video job 42\")"
    )]
    EmptyHolder,
    #[error("holder is {0} characters long: use at most 128 printable characters")]
    BadHolder(usize),
    #[error("bytes is 0: ask for the GPU memory you need, such as 8589934592 for 8 GiB")]
    ZeroBytes,
    #[error(
        "asked for {asked} but {gpu} can grant at most {limit} ({capacity} capacity minus {reserve} reserve): ask for less{hint}"
    )]
    NeverFits {
        asked: ByteSize,
        gpu: String,
        limit: ByteSize,
        capacity: ByteSize,
        reserve: ByteSize,
        hint: &'static str,
    },
    #[error(
        "unknown GPU `{given}`: this supervisor has {known}; pass one of those uuids or indices, or leave gpu empty for any"
    )]
    UnknownGpu { given: String, known: String },
    #[error("{field} is {reason}")]
    BadDuration { field: &'static str, reason: String },
    /// A field whose value breaks its rule; `rule` says what it is and what is allowed.
    #[error("{field} {rule}")]
    BadValue { field: &'static str, rule: String },
    #[error(
        "no lease `{0}`: it was released, revoked or expired, or never existed; acquire a new one"
    )]
    UnknownLease(String),
    #[error(
        "lease `{0}` is a streaming lease: it lives as long as its Hold stream and needs no keep-alive"
    )]
    NotUnary(String),
    #[error(
        "lease `{id}` holds {held}; Shrink needs a smaller size above zero, got {asked} (Release gives everything back)"
    )]
    BadShrink {
        id: String,
        held: ByteSize,
        asked: ByteSize,
    },
    #[error(
        "lease `{0}` belongs to another identity: only its owner, or an operator, may change it"
    )]
    NotOwner(String),
    /// One identity's quota, named by its config key (`leases`, `bytes`, `waiting`).
    #[error(
        "quota: {identity} may have at most {value} {what} at once ([quota] {key}); release or cancel some first, or ask the operator to raise it"
    )]
    OverQuota {
        identity: String,
        key: &'static str,
        what: &'static str,
        value: String,
    },
    #[error(
        "{limit} requests are already waiting for memory on this supervisor (lease.max_waiting): retry later"
    )]
    TooManyWaiting { limit: usize },
    #[error(
        "waited {waited} without enough free memory; wait longer (max_wait), ask for less, or free memory on the GPU"
    )]
    DeadlineExceeded { waited: String },
    #[error(
        "asked for {asked}, but leases above {limit} need a holder whose GPU use the supervisor can see: connect over its Unix socket from this host (same pid namespace), or ask for at most {limit}"
    )]
    Invisible { asked: ByteSize, limit: ByteSize },
    #[error("the supervisor is shutting down: retry against the new instance")]
    ShuttingDown,
}
