//! The broker: the ledger made into a shared service.
//!
//! It owns the lock around the [`Ledger`], routes each effect to the holder it concerns
//! (through one channel per request), publishes it on the event feed, and folds NVML
//! samples into the ledger: each process is attributed to the nearest tracked pid in its
//! ancestry (a lease holder, or a holder whose given-back bytes are not yet shown free);
//! everything else is foreign. When the ledger wants a fresher reading before a grant, or
//! given-back bytes wait to be seen free, the broker wakes the sampler.
//! The lock is a plain mutex held only for bookkeeping, never across an await.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use super::ledger::{Book, Ledger, Policy, ProcessView, Reading, WaiterView};
use super::scope::{PodScope, Scopes};
use super::{
    Actor, Ask, Effect, GpuChoice, Lease, LeaseError, Peer, ReleaseReason, Return, Ticket, WaitEnd,
};
use crate::budget::Budget;
use crate::gpu::{GpuIdentity, GpuSample, procfs};
use crate::lease::events::{EventFeed, EventKind, GpuView, WaitEndReason};

/// What a holder is told about its request.
#[derive(Clone, Debug)]
pub enum Note {
    Queued {
        position: u32,
        queue_length: u32,
    },
    Granted(Lease),
    Reclaim(Lease),
    /// `kill`: the holder's processes are to be killed at once (the configured overuse
    /// action); a holder the supervisor spawned stops its worker either way.
    Revoked {
        lease: Lease,
        reason: String,
        kill: bool,
    },
    WaitEnded {
        reason: WaitEnd,
        waited: Duration,
    },
}

/// Limits on what holders may ask, from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub max_wait: Duration,
    /// Leases above this many bytes need a holder whose processes the supervisor can see
    /// (a Unix-socket caller in its pid namespace); None: any size may be counted by bytes.
    pub visible_above: Option<u64>,
    /// Requests from callers (those with a quota) that may wait at once, all identities
    /// together: each waiting stream costs memory, so the queue is bounded.
    pub max_waiting: usize,
}

pub struct Broker {
    inner: Mutex<Inner>,
    feed: EventFeed,
    gpus: Vec<GpuIdentity>,
    limits: Limits,
    started: (Instant, SystemTime),
    closing: AtomicBool,
    /// The supervisor's own uid: like root, it may act on any lease.
    /// Wakes the sampler: a GPU is wanted (see `Inner::wanted`).
    wake: tokio::sync::Notify,
}

struct Inner {
    ledger: Ledger,
    routes: HashMap<Ticket, mpsc::UnboundedSender<Note>>,
    /// The last sample of each GPU, for status.
    samples: Vec<Option<(GpuSample, SystemTime)>>,
    /// GPUs the ledger wants read before it grants.
    wanted: HashSet<u32>,
    /// GPUs where a waiter waits on bytes on their way back: the sampler polls them every
    /// `return_poll`. Without a waiter the periodic reading (or one a grant asks for) sees
    /// the bytes back: polling for nobody would cost every lease call (measured: the lease
    /// bench's single client at 1.4-1.8x its ping limit instead of 1.0-1.2x).
    polling: HashSet<u32>,
    /// Pod-scoped leases' keys (`lease::scope`): their processes are found by cgroup.
    scopes: Scopes,
}

impl Inner {
    /// The tracked key a process on `gpu` counts against: the nearest tracked pid in its
    /// ancestry, else the pod scope its cgroup belongs to; None: foreign.
    fn charged_to(&self, pid: u32, tracked: &HashSet<u32>) -> Option<u32> {
        if let Some(holder) = procfs::lineage(pid).find(|p| tracked.contains(p)) {
            return Some(holder);
        }
        if self.scopes.is_empty() {
            return None;
        }
        self.scopes
            .owner(&procfs::cgroups(pid), |key| tracked.contains(&key))
    }
}

impl Broker {
    pub fn new(
        gpus: Vec<GpuIdentity>,
        reserve: u64,
        policy: Policy,
        limits: Limits,
        feed: EventFeed,
    ) -> Arc<Broker> {
        let books = gpus
            .iter()
            .map(|gpu| {
                Book::new(
                    format!("GPU {} ({}, {})", gpu.index, gpu.uuid, gpu.name),
                    Budget {
                        capacity: gpu.capacity,
                        reserve,
                        unleased: 0,
                    },
                )
            })
            .collect();
        Arc::new(Broker {
            inner: Mutex::new(Inner {
                ledger: Ledger::new(books, policy),
                routes: HashMap::new(),
                samples: vec![None; gpus.len()],
                wanted: HashSet::new(),
                polling: HashSet::new(),
                scopes: Scopes::default(),
            }),
            feed,
            gpus,
            limits,
            started: (Instant::now(), SystemTime::now()),
            closing: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    pub fn gpus(&self) -> &[GpuIdentity] {
        &self.gpus
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn feed(&self) -> &EventFeed {
        &self.feed
    }

    pub fn uptime(&self) -> Duration {
        self.started.0.elapsed()
    }

    /// Wall-clock time of a ledger instant, for the wire.
    pub fn wall(&self, at: Instant) -> SystemTime {
        self.started.1 + at.saturating_duration_since(self.started.0)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug in the ledger; keep serving the
        // state it left rather than poisoning every later call.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Resolves a GPU named by uuid or index; empty means any.
    pub fn resolve_gpu(&self, text: &str) -> Result<GpuChoice, LeaseError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(GpuChoice::Any);
        }
        let found = match text.parse::<u32>() {
            Ok(index) => self.gpus.iter().find(|g| g.index == index),
            Err(_) => self.gpus.iter().find(|g| g.uuid.eq_ignore_ascii_case(text)),
        };
        found
            .map(|g| GpuChoice::Index(g.index))
            .ok_or_else(|| LeaseError::UnknownGpu {
                given: arbiter::echo::echo(text),
                known: self
                    .gpus
                    .iter()
                    .map(|g| format!("{} ({})", g.index, g.uuid))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Enters a request; the returned [`Holding`] receives its notes and ends the request
    /// when dropped (the stream closed, the unary call was cancelled).
    pub fn hold(self: &Arc<Self>, ask: Ask) -> Result<Holding, LeaseError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(LeaseError::ShuttingDown);
        }
        if let Some(limit) = self.limits.visible_above
            && ask.bytes > limit
            && ask.peer.and_then(Peer::visible_pid).is_none()
        {
            return Err(LeaseError::Invisible {
                asked: arbiter::ByteSize(ask.bytes),
                limit: arbiter::ByteSize(limit),
            });
        }
        let (sender, notes) = mpsc::unbounded_channel();
        let mut inner = self.lock();
        self.check_quota(&inner, &ask)?;
        let now = Instant::now();
        let (ticket, effects) = inner.ledger.ask(ask, now)?;
        inner.routes.insert(ticket, sender);
        self.dispatch(&mut inner, effects);
        Ok(Holding {
            ticket,
            notes,
            broker: Some(Arc::clone(self)),
        })
    }

    /// A unary lease: waits for the grant (or the deadline), then detaches from the caller.
    pub async fn acquire(self: &Arc<Self>, ask: Ask) -> Result<Lease, LeaseError> {
        let mut holding = self.hold(ask)?;
        loop {
            match holding.notes.recv().await {
                Some(Note::Granted(lease)) => {
                    holding.detach();
                    return Ok(lease);
                }
                Some(Note::WaitEnded {
                    reason: WaitEnd::DeadlineExceeded,
                    waited,
                }) => {
                    return Err(LeaseError::DeadlineExceeded {
                        waited: humantime::format_duration(round_ms(waited)).to_string(),
                    });
                }
                Some(Note::Queued { .. }) | Some(Note::Reclaim(_)) => continue,
                Some(Note::WaitEnded { .. }) | Some(Note::Revoked { .. }) | None => {
                    return Err(LeaseError::ShuttingDown);
                }
            }
        }
    }

    /// Ends a request in whatever state it is.
    pub fn end(self: &Arc<Self>, ticket: Ticket, reason: ReleaseReason) {
        let mut inner = self.lock();
        inner.routes.remove(&ticket);
        let effects = inner.ledger.end(ticket, reason, Instant::now());
        self.dispatch(&mut inner, effects);
    }

    /// Ends a lease whose memory the caller has seen come back (a reaped worker): its
    /// bytes are grantable at once.
    pub fn end_verified(self: &Arc<Self>, ticket: Ticket) {
        let mut inner = self.lock();
        inner.routes.remove(&ticket);
        let effects = inner.ledger.end_verified(ticket, Instant::now());
        self.dispatch(&mut inner, effects);
    }

    /// Finds a lease by id for `caller`, refusing other identities' leases. An unknown id
    /// and someone else's are told apart (NOT_FOUND, PERMISSION_DENIED), which tells a
    /// caller nothing it could use: ids are random, and only operators see others'.
    fn owned(&self, inner: &Inner, id: &str, caller: &Actor) -> Result<Ticket, LeaseError> {
        let ticket = inner.ledger.ticket_of(id)?;
        let lease = inner
            .ledger
            .lease(ticket)
            .ok_or_else(|| LeaseError::UnknownLease(arbiter::echo::echo(id)))?;
        if !caller.may_act_for(&lease.owner) {
            return Err(LeaseError::NotOwner(id.to_string()));
        }
        Ok(ticket)
    }

    /// Refuses an ask that would take its owner past its quota, or the queue past
    /// `max_waiting`. Counted under the lock the ask is then entered with, so two asks at
    /// once cannot both slip under a limit.
    fn check_quota(&self, inner: &Inner, ask: &Ask) -> Result<(), LeaseError> {
        let Some(quota) = ask.quota else {
            return Ok(());
        };
        let waiting = inner.ledger.waiting_owners();
        if waiting.len() >= self.limits.max_waiting {
            return Err(LeaseError::TooManyWaiting {
                limit: self.limits.max_waiting,
            });
        }
        let over = |key, what, value: String| LeaseError::OverQuota {
            identity: ask.owner.clone(),
            key,
            what,
            value,
        };
        let own_waiting = waiting.iter().filter(|o| **o == ask.owner).count();
        if own_waiting >= quota.waiting as usize {
            return Err(over(
                "waiting",
                "requests waiting",
                quota.waiting.to_string(),
            ));
        }
        let (mut leases, mut bytes) = (0u32, 0u64);
        for lease in inner.ledger.leases().filter(|l| l.owner == ask.owner) {
            leases += 1;
            bytes += lease.bytes;
        }
        if leases >= quota.leases {
            return Err(over("leases", "leases", quota.leases.to_string()));
        }
        if let Some(limit) = quota.bytes
            && bytes.saturating_add(ask.bytes) > limit
        {
            return Err(over(
                "bytes",
                "bytes granted",
                format!(
                    "{} (it holds {} and asked for {})",
                    arbiter::ByteSize(limit),
                    arbiter::ByteSize(bytes),
                    arbiter::ByteSize(ask.bytes)
                ),
            ));
        }
        Ok(())
    }

    pub fn keep_alive(&self, id: &str, caller: &Actor) -> Result<Lease, LeaseError> {
        let mut inner = self.lock();
        let ticket = self.owned(&inner, id, caller)?;
        inner.ledger.renew(ticket, Instant::now())
    }

    pub fn shrink(
        self: &Arc<Self>,
        id: &str,
        bytes: u64,
        caller: &Actor,
    ) -> Result<Lease, LeaseError> {
        let mut inner = self.lock();
        let ticket = self.owned(&inner, id, caller)?;
        let (lease, effects) = inner.ledger.shrink(ticket, bytes, Instant::now())?;
        self.dispatch(&mut inner, effects);
        Ok(lease)
    }

    /// Releases a lease of either form; returns the bytes given back.
    pub fn release(self: &Arc<Self>, id: &str, caller: &Actor) -> Result<u64, LeaseError> {
        let mut inner = self.lock();
        let ticket = self.owned(&inner, id, caller)?;
        let bytes = inner.ledger.lease(ticket).map_or(0, |l| l.bytes);
        // A streaming holder learns of it through its stream, which then ends.
        if let Some(route) = inner.routes.remove(&ticket)
            && let Some(lease) = inner.ledger.lease(ticket).cloned()
        {
            let _ = route.send(Note::Revoked {
                lease,
                reason: "released by Release".into(),
                kill: false,
            });
        }
        let effects = inner
            .ledger
            .end(ticket, ReleaseReason::Released, Instant::now());
        self.dispatch(&mut inner, effects);
        Ok(bytes)
    }

    /// Lets time pass in the ledger: deadlines, TTLs, reclaim deadlines, aging.
    pub fn tick(self: &Arc<Self>) {
        let mut inner = self.lock();
        let effects = inner.ledger.tick(Instant::now());
        self.dispatch(&mut inner, effects);
    }

    /// Folds a reading of `gpu`, begun at `taken_at`, into the ledger: each process counts
    /// against the nearest tracked pid in its ancestry; everything else is foreign and
    /// shrinks the budget.
    pub fn observe(self: &Arc<Self>, gpu: u32, sample: GpuSample, taken_at: Instant) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let tracked: HashSet<u32> = inner.ledger.tracked(gpu).into_iter().collect();
        let mut foreign = 0u64;
        let mut used_by: HashMap<u32, u64> = HashMap::new();
        for process in &sample.processes {
            let used = process.used.unwrap_or(0);
            match inner.charged_to(process.pid, &tracked) {
                Some(holder) => *used_by.entry(holder).or_default() += used,
                None => foreign += used,
            }
        }
        // Used memory that no tracked process accounts for is unavailable too, whether a
        // foreign process holds it or nobody visibly does (memory that did not come back).
        let tracked_use: u64 = used_by.values().sum();
        let unleased = foreign.max(sample.used.saturating_sub(tracked_use));
        inner.samples[gpu as usize] = Some((sample, SystemTime::now()));
        inner.wanted.remove(&gpu);
        let reading = Reading {
            taken_at: Some(taken_at),
            unleased,
            used_by,
        };
        let effects = inner.ledger.observe(gpu, reading, Instant::now());
        // Polling goes on only while the ledger still says a waiter waits on returns here.
        if !effects
            .iter()
            .any(|e| matches!(e, Effect::AwaitReturn { gpu: g } if *g == gpu))
        {
            inner.polling.remove(&gpu);
        }
        self.dispatch(inner, effects);
        if !inner.scopes.is_empty() {
            let still: HashSet<u32> = (0..self.gpus.len() as u32)
                .flat_map(|g| inner.ledger.tracked(g))
                .collect();
            inner.scopes.retain(|key| still.contains(&key));
        }
        let view = self.view(inner, gpu as usize);
        drop(guard);
        self.feed.publish(EventKind::Sample(view));
    }

    /// GPUs a grant waits on: to be read at once.
    pub fn readings_wanted(&self) -> Vec<u32> {
        let inner = self.lock();
        let mut wanted: Vec<u32> = inner.wanted.iter().copied().collect();
        wanted.sort();
        wanted
    }

    /// GPUs where a waiter waits on given-back bytes: to be read every `return_poll`.
    pub fn returns_awaited(&self) -> Vec<u32> {
        let inner = self.lock();
        let mut polling: Vec<u32> = inner.polling.iter().copied().collect();
        polling.sort();
        polling
    }

    /// Resolves when the ledger wants a GPU read: a grant waits for a fresh reading, or
    /// bytes started on their way back.
    pub async fn reading_wanted(&self) {
        self.wake.notified().await
    }

    /// Ties a lease to a process other than the one that asked: a job's lease is taken by
    /// the supervisor, but the memory is used by the worker it spawns.
    pub fn bind_pid(&self, ticket: Ticket, pid: u32) {
        let mut inner = self.lock();
        inner.ledger.set_peer(ticket, pid);
    }

    /// A key for a pod-scoped lease: ask with it as the peer's pid, and the processes of
    /// `scope`'s pods count against the lease (`lease::scope`).
    pub fn scope(&self, scope: PodScope) -> u32 {
        self.lock().scopes.insert(scope)
    }

    /// The pods of a scope changed (a shared claim reserved for another pod).
    pub fn set_scope(&self, key: u32, scope: PodScope) {
        self.lock().scopes.set(key, scope);
    }

    /// The scope's claim is unprepared: its key goes once no bytes of it are on their way
    /// back.
    pub fn unpin_scope(&self, key: u32) {
        self.lock().scopes.unpin(key);
    }

    /// What a lease's processes used at the last sample.
    pub fn lease_usage(&self, ticket: Ticket) -> Option<u64> {
        let inner = self.lock();
        let lease = inner.ledger.lease(ticket)?;
        inner.ledger.used_by(lease)
    }

    /// The largest lease any GPU could ever grant (capacity minus reserve).
    pub fn largest_limit(&self) -> u64 {
        self.lock()
            .ledger
            .books()
            .iter()
            .map(|b| b.budget.limit())
            .max()
            .unwrap_or(0)
    }

    /// Every GPU's view and the queue, for status.
    pub fn status(&self) -> (Vec<GpuView>, Vec<WaiterView>) {
        let inner = self.lock();
        let views = (0..self.gpus.len()).map(|g| self.view(&inner, g)).collect();
        (views, inner.ledger.queue(Instant::now()))
    }

    /// Granted leases, optionally on one GPU, each with its holder's process as charged
    /// (None: a holder counted by bytes alone).
    pub fn leases(&self, gpu: Option<u32>) -> Vec<(Lease, Option<ProcessView>)> {
        let inner = self.lock();
        let processes = inner.ledger.processes();
        inner
            .ledger
            .leases()
            .filter(|l| gpu.is_none_or(|g| l.gpu == g))
            .map(|l| {
                let pid = super::ledger::visible_pid(l);
                let process = processes
                    .iter()
                    .find(|p| p.gpu == l.gpu && Some(p.pid) == pid)
                    .cloned();
                (l.clone(), process)
            })
            .collect()
    }

    /// Given-back bytes not yet shown free, and how long each has waited.
    pub fn returns(&self) -> Vec<(Return, Duration)> {
        let inner = self.lock();
        let now = Instant::now();
        inner
            .ledger
            .returns()
            .into_iter()
            .map(|r| {
                let waited = now.saturating_duration_since(r.since);
                (r, waited)
            })
            .collect()
    }

    /// Shutdown: refuse new requests, revoke every lease and end every wait, telling each
    /// holder why.
    pub fn close(self: &Arc<Self>) {
        self.closing.store(true, Ordering::Release);
        let mut inner = self.lock();
        let effects = inner.ledger.close(Instant::now());
        self.dispatch(&mut inner, effects);
        inner.routes.clear();
    }

    fn view(&self, inner: &Inner, g: usize) -> GpuView {
        let gpu = &self.gpus[g];
        let book = &inner.ledger.books()[g];
        let (sample, sampled_at) = match &inner.samples[g] {
            Some((sample, at)) => (sample.clone(), Some(*at)),
            None => (GpuSample::default(), None),
        };
        let holder_of: HashMap<u32, String> = inner
            .ledger
            .leases()
            .filter(|l| l.gpu as usize == g)
            .filter_map(|l| super::ledger::visible_pid(l).map(|pid| (pid, l.id.clone())))
            .collect();
        let holders: HashSet<u32> = holder_of.keys().copied().collect();
        GpuView {
            index: gpu.index,
            uuid: gpu.uuid.clone(),
            name: gpu.name.clone(),
            total: gpu.capacity,
            used: sample.used,
            free: if sampled_at.is_some() {
                sample.free
            } else {
                gpu.capacity
            },
            reserve: book.budget.reserve,
            unleased: book.budget.unleased,
            budget: book.budget.total(),
            granted: book.granted,
            excess: book.excess,
            returning: book.returning,
            unverified: book.unverified,
            unmeasured: inner
                .ledger
                .leases()
                .filter(|l| l.gpu as usize == g && super::ledger::visible_pid(l).is_none())
                .map(|l| l.bytes)
                .sum(),
            available: book.available(),
            processes: sample
                .processes
                .iter()
                .map(|p| {
                    let lease = inner
                        .charged_to(p.pid, &holders)
                        .and_then(|key| holder_of.get(&key).cloned());
                    (p.pid, p.used.unwrap_or(0), lease)
                })
                .collect(),
            sampled_at,
        }
    }

    /// Tells holders and operators what the ledger did.
    fn dispatch(self: &Arc<Self>, inner: &mut Inner, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Queued {
                    ticket,
                    position,
                    queue_length,
                    new,
                } => {
                    if let Some(route) = inner.routes.get(&ticket) {
                        let _ = route.send(Note::Queued {
                            position,
                            queue_length,
                        });
                    }
                    if new
                        && let Some(w) = inner
                            .ledger
                            .queue(Instant::now())
                            .into_iter()
                            .find(|w| w.ticket == ticket)
                    {
                        self.feed.publish(EventKind::WaitStarted {
                            holder: w.ask.holder.clone(),
                            gpu: match w.ask.gpu {
                                GpuChoice::Any => String::new(),
                                GpuChoice::Index(i) => self.gpus[i as usize].uuid.clone(),
                            },
                            bytes: w.ask.bytes,
                            priority: w.ask.priority,
                            position,
                        });
                    }
                }
                Effect::Granted { lease, waited } => {
                    if let Some(route) = inner.routes.get(&lease.ticket) {
                        let _ = route.send(Note::Granted(lease.clone()));
                    }
                    if !waited.is_zero() {
                        self.feed.publish(EventKind::WaitEnded {
                            holder: lease.holder.clone(),
                            reason: WaitEndReason::Granted,
                            waited,
                        });
                    }
                    tracing::debug!(lease = %lease.id, holder = %lease.holder, bytes = lease.bytes, gpu = lease.gpu, "granted");
                    self.feed.publish(EventKind::Granted(lease));
                }
                Effect::WaitEnded {
                    ticket,
                    holder,
                    reason,
                    waited,
                } => {
                    if let Some(route) = inner.routes.remove(&ticket) {
                        let _ = route.send(Note::WaitEnded { reason, waited });
                    }
                    self.feed.publish(EventKind::WaitEnded {
                        holder,
                        reason: WaitEndReason::Ended(reason),
                        waited,
                    });
                }
                Effect::ReclaimWithdrawn { lease } => {
                    // Restate the lease, now without a reclaim, so the holder stops giving back.
                    if let Some(route) = inner.routes.get(&lease.ticket) {
                        let _ = route.send(Note::Granted(lease.clone()));
                    }
                    tracing::info!(lease = %lease.id, holder = %lease.holder, "reclaim withdrawn: the request it was for ended");
                    self.feed.publish(EventKind::ReclaimWithdrawn(lease));
                }
                Effect::ReclaimRequested { lease } => {
                    if let Some(route) = inner.routes.get(&lease.ticket) {
                        let _ = route.send(Note::Reclaim(lease.clone()));
                    }
                    let bytes = lease.reclaim.as_ref().map_or(0, |r| r.bytes);
                    tracing::info!(
                        lease = %lease.id,
                        holder = %lease.holder,
                        bytes,
                        reload = lease.reload.source.as_str(),
                        reload_secs = lease.reload.seconds(bytes),
                        "reclaim requested"
                    );
                    self.feed.publish(EventKind::Reclaim(lease));
                }
                Effect::Revoked {
                    lease,
                    reason,
                    returning,
                    kill,
                } => {
                    if let Some(route) = inner.routes.remove(&lease.ticket) {
                        let _ = route.send(Note::Revoked {
                            lease: lease.clone(),
                            reason: reason.clone(),
                            kill,
                        });
                    }
                    if self.closing.load(Ordering::Acquire) {
                        tracing::info!(lease = %lease.id, holder = %lease.holder, %reason, "revoked");
                    } else {
                        tracing::warn!(lease = %lease.id, holder = %lease.holder, %reason, kill, "revoked");
                    }
                    self.feed.publish(EventKind::Revoked {
                        lease,
                        reason,
                        returning,
                    });
                }
                Effect::Released {
                    lease,
                    reason,
                    bytes,
                    returning,
                } => {
                    if reason != ReleaseReason::Shrunk {
                        inner.routes.remove(&lease.ticket);
                    }
                    tracing::debug!(lease = %lease.id, holder = %lease.holder, reason = reason.as_str(), bytes, returning, "released");
                    self.feed.publish(EventKind::Released {
                        lease,
                        reason,
                        bytes,
                        returning,
                    });
                }
                Effect::Returned { ret, took } => {
                    tracing::debug!(lease = %ret.lease_id, holder = %ret.holder, bytes = ret.bytes, ?took, "given-back memory seen free");
                    if ret.overdue {
                        tracing::info!(lease = %ret.lease_id, holder = %ret.holder, bytes = %arbiter::ByteSize(ret.bytes), ?took, "overdue memory came back; grantable again");
                    }
                    self.feed.publish(EventKind::Returned { ret, took });
                }
                Effect::ReturnOverdue { ret, used, holds } => {
                    tracing::warn!(lease = %ret.lease_id, holder = %ret.holder, pid = ret.pid, bytes = %arbiter::ByteSize(ret.bytes), used = %arbiter::ByteSize(used), holds = %arbiter::ByteSize(holds), "given-back memory still in use past the return timeout; it stays out of the budget until the card shows it free");
                    self.feed
                        .publish(EventKind::ReturnOverdue { ret, used, holds });
                }
                Effect::Overuse {
                    lease,
                    used,
                    leased,
                    action,
                } => {
                    tracing::warn!(lease = %lease.id, holder = %lease.holder, leased = %arbiter::ByteSize(leased), used = %arbiter::ByteSize(used), action = action.as_str(), "holder uses more GPU memory than its leases; the excess is out of the budget");
                    self.feed.publish(EventKind::Overuse {
                        lease,
                        used,
                        leased,
                        action,
                    });
                }
                Effect::NeedReading { gpu } => {
                    if inner.wanted.insert(gpu) {
                        self.wake.notify_one();
                    }
                }
                Effect::AwaitReturn { gpu } => {
                    if inner.polling.insert(gpu) {
                        self.wake.notify_one();
                    }
                }
            }
        }
    }
}
fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// A request in flight: its notes, and its end when dropped.
pub struct Holding {
    pub ticket: Ticket,
    pub notes: mpsc::UnboundedReceiver<Note>,
    broker: Option<Arc<Broker>>,
}

impl Holding {
    /// Ends the lease now, its memory already seen back by the caller (`job::verify`).
    pub fn end_verified(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.end_verified(self.ticket);
        }
    }

    /// Ends the request now for `reason`; bytes its processes still use wait for the card to
    /// show them free, as after any give-back.
    pub fn end(mut self, reason: ReleaseReason) {
        if let Some(broker) = self.broker.take() {
            broker.end(self.ticket, reason);
        }
    }

    /// Stops tying the request to this value (a granted unary lease lives on by TTL).
    fn detach(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.lock().routes.remove(&self.ticket);
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            broker.end(self.ticket, ReleaseReason::StreamClosed);
        }
    }
}

/// One simulated GPU for unit tests across the crate (the broker's own, the metrics', the
/// wire validators'): `capacity` with `reserve` kept back, grants without waiting for a
/// fresh reading, overuse only logged.
#[cfg(test)]
pub(crate) fn test_broker(capacity: u64, reserve: u64) -> Arc<Broker> {
    Broker::new(
        vec![GpuIdentity {
            index: 0,
            uuid: "GPU-test".into(),
            name: "simulated".into(),
            capacity,
        }],
        reserve,
        Policy {
            aging: Duration::from_secs(30),
            reclaim_grace: Duration::from_secs(5),
            fresh_within: None,
            return_timeout: Duration::from_secs(10),
            tolerance: 0,
            overuse: [super::Action::Log; 4],
        },
        Limits {
            default_ttl: Duration::from_secs(30),
            max_ttl: Duration::from_secs(3600),
            max_wait: Duration::from_secs(3600),
            visible_above: None,
            max_waiting: 1024,
        },
        EventFeed::new(256),
    )
}

#[cfg(test)]
mod tests;
