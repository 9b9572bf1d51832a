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
//! - The sum of grants on a GPU never exceeds its budget at the moment of a grant. (A
//!   foreign process appearing later can push the budget below the grants; then nothing
//!   more is granted there until it fits again.)
//!
//! No I/O and no clock: every operation takes `now` and returns the [`Effect`]s it caused.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use arbiter::ByteSize;

use super::queue::{rank, service_order};
use super::{
    Ask, Effect, Form, GpuChoice, Lease, LeaseError, Reclaim, ReleaseReason, Ticket, WaitEnd,
};
use crate::budget::Budget;

/// Tunables of the ledger.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A waiter gains one priority class per `aging` waited.
    pub aging: Duration,
    /// How long a holder has to answer a reclaim request.
    pub reclaim_grace: Duration,
}

/// One GPU's side of the books.
#[derive(Clone, Debug)]
pub struct Book {
    /// How errors name this GPU: "GPU 0 (GPU-…, NVIDIA H100)".
    pub label: String,
    pub budget: Budget,
    pub granted: u64,
}

impl Book {
    pub fn available(&self) -> u64 {
        self.budget.total().saturating_sub(self.granted)
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
    next_ticket: Ticket,
}

impl Ledger {
    pub fn new(books: Vec<Book>, policy: Policy) -> Ledger {
        Ledger {
            policy,
            books,
            waiters: Vec::new(),
            leases: BTreeMap::new(),
            by_id: HashMap::new(),
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
            .ok_or_else(|| LeaseError::UnknownLease(id.to_string()))
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
    /// released. Unknown tickets are ignored: the request may have ended already.
    pub fn end(&mut self, ticket: Ticket, reason: ReleaseReason, now: Instant) -> Vec<Effect> {
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
        } else if let Some(lease) = self.remove_lease(ticket) {
            effects.push(Effect::Released { lease, reason });
        } else {
            return effects;
        }
        self.schedule(now, &mut effects);
        effects
    }

    /// Makes `pid` the process whose memory counts against a lease.
    pub fn set_peer(&mut self, ticket: Ticket, pid: u32) {
        if let Some(lease) = self.leases.get_mut(&ticket) {
            let uid = lease.peer.map_or(0, |p| p.uid);
            lease.peer = Some(super::Peer { pid, uid });
        }
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

    /// Makes a lease smaller, the answer to a reclaim request (or a holder being tidy).
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
        let returned = lease.bytes - bytes;
        lease.bytes = bytes;
        if let Some(reclaim) = &mut lease.reclaim {
            reclaim.bytes = reclaim.bytes.saturating_sub(returned);
            if reclaim.bytes == 0 {
                lease.reclaim = None;
            }
        }
        let lease = lease.clone();
        self.books[lease.gpu as usize].granted -= returned;
        let mut effects = Vec::new();
        self.schedule(now, &mut effects);
        Ok((lease, effects))
    }

    /// Records a new NVML sample of memory used by processes without a lease.
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

    /// Lets time pass: waits past their deadline end, unary leases past their TTL end,
    /// holders that ignored a reclaim request are revoked, and aging may reorder the queue.
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
            if let Some(lease) = self.remove_lease(ticket) {
                effects.push(Effect::Released {
                    lease,
                    reason: ReleaseReason::TtlExpired,
                });
            }
        }
        let ignored: Vec<Ticket> = self
            .leases
            .values()
            .filter(|l| l.reclaim.as_ref().is_some_and(|r| r.deadline <= now))
            .map(|l| l.ticket)
            .collect();
        for ticket in ignored {
            if let Some(lease) = self.remove_lease(ticket) {
                let asked = lease.reclaim.as_ref().map_or(0, |r| r.bytes);
                effects.push(Effect::Revoked {
                    reason: format!(
                        "did not give back {} before the reclaim deadline",
                        ByteSize(asked)
                    ),
                    lease,
                });
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
                });
            }
        }
        effects
    }

    fn remove_lease(&mut self, ticket: Ticket) -> Option<Lease> {
        let lease = self.leases.remove(&ticket)?;
        self.by_id.remove(&lease.id);
        self.books[lease.gpu as usize].granted -= lease.bytes;
        Some(lease)
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
            let best_fit = eligible
                .iter()
                .copied()
                .filter(|&g| self.books[g].available() >= ask.bytes)
                .min_by_key(|&g| self.books[g].available());
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
                form: waiter.ask.form,
                peer: waiter.ask.peer,
                granted_at: now,
                expires_at: match waiter.ask.form {
                    Form::Unary { ttl } => Some(now + ttl),
                    Form::Stream => None,
                },
                reclaim: None,
            };
            self.by_id.insert(lease.id.clone(), lease.ticket);
            self.leases.insert(lease.ticket, lease.clone());
            effects.push(Effect::Granted {
                lease,
                waited: now.saturating_duration_since(waiter.arrived),
            });
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
                .is_some_and(|r| !waiting.contains(&r.for_ticket))
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
        let mut shortfall = ask.bytes.saturating_sub(book.available() + pending);
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
        // Lowest class first, then the most recently granted (it has had the least use).
        victims.sort_by(|a, b| {
            a.priority
                .cmp(&b.priority)
                .then(b.granted_at.cmp(&a.granted_at))
        });
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
                    for_ticket,
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
