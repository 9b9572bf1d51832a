//! Leases: GPU memory lent to a holder.
//!
//! [`ledger`] is the accounting itself, a plain state machine with no I/O and no clock of
//! its own (callers pass `now`), so property tests can drive it through any sequence of
//! events. [`broker`] wraps it for the server: a lock, the holders' notification channels,
//! timers and the event feed ([`events`], the operators' view of what the broker did).
//! [`error`] says why a request was refused. [`reload`] is what a holder's bytes cost to
//! bring back, which decides whom a reclaim asks first within a class.
//!
//! The books follow the card, not the holders' word: a process the supervisor can see counts
//! as the larger of its leases and its measured use, and bytes it gives back (release,
//! shrink, revocation) become grantable only once a reading taken after the give-back shows
//! its use down to what it still holds (a [`Return`] until then).

pub mod broker;
pub mod error;
pub mod events;
pub mod ledger;
mod queue;
pub mod reload;
pub mod scope;

use std::time::{Duration, Instant};

pub use error::LeaseError;
pub use reload::{ReloadCost, ReloadSource};

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

impl Peer {
    /// The pid whose GPU use the supervisor can measure; None for a caller in another pid
    /// namespace, which the kernel reports as pid 0.
    pub fn visible_pid(self) -> Option<u32> {
        (self.pid != 0).then_some(self.pid)
    }
}

/// A request for memory, already validated and resolved (GPU names to indices).
#[derive(Clone, Debug)]
pub struct Ask {
    pub holder: String,
    pub gpu: GpuChoice,
    pub bytes: u64,
    pub priority: Priority,
    pub preemptible: bool,
    /// What its bytes cost to bring back: whom a reclaim asks first within a class.
    pub reload: ReloadCost,
    pub max_wait: Option<Duration>,
    pub form: Form,
    pub peer: Option<Peer>,
    /// The identity that owns the lease (`uid:1000`, `token:ci`; `job:<id>` for a job's):
    /// only it, or an operator, may renew, shrink or release it.
    pub owner: String,
    /// What the owner may hold at once; None for the supervisor's own requests (jobs).
    pub quota: Option<Quota>,
}

/// What one identity may hold and wait for at once, checked when it asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub leases: u32,
    /// None: up to the budget.
    pub bytes: Option<u64>,
    pub waiting: u32,
}

/// Who acts on a lease: its key and whether it may act on everyone's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub owner: String,
    pub operator: bool,
}

impl Actor {
    /// Whether this actor may change what `owner` owns.
    pub fn may_act_for(&self, owner: &str) -> bool {
        self.operator || self.owner == owner
    }
}

/// A pending request to give bytes back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaim {
    pub bytes: u64,
    pub deadline: Instant,
    /// Who needs the memory, for the holder's logs.
    pub reason: String,
    /// The waiter it is for: the request is withdrawn when that waiter stops waiting. None:
    /// the holder uses more than it holds, and is asked to give the excess back; the request
    /// is withdrawn when a reading shows its use back within its leases.
    pub for_ticket: Option<Ticket>,
}

/// What a holder whose processes use more than their leases (beyond the tolerance) gets,
/// configured per priority class. A reclaim that is not answered by its deadline ends in a
/// revocation (a kill where the action is `Kill`), never in a grant of bytes still in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A warning and an Overuse event; the excess stays out of the budget meanwhile.
    Log,
    /// Ask the holder to give the excess back within the reclaim grace, then revoke.
    Reclaim,
    /// End the lease at once; what its processes still use stays out of the budget until
    /// the card shows it free.
    Revoke,
    /// Revoke, and kill the holder's process group at once (video workers; other holders
    /// are revoked, since the supervisor did not start them).
    Kill,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Reclaim => "reclaim",
            Action::Revoke => "revoke",
            Action::Kill => "kill",
        }
    }
}

/// Bytes a holder gave back that the card does not yet show free. They stay out of the
/// budget until a reading taken after `since` shows them free: such a reading frees what the
/// holder no longer uses above what it still holds, and keeps the rest. Past the return
/// timeout what is left is reported overdue, and still stays out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Return {
    pub lease_id: String,
    pub holder: String,
    pub gpu: u32,
    pub pid: u32,
    pub bytes: u64,
    pub since: Instant,
    /// How the bytes left the lease.
    pub reason: ReleaseReason,
    /// The return timeout passed without the bytes showing free.
    pub overdue: bool,
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
    /// See [`Ask::reload`].
    pub reload: ReloadCost,
    pub form: Form,
    pub peer: Option<Peer>,
    /// The identity that asked for it (see [`Ask::owner`]).
    pub owner: String,
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
    /// Part of the lease, given back with Shrink.
    Shrunk,
    /// The lease was revoked (a reclaim unanswered, overuse).
    Revoked,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseReason::Released => "released",
            ReleaseReason::StreamClosed => "stream closed",
            ReleaseReason::HolderDied => "holder died",
            ReleaseReason::TtlExpired => "ttl expired",
            ReleaseReason::Shutdown => "shutdown",
            ReleaseReason::Shrunk => "shrunk",
            ReleaseReason::Revoked => "revoked",
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
    /// The lease ended against its holder's will; `returning` of its bytes wait for the
    /// card to show them free. `kill`: the holder's process group is to be killed.
    Revoked {
        lease: Lease,
        reason: String,
        returning: u64,
        kill: bool,
    },
    /// `bytes` left the lease (all of it, or part with Shrink: then `lease` is what remains);
    /// `returning` of them wait for the card to show them free (0 for a holder counted by
    /// bytes alone, whose give-back cannot be checked).
    Released {
        lease: Lease,
        reason: ReleaseReason,
        bytes: u64,
        returning: u64,
    },
    /// Given-back bytes the card now shows free: grantable again.
    Returned {
        ret: Return,
        /// From the give-back to the reading that showed them free.
        took: Duration,
    },
    /// Given-back bytes still in use past the return timeout: they stay out of the budget.
    ReturnOverdue {
        ret: Return,
        /// What the holder's processes used at the last reading, and what they still hold.
        used: u64,
        holds: u64,
    },
    /// A holder's processes use more than their leases: `lease` stands for them (the one the
    /// action applies to).
    Overuse {
        lease: Lease,
        used: u64,
        leased: u64,
        action: Action,
    },
    /// A grant waits for a reading of this GPU newer than the freshness bound.
    NeedReading {
        gpu: u32,
    },
    /// A waiter would fit on this GPU once bytes on their way back are seen free: read it
    /// often while it waits (with nobody waiting, the periodic reading is enough).
    AwaitReturn {
        gpu: u32,
    },
}
