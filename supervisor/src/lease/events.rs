//! The operators' event feed: every grant, release, shrink, reclaim, revocation, verified
//! return, wait and sample. Every change of granted or returning bytes is an event, so a
//! watcher that sums them agrees with `status`.
//!
//! A broadcast channel: a slow watcher skips events (and is told how many) rather than
//! slowing the broker down.

use std::time::{Duration, SystemTime};

use tokio::sync::broadcast;

use super::{Action, Lease, Priority, ReleaseReason, Return, WaitEnd};

/// A GPU as operators see it: its sample, budget and grants.
#[derive(Clone, Debug, Default)]
pub struct GpuView {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub reserve: u64,
    pub unleased: u64,
    pub budget: u64,
    pub granted: u64,
    /// Use above their leases by the holders the supervisor sees.
    pub excess: u64,
    /// Given-back bytes the card does not yet show free (overdue ones included).
    pub returning: u64,
    /// The overdue part of `returning`.
    pub unverified: u64,
    /// Granted to holders the supervisor cannot see (counted by bytes alone).
    pub unmeasured: u64,
    pub available: u64,
    /// (pid, bytes used, lease id it counts against)
    pub processes: Vec<(u32, u64, Option<String>)>,
    pub sampled_at: Option<SystemTime>,
}

#[derive(Clone, Debug)]
pub enum EventKind {
    Granted(Lease),
    /// `bytes` left the lease; `returning` of them wait for the card to show them free.
    Released {
        lease: Lease,
        reason: ReleaseReason,
        bytes: u64,
        returning: u64,
    },
    Reclaim(Lease),
    ReclaimWithdrawn(Lease),
    Revoked {
        lease: Lease,
        reason: String,
        returning: u64,
    },
    /// Given-back bytes seen free: grantable again.
    Returned {
        ret: Return,
        took: Duration,
    },
    ReturnOverdue {
        ret: Return,
        used: u64,
        holds: u64,
    },
    WaitStarted {
        holder: String,
        gpu: String,
        bytes: u64,
        priority: Priority,
        position: u32,
    },
    WaitEnded {
        holder: String,
        reason: WaitEndReason,
        waited: Duration,
    },
    Sample(GpuView),
    Overuse {
        lease: Lease,
        used: u64,
        leased: u64,
        action: Action,
    },
}

#[derive(Clone, Copy, Debug)]
pub enum WaitEndReason {
    Granted,
    Ended(WaitEnd),
}

impl WaitEndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitEndReason::Granted => "granted",
            WaitEndReason::Ended(end) => end.as_str(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at: SystemTime,
    pub kind: EventKind,
}

/// The sending side of the feed; cheap to clone.
#[derive(Clone)]
pub struct EventFeed {
    sender: broadcast::Sender<Event>,
}

impl EventFeed {
    pub fn new(capacity: usize) -> EventFeed {
        EventFeed {
            sender: broadcast::channel(capacity).0,
        }
    }

    pub fn publish(&self, kind: EventKind) {
        // No subscribers is normal: nobody is watching.
        let _ = self.sender.send(Event {
            at: SystemTime::now(),
            kind,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }
}
