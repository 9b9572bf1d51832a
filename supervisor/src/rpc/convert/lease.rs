//! Lease requests to validated [`Ask`]s, and leases, events and status back to the wire.
//!
//! Validation lives here, before anything reaches the ledger: every field from outside is
//! checked and a bad one is refused with a message naming the field and the rule.

use std::time::Duration;

use arbiter::pb::supervisor::v1 as pb;

use crate::lease::broker::{Broker, Note};
use crate::lease::events::{Event, EventKind, GpuView};
use crate::lease::ledger::{ProcessView, WaiterView, visible_pid};
use crate::lease::reload::MEASURED_RATES;
use crate::lease::scope;
use crate::lease::{
    Ask, Form, GpuChoice, Lease, LeaseError, Peer, Quota, ReloadCost, ReloadSource, Return,
};

use super::{pb_duration, priority, priority_to_pb, timestamp};

const MAX_HOLDER_CHARS: usize = 128;
const MIN_TTL: Duration = Duration::from_secs(1);

/// Which RPC a request came through, since the two forms accept different fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Hold,
    Acquire,
}

/// Validates a lease request and resolves its GPU.
pub fn ask(
    request: pb::LeaseRequest,
    broker: &Broker,
    via: Via,
    peer: Option<Peer>,
    owner: String,
    quota: Option<Quota>,
) -> Result<Ask, LeaseError> {
    let holder = request.holder.trim().to_string();
    if holder.is_empty() {
        return Err(LeaseError::EmptyHolder);
    }
    let chars = holder.chars().count();
    if chars > MAX_HOLDER_CHARS || holder.chars().any(char::is_control) {
        return Err(LeaseError::BadHolder(chars));
    }
    if request.bytes == 0 {
        return Err(LeaseError::ZeroBytes);
    }
    let limits = broker.limits();
    let max_wait = duration("max_wait", request.max_wait)?;
    let priority = priority(request.priority).map_err(|rule| LeaseError::BadValue {
        field: "priority",
        rule,
    })?;
    if let Some(wait) = max_wait
        && wait > limits.max_wait
    {
        return Err(LeaseError::BadDuration {
            field: "max_wait",
            reason: format!(
                "{} but this supervisor allows at most {}: wait less, or leave it unset to wait until the call ends",
                human(wait),
                human(limits.max_wait)
            ),
        });
    }
    let ttl = duration("ttl", request.ttl)?;
    let reload = reload(request.reload)?;
    let form = match via {
        Via::Hold => {
            if ttl.is_some() {
                return Err(LeaseError::BadDuration {
                    field: "ttl",
                    reason: "set on a streaming lease, which lives as long as its stream: leave ttl unset, or use Acquire".into(),
                });
            }
            Form::Stream
        }
        Via::Acquire => {
            let ttl = ttl.unwrap_or(limits.default_ttl);
            if ttl < MIN_TTL || ttl > limits.max_ttl {
                return Err(LeaseError::BadDuration {
                    field: "ttl",
                    reason: format!(
                        "{}: it must be between {} and {}",
                        human(ttl),
                        human(MIN_TTL),
                        human(limits.max_ttl)
                    ),
                });
            }
            Form::Unary { ttl }
        }
    };
    Ok(Ask {
        holder,
        gpu: broker.resolve_gpu(&request.gpu)?,
        bytes: request.bytes,
        priority,
        preemptible: request.preemptible,
        reload,
        max_wait,
        form,
        peer,
        owner,
        quota,
    })
}

/// A reload cost from the wire; left out, or with neither a source nor a rate, it is a
/// holder that said nothing. A source number the enum does not name is refused rather than
/// taken for UNSPECIFIED, as `priority` does, and so is a rate no reload could have.
pub fn reload(value: Option<pb::ReloadCost>) -> Result<ReloadCost, LeaseError> {
    let Some(value) = value else {
        return Ok(ReloadCost::default());
    };
    let source = match pb::ReloadSource::try_from(value.source) {
        Ok(pb::ReloadSource::Unspecified) => ReloadSource::Unknown,
        Ok(pb::ReloadSource::HostPool) => ReloadSource::HostPool,
        Ok(pb::ReloadSource::PageCache) => ReloadSource::PageCache,
        Ok(pb::ReloadSource::Disk) => ReloadSource::Disk,
        Ok(pb::ReloadSource::Recompute) => ReloadSource::Recompute,
        Err(_) => {
            return Err(LeaseError::BadValue {
                field: "reload.source",
                rule: format!(
                    "is {}, which is not a reload source: use RELOAD_SOURCE_HOST_POOL (1), RELOAD_SOURCE_PAGE_CACHE (2), RELOAD_SOURCE_DISK (3) or RELOAD_SOURCE_RECOMPUTE (4), or leave it unset (0) if you do not know",
                    value.source
                ),
            });
        }
    };
    if let Some(rate) = value.bytes_per_second
        && !MEASURED_RATES.contains(&rate)
    {
        let why = if rate == 0 {
            "0".to_string()
        } else if rate < *MEASURED_RATES.start() {
            format!("{rate}, below 1 MB/s (was it GB/s or MB/s sent as a plain number?)")
        } else {
            format!("{rate}, above 10 TB/s, faster than any link into a GPU")
        };
        return Err(LeaseError::BadValue {
            field: "reload.bytes_per_second",
            rule: format!(
                "is {why}: send the rate you measured in bytes per second, from {} to {} (25 GB/s is 25000000000), or leave it unset for the source's typical rate",
                MEASURED_RATES.start(),
                MEASURED_RATES.end()
            ),
        });
    }
    Ok(ReloadCost {
        source,
        measured: value.bytes_per_second,
    })
}

/// A reload cost for the wire: None for a holder that said nothing, as it sent it.
pub fn reload_to_pb(cost: ReloadCost) -> Option<pb::ReloadCost> {
    if cost == ReloadCost::default() {
        return None;
    }
    let source = match cost.source {
        ReloadSource::Unknown => pb::ReloadSource::Unspecified,
        ReloadSource::HostPool => pb::ReloadSource::HostPool,
        ReloadSource::PageCache => pb::ReloadSource::PageCache,
        ReloadSource::Disk => pb::ReloadSource::Disk,
        ReloadSource::Recompute => pb::ReloadSource::Recompute,
    };
    Some(pb::ReloadCost {
        source: source as i32,
        bytes_per_second: cost.measured,
    })
}

fn duration(
    field: &'static str,
    value: Option<prost_types::Duration>,
) -> Result<Option<Duration>, LeaseError> {
    super::duration(value).map_err(|rule| LeaseError::BadValue { field, rule })
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A lease for the wire, with its holder's process as charged where the caller knows it.
pub fn lease(broker: &Broker, lease: &Lease, process: Option<&ProcessView>) -> pb::Lease {
    let gpu = &broker.gpus()[lease.gpu as usize];
    pb::Lease {
        lease_id: lease.id.clone(),
        holder: lease.holder.clone(),
        gpu_uuid: gpu.uuid.clone(),
        gpu_index: gpu.index,
        bytes: lease.bytes,
        priority: priority_to_pb(lease.priority) as i32,
        preemptible: lease.preemptible,
        form: match lease.form {
            Form::Stream => pb::LeaseForm::Stream,
            Form::Unary { .. } => pb::LeaseForm::Unary,
        } as i32,
        // A pod-scoped lease's key is no process: it has no pid or uid to show.
        pid: lease.peer.map(|p| p.pid).filter(|&p| !scope::is_key(p)),
        uid: lease.peer.filter(|p| !scope::is_key(p.pid)).map(|p| p.uid),
        granted_at: Some(timestamp(broker.wall(lease.granted_at))),
        expires_at: lease.expires_at.map(|at| timestamp(broker.wall(at))),
        reclaim: lease.reclaim.as_ref().map(|_| reclaim(broker, lease)),
        used_bytes: process.map(|p| p.used),
        measured: visible_pid(lease).is_some(),
        excess_bytes: process.map(|p| p.excess()),
        owner: lease.owner.clone(),
        reload: reload_to_pb(lease.reload),
    }
}

pub fn giveback(broker: &Broker, ret: &Return, waited: Duration) -> pb::Return {
    pb::Return {
        lease_id: ret.lease_id.clone(),
        holder: ret.holder.clone(),
        gpu_uuid: broker.gpus()[ret.gpu as usize].uuid.clone(),
        pid: if scope::is_key(ret.pid) { 0 } else { ret.pid },
        bytes: ret.bytes,
        reason: ret.reason.as_str().into(),
        waited: Some(pb_duration(waited)),
        overdue: ret.overdue,
    }
}

fn reclaim(broker: &Broker, lease: &Lease) -> pb::ReclaimRequested {
    let r = lease.reclaim.as_ref();
    pb::ReclaimRequested {
        lease_id: lease.id.clone(),
        bytes: r.map_or(0, |r| r.bytes),
        deadline: r.map(|r| timestamp(broker.wall(r.deadline))),
        reason: r.map(|r| r.reason.clone()).unwrap_or_default(),
    }
}

/// A note to a holder as a stream update. None for notes that end the stream with an error.
pub fn update(broker: &Broker, note: Note) -> pb::LeaseUpdate {
    use pb::lease_update::Update;
    let update = match note {
        Note::Queued {
            position,
            queue_length,
        } => Update::Queued(pb::Queued {
            position,
            queue_length,
        }),
        Note::Granted(l) => Update::Granted(lease(broker, &l, None)),
        Note::Reclaim(l) => Update::Reclaim(reclaim(broker, &l)),
        Note::Revoked { lease, reason, .. } => Update::Revoked(pb::Revoked {
            lease_id: lease.id,
            reason,
            ..Default::default()
        }),
        Note::WaitEnded { reason, .. } => Update::Revoked(pb::Revoked {
            lease_id: String::new(),
            reason: reason.as_str().into(),
            ..Default::default()
        }),
    };
    pb::LeaseUpdate {
        update: Some(update),
    }
}

pub fn gpu(view: GpuView) -> pb::GpuStatus {
    pb::GpuStatus {
        index: view.index,
        uuid: view.uuid,
        name: view.name,
        total_bytes: view.total,
        used_bytes: view.used,
        free_bytes: view.free,
        reserve_bytes: view.reserve,
        unleased_bytes: view.unleased,
        budget_bytes: view.budget,
        granted_bytes: view.granted,
        excess_bytes: view.excess,
        returning_bytes: view.returning,
        unverified_bytes: view.unverified,
        unmeasured_bytes: view.unmeasured,
        available_bytes: view.available,
        processes: view
            .processes
            .into_iter()
            .map(|(pid, used_bytes, lease_id)| pb::GpuProcess {
                pid,
                used_bytes,
                lease_id: lease_id.unwrap_or_default(),
            })
            .collect(),
        sampled_at: view.sampled_at.map(timestamp),
    }
}

pub fn waiter(broker: &Broker, w: WaiterView) -> pb::Waiter {
    pb::Waiter {
        holder: w.ask.holder,
        gpu: match w.ask.gpu {
            GpuChoice::Any => String::new(),
            GpuChoice::Index(i) => broker.gpus()[i as usize].uuid.clone(),
        },
        bytes: w.ask.bytes,
        priority: priority_to_pb(w.ask.priority) as i32,
        position: w.position,
        waited: Some(pb_duration(w.waited)),
    }
}

pub fn event(broker: &Broker, event: Event) -> pb::Event {
    use pb::event::Kind;
    let kind = match event.kind {
        EventKind::Granted(l) => Kind::Granted(lease(broker, &l, None)),
        EventKind::Released {
            lease: l,
            reason,
            bytes,
            returning,
        } => Kind::Released(pb::Released {
            lease_id: l.id.clone(),
            holder: l.holder.clone(),
            gpu_uuid: broker.gpus()[l.gpu as usize].uuid.clone(),
            bytes,
            reason: reason.as_str().into(),
            returning_bytes: returning,
        }),
        EventKind::Reclaim(l) => Kind::Reclaim(reclaim(broker, &l)),
        EventKind::ReclaimWithdrawn(l) => Kind::ReclaimWithdrawn(pb::ReclaimWithdrawn {
            lease_id: l.id,
            holder: l.holder,
        }),
        EventKind::Revoked {
            lease,
            reason,
            returning,
        } => Kind::Revoked(pb::Revoked {
            gpu_uuid: broker.gpus()[lease.gpu as usize].uuid.clone(),
            holder: lease.holder,
            bytes: lease.bytes,
            lease_id: lease.id,
            reason,
            returning_bytes: returning,
        }),
        EventKind::Returned { ret, took } => Kind::Returned(pb::Returned {
            gpu_uuid: broker.gpus()[ret.gpu as usize].uuid.clone(),
            lease_id: ret.lease_id,
            holder: ret.holder,
            bytes: ret.bytes,
            took: Some(pb_duration(took)),
            overdue: ret.overdue,
        }),
        EventKind::ReturnOverdue { ret, used, holds } => Kind::ReturnOverdue(pb::ReturnOverdue {
            gpu_uuid: broker.gpus()[ret.gpu as usize].uuid.clone(),
            lease_id: ret.lease_id,
            holder: ret.holder,
            pid: if scope::is_key(ret.pid) { 0 } else { ret.pid },
            bytes: ret.bytes,
            used_bytes: used,
            holds_bytes: holds,
        }),
        EventKind::WaitStarted {
            holder,
            gpu,
            bytes,
            priority,
            position,
        } => Kind::WaitStarted(pb::WaitStarted {
            holder,
            gpu,
            bytes,
            priority: priority_to_pb(priority) as i32,
            position,
        }),
        EventKind::WaitEnded {
            holder,
            reason,
            waited,
        } => Kind::WaitEnded(pb::WaitEnded {
            holder,
            reason: reason.as_str().into(),
            waited: Some(pb_duration(waited)),
        }),
        EventKind::Sample(view) => Kind::Sample(gpu(view)),
        EventKind::Overuse {
            lease,
            used,
            leased,
            action,
        } => Kind::Overuse(pb::Overuse {
            lease_id: lease.id,
            holder: lease.holder,
            lease_bytes: leased,
            used_bytes: used,
            action: action.as_str().into(),
        }),
    };
    pb::Event {
        at: Some(timestamp(event.at)),
        kind: Some(kind),
    }
}
