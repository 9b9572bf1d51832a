//! Counters and histograms folded from the broker's event feed ([`crate::lease::events`]):
//! grants, releases, reclaims, revocations, deadline expiries, overuse, the wait from
//! request to grant and the time given-back bytes took to show free.
//!
//! Derived from the feed rather than counted inside the ledger, so the ledger stays a plain
//! state machine; the feed is a broadcast, so a slow fold skips events (counted in
//! `arbiter_metrics_events_skipped_total`) and never holds the broker up.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::lease::events::{EventKind, WaitEndReason};
use crate::lease::{Action, Form, Lease, Priority, ReleaseReason, WaitEnd};

/// Waits from request to grant: an immediate grant is 0, a queued one may take hours.
const WAIT_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Given-back bytes showing free: a reading or a few (`return_poll`), or the return timeout.
const RETURN_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LeaseLabels {
    pub priority: String,
    pub form: String,
}

impl LeaseLabels {
    pub fn of(priority: Priority, form: Form) -> LeaseLabels {
        LeaseLabels {
            priority: priority_label(priority).into(),
            form: form_label(form).into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabels {
    pub priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

/// The label value of a priority class, as the wire and the CLI spell it.
pub const PRIORITIES: [Priority; 4] = [
    Priority::Batch,
    Priority::Normal,
    Priority::Interactive,
    Priority::Critical,
];

/// Both forms (a unary lease's TTL does not show in the labels).
pub const FORMS: [Form; 2] = [
    Form::Stream,
    Form::Unary {
        ttl: Duration::ZERO,
    },
];

const REASONS: [ReleaseReason; 7] = [
    ReleaseReason::Released,
    ReleaseReason::StreamClosed,
    ReleaseReason::HolderDied,
    ReleaseReason::TtlExpired,
    ReleaseReason::Shutdown,
    ReleaseReason::Shrunk,
    ReleaseReason::Revoked,
];

const ACTIONS: [Action; 4] = [Action::Log, Action::Reclaim, Action::Revoke, Action::Kill];

pub fn priority_label(priority: Priority) -> &'static str {
    match priority {
        Priority::Batch => "batch",
        Priority::Normal => "normal",
        Priority::Interactive => "interactive",
        Priority::Critical => "critical",
    }
}

pub fn form_label(form: Form) -> &'static str {
    match form {
        Form::Stream => "stream",
        Form::Unary { .. } => "unary",
    }
}

/// A label value from one of the domain's `as_str` phrases ("stream closed" ->
/// "stream_closed"), so PromQL selectors need no quoting of spaces.
fn snake(text: &str) -> String {
    text.replace(' ', "_")
}

/// What the feed has said so far.
#[derive(Debug)]
pub struct Feed {
    grants: Family<LeaseLabels, Counter>,
    releases: Family<ReasonLabels, Counter>,
    reclaims: Family<PriorityLabels, Counter>,
    revocations: Family<PriorityLabels, Counter>,
    deadline_expiries: Counter,
    overuse: Family<ActionLabels, Counter>,
    wait: Histogram,
    returned: Histogram,
    skipped: Counter,
}

impl Default for Feed {
    fn default() -> Feed {
        Feed::new()
    }
}

impl Feed {
    /// Every series of a known label set starts at 0, so a dashboard's rate() sees the
    /// first event as an increase and a query finds the series before anything happened.
    pub fn new() -> Feed {
        let feed = Feed {
            grants: Family::default(),
            releases: Family::default(),
            reclaims: Family::default(),
            revocations: Family::default(),
            deadline_expiries: Counter::default(),
            overuse: Family::default(),
            wait: Histogram::new(WAIT_BUCKETS),
            returned: Histogram::new(RETURN_BUCKETS),
            skipped: Counter::default(),
        };
        for priority in PRIORITIES {
            for form in FORMS {
                feed.grants
                    .get_or_create(&LeaseLabels::of(priority, form))
                    .inc_by(0);
            }
            let labels = PriorityLabels {
                priority: priority_label(priority).into(),
            };
            feed.reclaims.get_or_create(&labels).inc_by(0);
            feed.revocations.get_or_create(&labels).inc_by(0);
        }
        for reason in REASONS {
            feed.releases
                .get_or_create(&ReasonLabels {
                    reason: snake(reason.as_str()),
                })
                .inc_by(0);
        }
        for action in ACTIONS {
            feed.overuse
                .get_or_create(&ActionLabels {
                    action: action.as_str().into(),
                })
                .inc_by(0);
        }
        feed
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lease_grants",
            "Leases granted, by priority class and form",
            self.grants.clone(),
        );
        registry.register(
            "lease_releases",
            "Leases (or parts of them, reason=shrunk) given back, by how they ended",
            self.releases.clone(),
        );
        registry.register(
            "lease_reclaims",
            "Reclaims asked of holders, by the lease's priority class",
            self.reclaims.clone(),
        );
        registry.register(
            "lease_revocations",
            "Leases revoked (a reclaim unanswered, overuse, shutdown), by priority class",
            self.revocations.clone(),
        );
        registry.register(
            "lease_deadline_expiries",
            "Waits in the queue that reached their max_wait deadline without a grant",
            self.deadline_expiries.clone(),
        );
        registry.register(
            "lease_overuse",
            "Readings that showed a holder using more than its leases, by the action taken",
            self.overuse.clone(),
        );
        registry.register_with_unit(
            "lease_wait",
            "Time from a request's arrival to its grant (0 for an immediate grant)",
            Unit::Seconds,
            self.wait.clone(),
        );
        registry.register_with_unit(
            "lease_return",
            "Time from a give-back to a reading that shows the bytes free",
            Unit::Seconds,
            self.returned.clone(),
        );
        registry.register(
            "metrics_events_skipped",
            "Events the metrics fold missed because it fell behind the feed",
            self.skipped.clone(),
        );
    }

    /// The fold fell behind by `count` events.
    pub fn skipped(&self, count: u64, fold: &mut Fold) {
        self.skipped.inc_by(count);
        fold.waited = None;
    }

    /// Folds one event. `fold` carries what one event leaves for the next: the broker
    /// publishes a queued request's `WaitEnded { Granted }` right before its `Granted`,
    /// under the same lock, so the next grant is the one that waited (only samples, which
    /// the broker publishes outside its lock, can come between them).
    pub fn fold(&self, event: &EventKind, fold: &mut Fold) {
        match event {
            EventKind::Granted(lease) => {
                self.grants
                    .get_or_create(&LeaseLabels::of(lease.priority, lease.form))
                    .inc();
                let waited = fold.waited.take().unwrap_or(Duration::ZERO);
                self.wait.observe(waited.as_secs_f64());
            }
            EventKind::WaitEnded {
                reason: WaitEndReason::Granted,
                waited,
                ..
            } => fold.waited = Some(*waited),
            EventKind::WaitEnded {
                reason: WaitEndReason::Ended(WaitEnd::DeadlineExceeded),
                ..
            } => {
                self.deadline_expiries.inc();
            }
            EventKind::Released { reason, .. } => {
                self.releases
                    .get_or_create(&ReasonLabels {
                        reason: snake(reason.as_str()),
                    })
                    .inc();
            }
            EventKind::Reclaim(lease) => {
                self.reclaims.get_or_create(&priority_of(lease)).inc();
            }
            EventKind::Revoked { lease, .. } => {
                self.revocations.get_or_create(&priority_of(lease)).inc();
            }
            EventKind::Returned { took, .. } => self.returned.observe(took.as_secs_f64()),
            EventKind::Overuse { action, .. } => {
                self.overuse
                    .get_or_create(&ActionLabels {
                        action: action.as_str().into(),
                    })
                    .inc();
            }
            EventKind::WaitEnded { .. }
            | EventKind::WaitStarted { .. }
            | EventKind::ReclaimWithdrawn(_)
            | EventKind::ReturnOverdue { .. }
            | EventKind::Sample(_) => {}
        }
    }
}

fn priority_of(lease: &Lease) -> PriorityLabels {
    PriorityLabels {
        priority: priority_label(lease.priority).into(),
    }
}

/// What one event leaves for the next (see [`Feed::fold`]).
#[derive(Debug, Default)]
pub struct Fold {
    waited: Option<Duration>,
}
