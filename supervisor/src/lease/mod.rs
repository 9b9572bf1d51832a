//! Leases: GPU memory lent to a holder.
//!
//! [`ledger`] is the accounting itself, a plain state machine with no I/O and no clock of
//! its own (callers pass `now`), so property tests can drive it through any sequence of
//! events. [`broker`] wraps it for the server: a lock, the holders' notification channels,
//! timers and the event feed. [`error`] says why a request was refused.

pub mod broker;
pub mod error;
pub mod ledger;
mod queue;

use std::time::{Duration, Instant};

pub use error::LeaseError;

/// Identifies one request from its arrival to its end: first as a waiter, then as a lease.
/// Internal only; the wire carries [`Lease::id`], which cannot be guessed.
pub type Ticket = u64;

/// How urgently a holder needs memory. Ordered: a higher class is served first.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Priority {
    Batch = 1,
    Normal = 2,
    Interactive = 3,
    Critical = 4,
}

impl Priority {
    pub fn rank(self) -> f64 {
        self as u8 as f64
    }
}

/// Which GPU a request may be placed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuChoice {
    Any,
    Index(u32),
}

/// What ties a lease's life to its holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// Lives as long as the holder's Hold stream.
    Stream,
    /// Lives for `ttl` after the grant or the last keep-alive.
    Unary { ttl: Duration },
}

/// Who is on the other end of the Unix socket, as the kernel says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
}

/// A request for memory, already validated and resolved (GPU names to indices).
#[derive(Clone, Debug)]
pub struct Ask {
    pub holder: String,
    pub gpu: GpuChoice,
    pub bytes: u64,
    pub priority: Priority,
    pub preemptible: bool,
    pub max_wait: Option<Duration>,
    pub form: Form,
    pub peer: Option<Peer>,
}

/// A pending request to give bytes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaim {
    pub bytes: u64,
    pub deadline: Instant,
    /// Who needs the memory, for the holder's logs.
    pub reason: String,
    /// The waiter it is for: the request is withdrawn when that waiter stops waiting.
    pub for_ticket: Ticket,
}

/// Memory granted to a holder.
#[derive(Clone, Debug)]
pub struct Lease {
    pub ticket: Ticket,
    /// The public name of the lease: random, so one holder cannot release another's lease
    /// by guessing.
    pub id: String,
    pub holder: String,
    pub gpu: u32,
    pub bytes: u64,
    pub priority: Priority,
    pub preemptible: bool,
    pub form: Form,
    pub peer: Option<Peer>,
    pub granted_at: Instant,
    pub expires_at: Option<Instant>,
    pub reclaim: Option<Reclaim>,
}

/// Why a lease ended without being revoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    Released,
    StreamClosed,
    HolderDied,
    TtlExpired,
    Shutdown,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Released => "released",
            ReleaseReason::StreamClosed => "stream closed",
            ReleaseReason::HolderDied => "holder died",
            ReleaseReason::TtlExpired => "ttl expired",
            ReleaseReason::Shutdown => "shutdown",
        }
    }
}

/// Why a wait in the queue ended without a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    DeadlineExceeded,
    Cancelled,
    Shutdown,
}

impl WaitEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitEnd::DeadlineExceeded => "deadline exceeded",
            WaitEnd::Cancelled => "cancelled",
            WaitEnd::Shutdown => "shutdown",
        }
    }
}

/// What a ledger operation changed, for the broker to tell holders and operators.
#[derive(Clone, Debug)]
pub enum Effect {
    Queued {
        ticket: Ticket,
        position: u32,
        queue_length: u32,
        /// True the first time this waiter is reported.
        new: bool,
    },
    Granted {
        lease: Lease,
        waited: Duration,
    },
    WaitEnded {
        ticket: Ticket,
        holder: String,
        reason: WaitEnd,
        waited: Duration,
    },
    ReclaimRequested {
        lease: Lease,
    },
    /// The waiter a reclaim was for no longer waits: the holder may keep its memory.
    ReclaimWithdrawn {
        lease: Lease,
    },
    Revoked {
        lease: Lease,
        reason: String,
    },
    Released {
        lease: Lease,
        reason: ReleaseReason,
    },
}
