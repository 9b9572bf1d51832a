//! The accounting of grants and waits: the single place that decides who gets memory.
//!
//! Rules, in the order they apply:
//! - A request larger than every eligible GPU's limit (capacity minus reserve) can never be
//!   granted and is refused at once.
//! - Waiters are served in rank order (priority plus aging, then arrival; see `queue`). A
//!   waiter that fits is granted on the GPU where it fits most tightly, keeping large holes
//!   for large requests.
//! - A waiter that does not fit blocks its GPU for everyone ranked below it, so a large
//!   request is never starved by a stream of small ones slipping past it.
//! - A blocked waiter that outranks preemptible holders on its GPU (by priority class) asks
//!   them to give bytes back before a deadline; a holder that has not by then is revoked.
//!   It asks for no more than it lacks, from the lowest class first, within a class from
//!   the holders whose bytes are cheapest to bring back (see `reload`), then the most
//!   recently granted.
//! - A process the supervisor can see (its pid is known) is charged the larger of its leases
//!   and its measured use: use above a lease shrinks what can be granted exactly as a
//!   foreign process does. Leases of holders it cannot see (TCP callers) count by bytes.
//! - Bytes a visible holder gives back (Release, Shrink, a revocation, a TTL) stay charged
//!   as a [`Return`] until a reading taken after the give-back shows them free: the part of
//!   its use above what it still holds stays charged, the rest is grantable (the waiter is
//!   granted then, not at the give-back).
//! - A grant is decided on a reading of the card at most `fresh_within` old; an older one
//!   asks for a new reading ([`Effect::NeedReading`]) and the grant waits for it.
//! - The charges on a GPU never exceed its budget at the moment of a grant. (A foreign
//!   process appearing later can push the budget below them; then nothing more is granted
//!   there until it fits again.)
//!
//! No I/O and no clock: every operation takes `now` and returns the [`Effect`]s it caused.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use arbiter::ByteSize;

use super::queue::{rank, service_order};
use super::{
    Action, Ask, Effect, Form, GpuChoice, Lease, LeaseError, Peer, Priority, Reclaim,
    ReleaseReason, Return, Ticket, WaitEnd,
};
use crate::budget::Budget;

/// Tunables of the ledger.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A waiter gains one priority class per `aging` waited.
    pub aging: Duration,
    /// How long a holder has to answer a reclaim request.
    pub reclaim_grace: Duration,
    /// Grants are decided only on a reading of the card at most this old. None: on
    /// whatever was last read (for callers that feed readings by hand).
    pub fresh_within: Option<Duration>,
    /// Given-back bytes not shown free after this long are reported overdue (they stay
    /// out of the budget all the same).
    pub return_timeout: Duration,
    /// Use above a process's leases by more than this is overuse; a give-back counts as
    /// verified when use is within this of what the process still holds.
    pub tolerance: u64,
    /// What overuse gets, per priority class.
    pub overuse: [Action; 4],
}

impl Policy {
    fn overuse_action(&self, priority: Priority) -> Action {
        self.overuse[priority as usize - 1]
    }
}

/// One GPU's side of the books.
#[derive(Clone, Debug)]
pub struct Book {
    /// How errors name this GPU: "GPU 0 (GPU-…, NVIDIA H100)".
    pub label: String,
    pub budget: Budget,
    /// The sum of the leases' bytes.
    pub granted: u64,
    /// Use above their leases by the processes the supervisor sees, at the last reading.
    pub excess: u64,
    /// Given-back bytes not yet shown free (overdue ones included).
    pub returning: u64,
    /// The part of `returning` past the return timeout: unverified.
    pub unverified: u64,
    /// When the card was last read: the start of that reading.
    pub read_at: Option<Instant>,
}

impl Book {
    pub fn new(label: String, budget: Budget) -> Book {
        Book {
            label,
            budget,
            granted: 0,
            excess: 0,
            returning: 0,
            unverified: 0,
            read_at: None,
        }
    }

    /// Everything charged against the budget: leases, use above them, bytes on their way
    /// back.
    pub fn charged(&self) -> u64 {
        self.granted + self.excess + self.returning
    }

    pub fn available(&self) -> u64 {
        self.budget.total().saturating_sub(self.charged())
    }
}

/// One reading of a GPU, as the broker attributes it.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// When the reading started: it proves nothing about what happened after.
    pub taken_at: Option<Instant>,
    /// Used by processes that are not tracked (foreign), or by nobody visible.
    pub unleased: u64,
    /// What each tracked pid (and its descendants) used; a tracked pid missing here used 0.
    pub used_by: HashMap<u32, u64>,
}

/// A process the ledger charges on one GPU: one that holds leases there, or gave bytes back
/// that the card does not yet show free.
#[derive(Clone, Debug, Default)]
struct Process {
    used: u64,
    returns: Vec<Return>,
    /// Reported as overusing (so it is reported once, not every reading).
    overusing: bool,
}

/// A charged process as operators see it.
#[derive(Clone, Debug)]
pub struct ProcessView {
    pub gpu: u32,
    pub pid: u32,
    pub used: u64,
    pub leased: u64,
    pub returning: u64,
}

impl ProcessView {
    /// Use above what the process holds and is giving back.
    pub fn excess(&self) -> u64 {
        self.used.saturating_sub(self.leased + self.returning)
    }
}

#[derive(Clone, Debug)]
struct Waiter {
    ticket: Ticket,
    ask: Ask,
    arrived: Instant,
    deadline: Option<Instant>,
    /// Last position reported to the holder; 0 before the first report.
    position: u32,
}

/// A waiter as operators see it.
#[derive(Clone, Debug)]
pub struct WaiterView {
    pub ticket: Ticket,
    pub ask: Ask,
    pub position: u32,
    pub waited: Duration,
}

pub struct Ledger {
    policy: Policy,
    books: Vec<Book>,
    waiters: Vec<Waiter>,
    leases: BTreeMap<Ticket, Lease>,
    by_id: HashMap<String, Ticket>,
    /// Keyed by (gpu, pid).
    processes: BTreeMap<(u32, u32), Process>,
    next_ticket: Ticket,
}

/// The order in which a reclaim asks holders for bytes. The lowest class first: a class is
/// a promise, and cost never outweighs it. Within a class the holders whose bytes are
/// cheapest to bring back (fastest reload first, those that did not say last), since a
/// reload is what a reclaim really costs its holder. Then the most recently granted: it
/// has had the least use of its memory.
fn reclaim_order(a: &Lease, b: &Lease) -> std::cmp::Ordering {
    a.priority
        .cmp(&b.priority)
        .then(a.reload.cheaper_first(b.reload))
        .then(b.granted_at.cmp(&a.granted_at))
}

/// The pid whose use counts against a lease; None where the supervisor cannot see it (a
/// TCP caller, or a Unix-socket caller in another pid namespace, which the kernel reports
/// as pid 0).
pub fn visible_pid(lease: &Lease) -> Option<u32> {
    lease.peer.and_then(Peer::visible_pid)
}

impl Ledger {
    pub fn new(books: Vec<Book>, policy: Policy) -> Ledger {
        Ledger {
            policy,
            books,
            waiters: Vec::new(),
            leases: BTreeMap::new(),
            by_id: HashMap::new(),
            processes: BTreeMap::new(),
            next_ticket: 1,
        }
    }

    pub fn books(&self) -> &[Book] {
        &self.books
    }

    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    pub fn lease(&self, ticket: Ticket) -> Option<&Lease> {
        self.leases.get(&ticket)
    }

    /// The ticket of the lease with public id `id`.
    pub fn ticket_of(&self, id: &str) -> Result<Ticket, LeaseError> {
        self.by_id
            .get(id)
            .copied()
            .ok_or_else(|| LeaseError::UnknownLease(arbiter::echo::echo(id)))
    }

    /// The owner of every waiting request, in no order: what quotas count.
    pub fn waiting_owners(&self) -> Vec<&str> {
        self.waiters.iter().map(|w| w.ask.owner.as_str()).collect()
    }

    pub fn is_waiting(&self, ticket: Ticket) -> bool {
        self.waiters.iter().any(|w| w.ticket == ticket)
    }

    /// The queue in service order.
    pub fn queue(&self, now: Instant) -> Vec<WaiterView> {
        self.ordered(now)
            .into_iter()
            .map(|i| {
                let w = &self.waiters[i];
                WaiterView {
                    ticket: w.ticket,
                    ask: w.ask.clone(),
                    position: w.position,
                    waited: now.saturating_duration_since(w.arrived),
                }
            })
            .collect()
    }

    /// Takes a request: grants it now, queues it, or refuses it if it can never fit.
    pub fn ask(&mut self, ask: Ask, now: Instant) -> Result<(Ticket, Vec<Effect>), LeaseError> {
        self.check_fits(&ask)?;
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let deadline = ask.max_wait.map(|wait| now + wait);
        self.waiters.push(Waiter {
            ticket,
            ask,
            arrived: now,
            deadline,
            position: 0,
        });
        let mut effects = Vec::new();
        self.schedule(now, &mut effects);
        // A zero wait means "now or not at all": end it here rather than at the next tick.
        if deadline.is_some_and(|d| d <= now)
            && let Some(i) = self.waiters.iter().position(|w| w.ticket == ticket)
        {
            let waiter = self.waiters.remove(i);
            effects.push(Effect::WaitEnded {
                ticket,
                holder: waiter.ask.holder,
                reason: WaitEnd::DeadlineExceeded,
                waited: Duration::ZERO,
            });
        }
        Ok((ticket, effects))
    }

    /// Refuses at once what no eligible GPU could hold even empty.
    fn check_fits(&self, ask: &Ask) -> Result<(), LeaseError> {
        if ask.bytes == 0 {
            return Err(LeaseError::ZeroBytes);
        }
        let eligible: Vec<&Book> = match ask.gpu {
            GpuChoice::Any => self.books.iter().collect(),
            GpuChoice::Index(i) => self.books.get(i as usize).into_iter().collect(),
        };
        if eligible.iter().any(|b| b.budget.limit() >= ask.bytes) {
            return Ok(());
        }
        let Some(largest) = eligible.iter().max_by_key(|b| b.budget.limit()) else {
            return Err(LeaseError::UnknownGpu {
                given: format!("{:?}", ask.gpu),
                known: "no GPUs".into(),
            });
        };
        let fits_elsewhere = matches!(ask.gpu, GpuChoice::Index(_))
            && self.books.iter().any(|b| b.budget.limit() >= ask.bytes);
        Err(LeaseError::NeverFits {
            asked: ByteSize(ask.bytes),
            gpu: largest.label.clone(),
            limit: ByteSize(largest.budget.limit()),
            capacity: ByteSize(largest.budget.capacity),
            reserve: ByteSize(largest.budget.reserve),
            hint: if fits_elsewhere {
                " or pick a larger GPU (leave gpu empty for any)"
            } else {
                ""
            },
        })
    }

    /// Ends a request, whatever state it is in: a waiter leaves the queue, a lease is
    /// released. Unknown tickets are ignored: the request may have ended already. A visible
    /// holder's bytes stay charged until the card shows them free.
    pub fn end(&mut self, ticket: Ticket, reason: ReleaseReason, now: Instant) -> Vec<Effect> {
        self.end_with(ticket, reason, false, now)
    }

    /// Ends a lease whose memory the caller has already seen come back (a reaped worker,
    /// checked by `job::verify`): its bytes are grantable at once.
    pub fn end_verified(&mut self, ticket: Ticket, now: Instant) -> Vec<Effect> {
        self.end_with(ticket, ReleaseReason::Released, true, now)
    }

    fn end_with(
        &mut self,
        ticket: Ticket,
        reason: ReleaseReason,
        verified: bool,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(i) = self.waiters.iter().position(|w| w.ticket == ticket) {
            let waiter = self.waiters.remove(i);
            effects.push(Effect::WaitEnded {
                ticket,
                holder: waiter.ask.holder,
                reason: match reason {
                    ReleaseReason::Shutdown => WaitEnd::Shutdown,
                    _ => WaitEnd::Cancelled,
                },
                waited: now.saturating_duration_since(waiter.arrived),
            });
        } else if let Some(released) = self.release(ticket, reason, verified, now) {
            effects.push(released);
        } else {
            return effects;
        }
        self.schedule(now, &mut effects);
        effects
    }

    /// Makes `pid` the process whose memory counts against a lease.
    pub fn set_peer(&mut self, ticket: Ticket, pid: u32) {
        let Some(lease) = self.leases.get_mut(&ticket) else {
            return;
        };
        let old = visible_pid(lease);
        let uid = lease.peer.map_or(0, |p| p.uid);
        lease.peer = Some(Peer { pid, uid });
        let gpu = lease.gpu;
        if let Some(pid) = visible_pid(lease) {
            self.processes.entry((gpu, pid)).or_default();
        }
        if let Some(old) = old {
            self.forget_if_idle(gpu, old);
        }
        self.recount(gpu);
    }

    /// Renews a unary lease for another TTL.
    pub fn renew(&mut self, ticket: Ticket, now: Instant) -> Result<Lease, LeaseError> {
        let lease = self
            .leases
            .get_mut(&ticket)
            .ok_or_else(|| LeaseError::UnknownLease(ticket.to_string()))?;
        match lease.form {
            Form::Unary { ttl } => {
                lease.expires_at = Some(now + ttl);
                Ok(lease.clone())
            }
            Form::Stream => Err(LeaseError::NotUnary(lease.id.clone())),
        }
    }

    /// Makes a lease smaller, the answer to a reclaim request (or a holder being tidy). The
    /// bytes given back are grantable once the card shows the holder's use down.
    pub fn shrink(
        &mut self,
        ticket: Ticket,
        bytes: u64,
        now: Instant,
    ) -> Result<(Lease, Vec<Effect>), LeaseError> {
        let lease = self
            .leases
            .get_mut(&ticket)
            .ok_or_else(|| LeaseError::UnknownLease(ticket.to_string()))?;
        if bytes == 0 || bytes >= lease.bytes {
            return Err(LeaseError::BadShrink {
                id: lease.id.clone(),
                held: ByteSize(lease.bytes),
                asked: ByteSize(bytes),
            });
        }
        let given = lease.bytes - bytes;
        lease.bytes = bytes;
        if let Some(reclaim) = &mut lease.reclaim
            && reclaim.for_ticket.is_some()
        {
            reclaim.bytes = reclaim.bytes.saturating_sub(given);
            if reclaim.bytes == 0 {
                lease.reclaim = None;
            }
        }
        let lease = lease.clone();
        self.books[lease.gpu as usize].granted -= given;
        let returning = self.give_back(&lease, given, ReleaseReason::Shrunk, now);
        self.recount(lease.gpu);
        let mut effects = vec![Effect::Released {
            lease: lease.clone(),
            reason: ReleaseReason::Shrunk,
            bytes: given,
            returning,
        }];
        self.schedule(now, &mut effects);
        Ok((lease, effects))
    }

    /// Records memory used by processes without a lease, for tests that feed the ledger by
    /// hand: a reading of foreign use alone, which proves nothing about the holders.
    #[cfg(test)]
    pub fn set_unleased(&mut self, gpu: u32, bytes: u64, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(book) = self.books.get_mut(gpu as usize)
            && book.budget.unleased != bytes
        {
            book.budget.unleased = bytes;
            self.schedule(now, &mut effects);
        }
        effects
    }

    /// The pids whose use a reading of `gpu` must report: those holding leases there and
    /// those whose given-back bytes are not yet shown free.
    pub fn tracked(&self, gpu: u32) -> Vec<u32> {
        self.processes
            .range((gpu, 0)..=(gpu, u32::MAX))
            .map(|(&(_, pid), _)| pid)
            .collect()
    }

    /// Given-back bytes on `gpu` still within the return timeout.
    fn open_returns(&self, gpu: u32) -> u64 {
        self.processes
            .range((gpu, 0)..=(gpu, u32::MAX))
            .flat_map(|(_, p)| p.returns.iter())
            .filter(|r| !r.overdue)
            .map(|r| r.bytes)
            .sum()
    }

    /// Folds a reading of `gpu` in: foreign use shrinks the budget, each tracked process is
    /// charged its use where it exceeds its leases, given-back bytes the reading shows free
    /// become grantable, and overuse gets its configured action.
    pub fn observe(&mut self, gpu: u32, reading: Reading, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if gpu as usize >= self.books.len() {
            return effects;
        }
        let taken_at = reading.taken_at.unwrap_or(now);
        {
            let book = &mut self.books[gpu as usize];
            book.budget.unleased = reading.unleased;
            if book.read_at.is_none_or(|at| at < taken_at) {
                book.read_at = Some(taken_at);
            }
        }
        let leased = self.leased_by_pid(gpu);
        let tolerance = self.policy.tolerance;
        let mut overusers = Vec::new();
        for (&(_, pid), process) in self.processes.range_mut((gpu, 0)..=(gpu, u32::MAX)) {
            process.used = reading.used_by.get(&pid).copied().unwrap_or(0);
            let holds = leased.get(&pid).copied().unwrap_or(0);
            // Returns given before this reading began are settled by it: what the process
            // uses above what it still holds stays charged (the oldest returns keep it, so
            // memory that never comes back is reported first); the rest is free. Within the
            // tolerance, all of it is.
            let above = process.used.saturating_sub(holds);
            let mut keep = if above <= tolerance { 0 } else { above };
            let mut open = Vec::new();
            for mut ret in std::mem::take(&mut process.returns) {
                if ret.since > taken_at {
                    open.push(ret);
                    continue;
                }
                let kept = ret.bytes.min(keep);
                keep -= kept;
                if kept < ret.bytes {
                    let took = taken_at.saturating_duration_since(ret.since);
                    let mut freed = ret.clone();
                    freed.bytes = ret.bytes - kept;
                    effects.push(Effect::Returned { ret: freed, took });
                }
                if kept > 0 {
                    ret.bytes = kept;
                    open.push(ret);
                }
            }
            process.returns = open;
            let shielded = process.returns.iter().any(|r| !r.overdue);
            let over = holds > 0 && !shielded && process.used > holds.saturating_add(tolerance);
            if over && !process.overusing {
                overusers.push((pid, process.used, holds));
            }
            process.overusing = over;
        }
        let calmed: Vec<Ticket> = self
            .leases
            .values()
            .filter(|l| l.gpu == gpu && l.reclaim.as_ref().is_some_and(|r| r.for_ticket.is_none()))
            .filter(|l| {
                visible_pid(l).is_some_and(|pid| {
                    self.processes
                        .get(&(gpu, pid))
                        .is_some_and(|p| !p.overusing)
                })
            })
            .map(|l| l.ticket)
            .collect();
        for ticket in calmed {
            if let Some(lease) = self.leases.get_mut(&ticket) {
                lease.reclaim = None;
                effects.push(Effect::ReclaimWithdrawn {
                    lease: lease.clone(),
                });
            }
        }
        for (pid, used, holds) in overusers {
            self.enforce(gpu, pid, used, holds, now, &mut effects);
        }
        let idle: Vec<u32> = self.tracked(gpu);
        for pid in idle {
            self.forget_if_idle(gpu, pid);
        }
        self.recount(gpu);
        self.schedule(now, &mut effects);
        effects
    }

    /// Applies the configured action to a process using `used` on leases of `holds`. The
    /// lease that stands for it is its lowest-class, most recent one.
    fn enforce(
        &mut self,
        gpu: u32,
        pid: u32,
        used: u64,
        holds: u64,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let Some(ticket) = self
            .leases
            .values()
            .filter(|l| l.gpu == gpu && visible_pid(l) == Some(pid))
            .min_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then(b.granted_at.cmp(&a.granted_at))
            })
            .map(|l| l.ticket)
        else {
            return;
        };
        let Some(lease) = self.leases.get(&ticket).cloned() else {
            return;
        };
        let action = self.policy.overuse_action(lease.priority);
        effects.push(Effect::Overuse {
            lease: lease.clone(),
            used,
            leased: holds,
            action,
        });
        let excess = used - holds;
        match action {
            Action::Log => {}
            Action::Reclaim => {
                if let Some(lease) = self.leases.get_mut(&ticket)
                    && lease.reclaim.is_none()
                {
                    lease.reclaim = Some(Reclaim {
                        bytes: excess,
                        deadline: now + self.policy.reclaim_grace,
                        reason: format!(
                            "its processes use {} on leases of {}: free {} (or the lease is revoked)",
                            ByteSize(used),
                            ByteSize(holds),
                            ByteSize(excess)
                        ),
                        for_ticket: None,
                    });
                    effects.push(Effect::ReclaimRequested {
                        lease: lease.clone(),
                    });
                }
            }
            Action::Revoke | Action::Kill => {
                let reason = format!(
                    "its processes use {} on leases of {} (overuse action: {})",
                    ByteSize(used),
                    ByteSize(holds),
                    action.as_str()
                );
                self.revoke(ticket, reason, action == Action::Kill, now, effects);
            }
        }
    }

    /// Ends a lease its holder gave up or let lapse; its bytes come back as a [`Return`]
    /// unless the caller has already seen them free (`verified`).
    fn release(
        &mut self,
        ticket: Ticket,
        reason: ReleaseReason,
        verified: bool,
        now: Instant,
    ) -> Option<Effect> {
        let lease = self.remove_lease(ticket)?;
        let bytes = lease.bytes;
        let returning = if verified {
            0
        } else {
            self.give_back(&lease, bytes, reason, now)
        };
        self.recount(lease.gpu);
        Some(Effect::Released {
            lease,
            reason,
            bytes,
            returning,
        })
    }

    /// Ends a lease against its holder's will; its bytes come back as a [`Return`].
    fn revoke(
        &mut self,
        ticket: Ticket,
        reason: String,
        kill: bool,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        if let Some(lease) = self.remove_lease(ticket) {
            let returning = self.give_back(&lease, lease.bytes, ReleaseReason::Revoked, now);
            self.recount(lease.gpu);
            effects.push(Effect::Revoked {
                lease,
                reason,
                returning,
                kill,
            });
        }
    }

    /// Lets time pass: waits past their deadline end, unary leases past their TTL end,
    /// holders that ignored a reclaim request are revoked, give-backs past the return
    /// timeout are reported overdue, and aging may reorder the queue.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].deadline.is_some_and(|d| d <= now) {
                let waiter = self.waiters.remove(i);
                effects.push(Effect::WaitEnded {
                    ticket: waiter.ticket,
                    holder: waiter.ask.holder,
                    reason: WaitEnd::DeadlineExceeded,
                    waited: now.saturating_duration_since(waiter.arrived),
                });
            } else {
                i += 1;
            }
        }
        let expired: Vec<Ticket> = self
            .leases
            .values()
            .filter(|l| l.expires_at.is_some_and(|e| e <= now))
            .map(|l| l.ticket)
            .collect();
        for ticket in expired {
            effects.extend(self.release(ticket, ReleaseReason::TtlExpired, false, now));
        }
        let ignored: Vec<(Ticket, String, bool)> = self
            .leases
            .values()
            .filter_map(|l| {
                let r = l.reclaim.as_ref().filter(|r| r.deadline <= now)?;
                let kill = self.policy.overuse_action(l.priority) == Action::Kill;
                let reason = match r.for_ticket {
                    Some(_) => format!(
                        "did not give back {} before the reclaim deadline",
                        ByteSize(r.bytes)
                    ),
                    None => format!(
                        "did not free the {} it used above its lease before the reclaim deadline",
                        ByteSize(r.bytes)
                    ),
                };
                Some((l.ticket, reason, kill))
            })
            .collect();
        for (ticket, reason, kill) in ignored {
            self.revoke(ticket, reason, kill, now, &mut effects);
        }
        let timeout = self.policy.return_timeout;
        let leased: HashMap<(u32, u32), u64> = self.leased_by_process();
        for (&(gpu, pid), process) in self.processes.iter_mut() {
            for ret in process.returns.iter_mut() {
                if !ret.overdue && now.saturating_duration_since(ret.since) >= timeout {
                    ret.overdue = true;
                    effects.push(Effect::ReturnOverdue {
                        ret: ret.clone(),
                        used: process.used,
                        holds: leased.get(&(gpu, pid)).copied().unwrap_or(0),
                    });
                }
            }
        }
        self.schedule(now, &mut effects);
        effects
    }

    /// Ends everything, for shutdown.
    pub fn close(&mut self, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        for waiter in std::mem::take(&mut self.waiters) {
            effects.push(Effect::WaitEnded {
                ticket: waiter.ticket,
                holder: waiter.ask.holder,
                reason: WaitEnd::Shutdown,
                waited: now.saturating_duration_since(waiter.arrived),
            });
        }
        let tickets: Vec<Ticket> = self.leases.keys().copied().collect();
        for ticket in tickets {
            if let Some(lease) = self.remove_lease(ticket) {
                effects.push(Effect::Revoked {
                    lease,
                    reason: "the supervisor is shutting down".into(),
                    returning: 0,
                    kill: false,
                });
            }
        }
        effects
    }

    /// Every charged process, for status.
    pub fn processes(&self) -> Vec<ProcessView> {
        let leased = self.leased_by_process();
        self.processes
            .iter()
            .map(|(&(gpu, pid), p)| ProcessView {
                gpu,
                pid,
                used: p.used,
                leased: leased.get(&(gpu, pid)).copied().unwrap_or(0),
                returning: p.returns.iter().map(|r| r.bytes).sum(),
            })
            .collect()
    }

    /// Given-back bytes not yet shown free, oldest first.
    pub fn returns(&self) -> Vec<Return> {
        let mut all: Vec<Return> = self
            .processes
            .values()
            .flat_map(|p| p.returns.iter().cloned())
            .collect();
        all.sort_by_key(|r| r.since);
        all
    }

    /// What the processes of `lease`'s pid used at the last reading.
    pub fn used_by(&self, lease: &Lease) -> Option<u64> {
        let pid = visible_pid(lease)?;
        self.processes.get(&(lease.gpu, pid)).map(|p| p.used)
    }

    fn remove_lease(&mut self, ticket: Ticket) -> Option<Lease> {
        let lease = self.leases.remove(&ticket)?;
        self.by_id.remove(&lease.id);
        self.books[lease.gpu as usize].granted -= lease.bytes;
        Some(lease)
    }

    /// Records `bytes` leaving `lease` as a return to be proven, where its holder is
    /// visible; returns the bytes that wait (0 for a holder counted by bytes alone).
    fn give_back(&mut self, lease: &Lease, bytes: u64, reason: ReleaseReason, now: Instant) -> u64 {
        let Some(pid) = visible_pid(lease) else {
            return 0;
        };
        if bytes == 0 {
            return 0;
        }
        self.processes
            .entry((lease.gpu, pid))
            .or_default()
            .returns
            .push(Return {
                lease_id: lease.id.clone(),
                holder: lease.holder.clone(),
                gpu: lease.gpu,
                pid,
                bytes,
                since: now,
                reason,
                overdue: false,
            });
        bytes
    }

    /// Drops a process that holds no lease and owes no return on `gpu`.
    fn forget_if_idle(&mut self, gpu: u32, pid: u32) {
        let holds = self
            .leases
            .values()
            .any(|l| l.gpu == gpu && visible_pid(l) == Some(pid));
        if !holds
            && self
                .processes
                .get(&(gpu, pid))
                .is_some_and(|p| p.returns.is_empty())
        {
            self.processes.remove(&(gpu, pid));
        }
    }

    fn leased_by_pid(&self, gpu: u32) -> HashMap<u32, u64> {
        let mut map = HashMap::new();
        for lease in self.leases.values().filter(|l| l.gpu == gpu) {
            if let Some(pid) = visible_pid(lease) {
                *map.entry(pid).or_default() += lease.bytes;
            }
        }
        map
    }

    fn leased_by_process(&self) -> HashMap<(u32, u32), u64> {
        let mut map = HashMap::new();
        for lease in self.leases.values() {
            if let Some(pid) = visible_pid(lease) {
                *map.entry((lease.gpu, pid)).or_default() += lease.bytes;
            }
        }
        map
    }

    /// Recomputes what `gpu`'s processes are charged beyond their leases: each process
    /// costs max(leases + returns, use).
    fn recount(&mut self, gpu: u32) {
        let leased = self.leased_by_pid(gpu);
        let (mut excess, mut returning, mut unverified) = (0u64, 0u64, 0u64);
        for (&(_, pid), process) in self.processes.range((gpu, 0)..=(gpu, u32::MAX)) {
            let pending: u64 = process.returns.iter().map(|r| r.bytes).sum();
            unverified += process
                .returns
                .iter()
                .filter(|r| r.overdue)
                .map(|r| r.bytes)
                .sum::<u64>();
            let holds = leased.get(&pid).copied().unwrap_or(0);
            excess += process.used.saturating_sub(holds + pending);
            returning += pending;
        }
        let book = &mut self.books[gpu as usize];
        book.excess = excess;
        book.returning = returning;
        book.unverified = unverified;
    }

    /// True when `gpu`'s last reading is recent enough to grant on.
    fn fresh(&self, gpu: usize, now: Instant) -> bool {
        match self.policy.fresh_within {
            None => true,
            Some(bound) => self.books[gpu]
                .read_at
                .is_some_and(|at| now.saturating_duration_since(at) <= bound),
        }
    }

    /// Indices into `waiters` in service order.
    fn ordered(&self, now: Instant) -> Vec<usize> {
        let mut entries: Vec<(f64, Ticket, usize)> = self
            .waiters
            .iter()
            .enumerate()
            .map(|(i, w)| {
                (
                    rank(w.ask.priority, w.arrived, now, self.policy.aging),
                    w.ticket,
                    i,
                )
            })
            .collect();
        service_order(&mut entries);
        entries.into_iter().map(|e| e.2).collect()
    }

    /// Grants what fits, in service order, and reports new queue positions.
    fn schedule(&mut self, now: Instant, effects: &mut Vec<Effect>) {
        let order = self.ordered(now);
        let mut blocked = vec![false; self.books.len()];
        let mut wanted = vec![false; self.books.len()];
        let mut awaited = vec![false; self.books.len()];
        let mut granted = Vec::new();
        for &i in &order {
            let ask = &self.waiters[i].ask;
            let eligible: Vec<usize> = match ask.gpu {
                GpuChoice::Any => (0..self.books.len()).filter(|&g| !blocked[g]).collect(),
                GpuChoice::Index(g) if !blocked[g as usize] => vec![g as usize],
                GpuChoice::Index(_) => Vec::new(),
            };
            if eligible.is_empty() {
                continue;
            }
            let fits: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|&g| self.books[g].available() >= ask.bytes)
                .collect();
            // Fits on an old reading: read the card again first (a foreign process may have
            // taken memory since), and keep everyone below from slipping in meanwhile.
            let stale: Vec<usize> = fits
                .iter()
                .copied()
                .filter(|&g| !self.fresh(g, now))
                .collect();
            if !stale.is_empty() {
                for g in stale {
                    blocked[g] = true;
                    wanted[g] = true;
                }
                continue;
            }
            let best_fit = fits.into_iter().min_by_key(|&g| self.books[g].available());
            match best_fit {
                Some(g) => {
                    self.books[g].granted += ask.bytes;
                    granted.push((i, g));
                }
                None => {
                    // Block the GPU this waiter is most likely to get first.
                    let target = eligible
                        .iter()
                        .copied()
                        .max_by_key(|&g| (self.books[g].budget.total(), self.books[g].available()))
                        .unwrap_or(eligible[0]);
                    blocked[target] = true;
                    if self.books[target].available() + self.open_returns(target as u32)
                        >= ask.bytes
                    {
                        awaited[target] = true;
                    }
                    self.request_reclaim(i, target, now, effects);
                }
            }
        }
        // Remove granted waiters, highest index first so the others keep their places.
        granted.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        let mut new_leases: Vec<(Waiter, usize)> = granted
            .into_iter()
            .map(|(i, g)| (self.waiters.remove(i), g))
            .collect();
        new_leases.sort_by_key(|(w, _)| w.ticket);
        for (waiter, g) in new_leases {
            let lease = Lease {
                ticket: waiter.ticket,
                id: format!("lease-{}", uuid::Uuid::new_v4().simple()),
                holder: waiter.ask.holder,
                gpu: g as u32,
                bytes: waiter.ask.bytes,
                priority: waiter.ask.priority,
                preemptible: waiter.ask.preemptible,
                reload: waiter.ask.reload,
                form: waiter.ask.form,
                peer: waiter.ask.peer,
                owner: waiter.ask.owner,
                granted_at: now,
                expires_at: match waiter.ask.form {
                    Form::Unary { ttl } => Some(now + ttl),
                    Form::Stream => None,
                },
                reclaim: None,
            };
            self.by_id.insert(lease.id.clone(), lease.ticket);
            if let Some(pid) = visible_pid(&lease) {
                self.processes.entry((lease.gpu, pid)).or_default();
            }
            self.leases.insert(lease.ticket, lease.clone());
            effects.push(Effect::Granted {
                lease,
                waited: now.saturating_duration_since(waiter.arrived),
            });
        }
        for g in 0..self.books.len() {
            self.recount(g as u32);
            if wanted[g] {
                effects.push(Effect::NeedReading { gpu: g as u32 });
            }
            if awaited[g] {
                effects.push(Effect::AwaitReturn { gpu: g as u32 });
            }
        }
        self.withdraw_orphaned_reclaims(effects);
        let order = self.ordered(now);
        let queue_length = order.len() as u32;
        for (position, &i) in order.iter().enumerate() {
            let position = position as u32 + 1;
            let waiter = &mut self.waiters[i];
            if waiter.position != position {
                effects.push(Effect::Queued {
                    ticket: waiter.ticket,
                    position,
                    queue_length,
                    new: waiter.position == 0,
                });
                waiter.position = position;
            }
        }
    }

    /// A reclaim stands only while the waiter it was made for still waits: once that
    /// waiter is granted, gives up or is cancelled, its holders keep their memory (and a
    /// holder that ignored the request is not revoked for nobody).
    fn withdraw_orphaned_reclaims(&mut self, effects: &mut Vec<Effect>) {
        let waiting: std::collections::HashSet<Ticket> =
            self.waiters.iter().map(|w| w.ticket).collect();
        for lease in self.leases.values_mut() {
            if lease
                .reclaim
                .as_ref()
                .and_then(|r| r.for_ticket)
                .is_some_and(|t| !waiting.contains(&t))
            {
                lease.reclaim = None;
                effects.push(Effect::ReclaimWithdrawn {
                    lease: lease.clone(),
                });
            }
        }
    }

    /// Asks preemptible holders of a lower class on `gpu` to make room for waiter `i`, if
    /// what they hold (with what is free and already asked for) would be enough.
    fn request_reclaim(&mut self, i: usize, gpu: usize, now: Instant, effects: &mut Vec<Effect>) {
        let for_ticket = self.waiters[i].ticket;
        let ask = &self.waiters[i].ask;
        let book = &self.books[gpu];
        if ask.bytes > book.budget.total() {
            return; // even an empty GPU would not do: reclaiming cannot help yet
        }
        let pending: u64 = self
            .leases
            .values()
            .filter(|l| l.gpu as usize == gpu)
            .filter_map(|l| l.reclaim.as_ref().map(|r| r.bytes))
            .sum();
        // Bytes on their way back count as coming: asking more holders for them again
        // would take more than the waiter needs.
        let coming = pending + book.returning;
        let mut shortfall = ask.bytes.saturating_sub(book.available() + coming);
        if shortfall == 0 {
            return;
        }
        let mut victims: Vec<&Lease> = self
            .leases
            .values()
            .filter(|l| {
                l.gpu as usize == gpu
                    && l.preemptible
                    && l.reclaim.is_none()
                    && l.priority < ask.priority
            })
            .collect();
        let reclaimable: u64 = victims.iter().map(|l| l.bytes).sum();
        if reclaimable < shortfall {
            return;
        }
        victims.sort_by(|a, b| reclaim_order(a, b));
        let chosen: Vec<(Ticket, u64)> = victims
            .iter()
            .map_while(|l| {
                if shortfall == 0 {
                    return None;
                }
                let take = l.bytes.min(shortfall);
                shortfall -= take;
                Some((l.ticket, take))
            })
            .collect();
        let reason = format!(
            "{} needs {} at priority {:?}",
            ask.holder,
            ByteSize(ask.bytes),
            ask.priority
        );
        for (ticket, bytes) in chosen {
            if let Some(lease) = self.leases.get_mut(&ticket) {
                lease.reclaim = Some(Reclaim {
                    bytes,
                    deadline: now + self.policy.reclaim_grace,
                    reason: reason.clone(),
                    for_ticket: Some(for_ticket),
                });
                effects.push(Effect::ReclaimRequested {
                    lease: lease.clone(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
