//! The ledger's rules, one test each, and property tests over arbitrary event sequences.

use super::*;
use crate::lease::{Peer, Priority, ReloadCost, ReloadSource};
use proptest::prelude::*;
use std::collections::HashMap;

const GIB: u64 = 1 << 30;

fn books(sizes: &[u64]) -> Vec<Book> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &capacity)| {
            Book::new(
                format!("GPU {i}"),
                Budget {
                    capacity,
                    reserve: 0,
                    unleased: 0,
                },
            )
        })
        .collect()
}

fn policy() -> Policy {
    Policy {
        aging: Duration::from_secs(30),
        reclaim_grace: Duration::from_secs(5),
        fresh_within: None,
        return_timeout: Duration::from_secs(10),
        tolerance: 0,
        overuse: [Action::Log; 4],
    }
}

fn ask(holder: &str, bytes: u64, priority: Priority) -> Ask {
    Ask {
        holder: holder.into(),
        gpu: GpuChoice::Any,
        bytes,
        priority,
        preemptible: false,
        reload: ReloadCost::default(),
        max_wait: None,
        form: Form::Stream,
        // A holder the ledger cannot see (a TCP caller): counted by bytes, taken at its word,
        // so these rules are about the queue alone. `visible` below is the other kind.
        peer: None,
        owner: String::new(),
        quota: None,
    }
}

fn granted(effects: &[Effect]) -> Vec<Ticket> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Granted { lease, .. } => Some(lease.ticket),
            _ => None,
        })
        .collect()
}

#[test]
fn grants_what_fits_and_queues_the_rest() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (a, effects) = ledger
        .ask(ask("a", 6 * GIB, Priority::Normal), now)
        .unwrap();
    assert_eq!(granted(&effects), vec![a]);
    let (b, effects) = ledger
        .ask(ask("b", 6 * GIB, Priority::Normal), now)
        .unwrap();
    assert!(granted(&effects).is_empty());
    assert!(
        matches!(effects[..], [Effect::Queued { ticket, position: 1, new: true, .. }] if ticket == b)
    );
    let effects = ledger.end(a, ReleaseReason::Released, now);
    assert_eq!(granted(&effects), vec![b]);
    assert_eq!(ledger.books()[0].granted, 6 * GIB);
}

#[test]
fn refuses_what_can_never_fit_and_names_the_capacity() {
    let mut ledger = Ledger::new(books(&[80 * GIB, 24 * GIB]), policy());
    let err = ledger
        .ask(ask("big", 100 * GIB, Priority::Normal), Instant::now())
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("80GiB"), "{text}");
    let mut small_only = ask("pinned", 30 * GIB, Priority::Normal);
    small_only.gpu = GpuChoice::Index(1);
    let text = ledger
        .ask(small_only, Instant::now())
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("24GiB") && text.contains("larger GPU"),
        "{text}"
    );
}

#[test]
fn best_fit_keeps_the_large_gpu_free() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[80 * GIB, 24 * GIB]), policy());
    let (_, effects) = ledger
        .ask(ask("small", 8 * GIB, Priority::Normal), now)
        .unwrap();
    match &effects[0] {
        Effect::Granted { lease, .. } => assert_eq!(lease.gpu, 1),
        other => panic!("expected a grant, got {other:?}"),
    }
}

#[test]
fn a_blocked_head_is_not_overtaken_by_smaller_requests() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (a, _) = ledger
        .ask(ask("a", 4 * GIB, Priority::Normal), now)
        .unwrap();
    let (big, _) = ledger
        .ask(ask("big", 8 * GIB, Priority::Normal), now)
        .unwrap();
    let (small, effects) = ledger
        .ask(ask("small", 2 * GIB, Priority::Normal), now)
        .unwrap();
    assert!(
        granted(&effects).is_empty(),
        "small must wait behind big although 6 GiB are free"
    );
    let effects = ledger.end(a, ReleaseReason::Released, now);
    assert_eq!(granted(&effects), vec![big, small]);
}

#[test]
fn aging_serves_a_long_waiting_batch_request_before_fresh_interactive_ones() {
    let start = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (first, _) = ledger
        .ask(ask("first", 10 * GIB, Priority::Normal), start)
        .unwrap();
    let (batch, _) = ledger
        .ask(ask("batch", 10 * GIB, Priority::Batch), start)
        .unwrap();
    // Two minutes later interactive requests keep arriving; batch has aged 4 classes.
    let later = start + Duration::from_secs(120);
    ledger
        .ask(ask("chat", GIB, Priority::Interactive), later)
        .unwrap();
    let effects = ledger.end(first, ReleaseReason::Released, later);
    assert_eq!(granted(&effects), vec![batch]);
}

#[test]
fn deadlines_end_waits() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    ledger
        .ask(ask("a", 10 * GIB, Priority::Normal), now)
        .unwrap();
    let mut b = ask("b", GIB, Priority::Normal);
    b.max_wait = Some(Duration::from_secs(2));
    let (b, _) = ledger.ask(b, now).unwrap();
    assert!(ledger.tick(now + Duration::from_secs(1)).is_empty());
    let effects = ledger.tick(now + Duration::from_secs(2));
    assert!(
        matches!(&effects[..], [Effect::WaitEnded { ticket, reason: WaitEnd::DeadlineExceeded, .. }] if *ticket == b)
    );
    assert!(!ledger.is_waiting(b));
}

#[test]
fn unary_leases_expire_unless_renewed() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let mut unary = ask("curl", GIB, Priority::Normal);
    unary.form = Form::Unary {
        ttl: Duration::from_secs(10),
    };
    let (t, _) = ledger.ask(unary, now).unwrap();
    ledger.renew(t, now + Duration::from_secs(8)).unwrap();
    assert!(ledger.tick(now + Duration::from_secs(12)).is_empty());
    let effects = ledger.tick(now + Duration::from_secs(18));
    assert!(matches!(
        &effects[..],
        [Effect::Released {
            reason: ReleaseReason::TtlExpired,
            ..
        }]
    ));
    assert_eq!(ledger.books()[0].granted, 0);
}

#[test]
fn reclaim_asks_preemptible_lower_holders_and_revokes_the_silent() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let mut lipsync = ask("lipsync", 6 * GIB, Priority::Batch);
    lipsync.preemptible = true;
    let (lip, _) = ledger.ask(lipsync, now).unwrap();
    let mut pinned = ask("pinned", 3 * GIB, Priority::Batch);
    pinned.preemptible = false;
    ledger.ask(pinned, now).unwrap();
    let (video, effects) = ledger
        .ask(ask("video", 5 * GIB, Priority::Critical), now)
        .unwrap();
    let asked: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::ReclaimRequested { lease } => {
                Some((lease.ticket, lease.reclaim.clone().unwrap().bytes))
            }
            _ => None,
        })
        .collect();
    assert_eq!(asked, vec![(lip, 4 * GIB)]);
    // Shrinking by enough clears the request and lets the video in.
    let (lease, effects) = ledger.shrink(lip, 2 * GIB, now).unwrap();
    assert!(lease.reclaim.is_none());
    assert_eq!(granted(&effects), vec![video]);

    // Another round, this time the holder stays silent and is revoked at the deadline.
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let mut lipsync = ask("lipsync", 8 * GIB, Priority::Batch);
    lipsync.preemptible = true;
    let (lip, _) = ledger.ask(lipsync, now).unwrap();
    let (video, _) = ledger
        .ask(ask("video", 5 * GIB, Priority::Critical), now)
        .unwrap();
    let effects = ledger.tick(now + Duration::from_secs(5));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Revoked { lease, .. } if lease.ticket == lip))
    );
    assert_eq!(granted(&effects), vec![video]);
}

#[test]
fn a_reclaim_is_withdrawn_when_its_waiter_gives_up() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let mut lipsync = ask("lipsync", 8 * GIB, Priority::Batch);
    lipsync.preemptible = true;
    let (lip, _) = ledger.ask(lipsync, now).unwrap();
    let mut urgent = ask("urgent", 6 * GIB, Priority::Critical);
    urgent.max_wait = Some(Duration::from_secs(1));
    let (_, effects) = ledger.ask(urgent, now).unwrap();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReclaimRequested { .. }))
    );
    // The waiter times out before the holder's grace ends: the request is withdrawn and the
    // silent holder is not revoked for nobody.
    let effects = ledger.tick(now + Duration::from_secs(1));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReclaimWithdrawn { lease } if lease.ticket == lip))
    );
    assert!(ledger.lease(lip).unwrap().reclaim.is_none());
    let effects = ledger.tick(now + Duration::from_secs(10));
    assert!(!effects.iter().any(|e| matches!(e, Effect::Revoked { .. })));
    assert_eq!(ledger.lease(lip).unwrap().bytes, 8 * GIB);
}

#[test]
fn no_reclaim_from_equal_or_higher_classes() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let mut same = ask("same", 8 * GIB, Priority::Normal);
    same.preemptible = true;
    ledger.ask(same, now).unwrap();
    let (_, effects) = ledger
        .ask(ask("other", 5 * GIB, Priority::Normal), now)
        .unwrap();
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::ReclaimRequested { .. }))
    );
}

/// A preemptible holder that says what its bytes cost to bring back.
fn reloading(holder: &str, bytes: u64, priority: Priority, source: ReloadSource) -> Ask {
    Ask {
        preemptible: true,
        reload: ReloadCost {
            source,
            measured: None,
        },
        ..ask(holder, bytes, priority)
    }
}

/// The reclaims requested, in order: which lease, for how many bytes.
fn reclaims(effects: &[Effect]) -> Vec<(Ticket, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ReclaimRequested { lease } => {
                Some((lease.ticket, lease.reclaim.as_ref().map_or(0, |r| r.bytes)))
            }
            _ => None,
        })
        .collect()
}

/// Grants `asks` one second apart from `t0`, so that each is more recent than the one
/// before it; returns their tickets and the time after the last.
fn granted_in_turn(ledger: &mut Ledger, asks: Vec<Ask>, t0: Instant) -> (Vec<Ticket>, Instant) {
    let mut at = t0;
    let mut tickets = Vec::new();
    for ask in asks {
        let (ticket, effects) = ledger.ask(ask, at).unwrap();
        assert_eq!(granted(&effects), vec![ticket]);
        tickets.push(ticket);
        at += Duration::from_secs(1);
    }
    (tickets, at)
}

#[test]
fn a_pooled_holder_is_reclaimed_before_one_that_reloads_from_disk() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    // The disk holder is the more recent: by the tie-break alone it would be asked first.
    let (held, at) = granted_in_turn(
        &mut ledger,
        vec![
            reloading("pooled", 4 * GIB, Priority::Batch, ReloadSource::HostPool),
            reloading("from disk", 4 * GIB, Priority::Batch, ReloadSource::Disk),
        ],
        t0,
    );
    let (_, effects) = ledger
        .ask(ask("urgent", 5 * GIB, Priority::Critical), at)
        .unwrap();
    assert_eq!(reclaims(&effects), vec![(held[0], 3 * GIB)]);
}

#[test]
fn a_lower_class_is_reclaimed_first_however_costly_its_reload() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (held, at) = granted_in_turn(
        &mut ledger,
        vec![
            reloading(
                "batch from disk",
                4 * GIB,
                Priority::Batch,
                ReloadSource::Disk,
            ),
            reloading(
                "normal pooled",
                4 * GIB,
                Priority::Normal,
                ReloadSource::HostPool,
            ),
        ],
        t0,
    );
    let (_, effects) = ledger
        .ask(ask("urgent", 5 * GIB, Priority::Critical), at)
        .unwrap();
    assert_eq!(reclaims(&effects), vec![(held[0], 3 * GIB)]);
}

#[test]
fn among_equal_costs_the_most_recently_granted_is_reclaimed_first() {
    let t0 = Instant::now();
    // Two silent holders (today's behaviour); two holders of one source; a disk holder
    // measured at exactly the page cache's typical rate beside a page-cache holder.
    let measured_disk = Ask {
        reload: ReloadCost {
            source: ReloadSource::Disk,
            measured: ReloadSource::PageCache.typical_rate(),
        },
        ..reloading(
            "disk, measured",
            4 * GIB,
            Priority::Batch,
            ReloadSource::Disk,
        )
    };
    let silent = |holder: &str| Ask {
        preemptible: true,
        ..ask(holder, 4 * GIB, Priority::Batch)
    };
    for pair in [
        [silent("older"), silent("newer")],
        [
            reloading("older", 4 * GIB, Priority::Batch, ReloadSource::HostPool),
            reloading("newer", 4 * GIB, Priority::Batch, ReloadSource::HostPool),
        ],
        [
            reloading(
                "page cache",
                4 * GIB,
                Priority::Batch,
                ReloadSource::PageCache,
            ),
            measured_disk.clone(),
        ],
    ] {
        let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
        let (held, at) = granted_in_turn(&mut ledger, pair.to_vec(), t0);
        let (_, effects) = ledger
            .ask(ask("urgent", 5 * GIB, Priority::Critical), at)
            .unwrap();
        assert_eq!(reclaims(&effects), vec![(held[1], 3 * GIB)], "{pair:?}");
    }
}

#[test]
fn a_measured_rate_counts_over_the_sources_typical_one() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let fast_disk = Ask {
        reload: ReloadCost {
            source: ReloadSource::Disk,
            measured: Some(30_000_000_000),
        },
        ..reloading(
            "striped disks",
            4 * GIB,
            Priority::Batch,
            ReloadSource::Disk,
        )
    };
    let (held, at) = granted_in_turn(
        &mut ledger,
        vec![
            fast_disk,
            reloading("pooled", 4 * GIB, Priority::Batch, ReloadSource::HostPool),
        ],
        t0,
    );
    let (_, effects) = ledger
        .ask(ask("urgent", 5 * GIB, Priority::Critical), at)
        .unwrap();
    assert_eq!(reclaims(&effects), vec![(held[0], 3 * GIB)]);
}

#[test]
fn a_holder_that_says_nothing_is_reclaimed_after_every_one_that_declared() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[12 * GIB]), policy());
    let slow_recompute = Ask {
        reload: ReloadCost {
            source: ReloadSource::Recompute,
            measured: Some(*crate::lease::reload::MEASURED_RATES.start()),
        },
        ..reloading(
            "recompute",
            4 * GIB,
            Priority::Batch,
            ReloadSource::Recompute,
        )
    };
    let silent = Ask {
        preemptible: true,
        ..ask("silent", 4 * GIB, Priority::Batch)
    };
    // The silent holder is the most recent, and still asked last.
    let (held, at) = granted_in_turn(
        &mut ledger,
        vec![
            reloading("from disk", 4 * GIB, Priority::Batch, ReloadSource::Disk),
            slow_recompute,
            silent,
        ],
        t0,
    );
    let (_, effects) = ledger
        .ask(ask("urgent", 9 * GIB, Priority::Critical), at)
        .unwrap();
    assert_eq!(
        reclaims(&effects),
        vec![(held[0], 4 * GIB), (held[1], 4 * GIB), (held[2], GIB)]
    );
}

#[test]
fn a_reclaim_takes_the_cheapest_bytes_and_no_more_than_the_shortfall() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[12 * GIB]), policy());
    let (held, at) = granted_in_turn(
        &mut ledger,
        vec![
            reloading("pooled", 3 * GIB, Priority::Batch, ReloadSource::HostPool),
            reloading(
                "page cache",
                3 * GIB,
                Priority::Batch,
                ReloadSource::PageCache,
            ),
            reloading("from disk", 3 * GIB, Priority::Batch, ReloadSource::Disk),
        ],
        t0,
    );
    // 3 GiB free, 8 wanted: the pool's 3 and 2 of the page cache's; the disk is spared.
    let (_, effects) = ledger
        .ask(ask("urgent", 8 * GIB, Priority::Critical), at)
        .unwrap();
    assert_eq!(
        reclaims(&effects),
        vec![(held[0], 3 * GIB), (held[1], 2 * GIB)]
    );
}

#[test]
fn foreign_memory_shrinks_what_can_be_granted() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    ledger.set_unleased(0, 7 * GIB, now);
    let (t, effects) = ledger
        .ask(ask("a", 4 * GIB, Priority::Normal), now)
        .unwrap();
    assert!(granted(&effects).is_empty());
    let effects = ledger.set_unleased(0, GIB, now);
    assert_eq!(granted(&effects), vec![t]);
}

#[test]
fn shrink_refuses_growth_and_zero() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (t, _) = ledger
        .ask(ask("a", 4 * GIB, Priority::Normal), now)
        .unwrap();
    assert!(matches!(
        ledger.shrink(t, 0, now),
        Err(LeaseError::BadShrink { .. })
    ));
    assert!(matches!(
        ledger.shrink(t, 5 * GIB, now),
        Err(LeaseError::BadShrink { .. })
    ));
}

// === accounting by what the card holds ===

/// A holder the ledger sees: its pid's use on the card counts.
fn visible(holder: &str, bytes: u64, priority: Priority, pid: u32) -> Ask {
    Ask {
        peer: Some(Peer { pid, uid: 0 }),
        ..ask(holder, bytes, priority)
    }
}

/// A reading at `at` in which `used` lists what each pid uses.
fn reading(at: Instant, unleased: u64, used: &[(u32, u64)]) -> Reading {
    Reading {
        taken_at: Some(at),
        unleased,
        used_by: used.iter().copied().collect(),
    }
}

fn returned(effects: &[Effect]) -> Vec<(String, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Returned { ret, .. } => Some((ret.lease_id.clone(), ret.bytes)),
            _ => None,
        })
        .collect()
}

#[test]
fn use_above_a_lease_is_charged_like_foreign_use() {
    // The first case: a 10 GiB lease whose process uses 30 GiB on an 80 GiB card.
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[80 * GIB]), policy());
    let (_, effects) = ledger
        .ask(visible("greedy", 10 * GIB, Priority::Normal, 7), now)
        .unwrap();
    assert_eq!(granted(&effects).len(), 1);
    let effects = ledger.observe(0, reading(now, 0, &[(7, 30 * GIB)]), now);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Overuse { used, leased, action: Action::Log, .. } if *used == 30 * GIB && *leased == 10 * GIB))
    );
    let book = &ledger.books()[0];
    assert_eq!(book.excess, 20 * GIB);
    assert_eq!(book.available(), 50 * GIB);
    let (_, effects) = ledger
        .ask(visible("second", 65 * GIB, Priority::Normal, 8), now)
        .unwrap();
    assert!(
        granted(&effects).is_empty(),
        "30 + 65 > 80: the second caller must wait"
    );
    // Its use drops to the lease: the excess is gone and the wait ends.
    let effects = ledger.observe(0, reading(now, 0, &[(7, 10 * GIB)]), now);
    assert_eq!(granted(&effects).len(), 1);
}

#[test]
fn a_shrink_is_granted_to_the_waiter_only_when_the_card_shows_it() {
    // The second case: a preemptible 10 GiB holder answers a critical 75 GiB
    // request with Shrink to 1 GiB, but keeps using 10 GiB for two more seconds.
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[80 * GIB]), policy());
    let mut holder = visible("lipsync", 10 * GIB, Priority::Batch, 7);
    holder.preemptible = true;
    let (lipsync, _) = ledger.ask(holder, t0).unwrap();
    ledger.observe(0, reading(t0, 0, &[(7, 10 * GIB)]), t0);
    let (critical, effects) = ledger
        .ask(visible("critical", 75 * GIB, Priority::Critical, 8), t0)
        .unwrap();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReclaimRequested { lease } if lease.ticket == lipsync))
    );
    let t1 = t0 + Duration::from_millis(100);
    let (_, effects) = ledger.shrink(lipsync, GIB, t1).unwrap();
    assert!(granted(&effects).is_empty(), "granted at the shrink");
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Released { reason: ReleaseReason::Shrunk, bytes, returning, .. }
            if *bytes == 9 * GIB && *returning == 9 * GIB)));
    assert_eq!(ledger.books()[0].returning, 9 * GIB);
    // A reading begun before the shrink proves nothing, even one that shows the use down.
    let effects = ledger.observe(
        0,
        reading(t0 + Duration::from_millis(50), 0, &[(7, GIB)]),
        t1,
    );
    assert!(granted(&effects).is_empty() && returned(&effects).is_empty());
    // Still in use a second later: still waiting.
    let t2 = t1 + Duration::from_secs(1);
    let effects = ledger.observe(0, reading(t2, 0, &[(7, 10 * GIB)]), t2);
    assert!(granted(&effects).is_empty());
    // Two seconds after the shrink the memory is free: granted at that reading.
    let t3 = t1 + Duration::from_secs(2);
    let effects = ledger.observe(0, reading(t3, 0, &[(7, GIB)]), t3);
    assert_eq!(granted(&effects), vec![critical]);
    let took = effects.iter().find_map(|e| match e {
        Effect::Returned { took, .. } => Some(*took),
        _ => None,
    });
    assert_eq!(took, Some(Duration::from_secs(2)));
    assert_eq!(ledger.books()[0].returning, 0);
}

#[test]
fn a_release_by_a_live_process_waits_for_its_memory_and_is_reported_overdue() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (a, _) = ledger
        .ask(visible("a", 8 * GIB, Priority::Normal, 7), t0)
        .unwrap();
    let (b, _) = ledger
        .ask(visible("b", 8 * GIB, Priority::Normal, 8), t0)
        .unwrap();
    let effects = ledger.end(a, ReleaseReason::Released, t0);
    assert!(granted(&effects).is_empty());
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Released { returning, .. } if *returning == 8 * GIB)));
    ledger.observe(0, reading(t0, 0, &[(7, 8 * GIB)]), t0);
    let late = t0 + Duration::from_secs(11);
    let effects = ledger.tick(late);
    assert!(effects.iter().any(|e| matches!(e,
        Effect::ReturnOverdue { ret, used, .. } if ret.bytes == 8 * GIB && *used == 8 * GIB)));
    assert!(granted(&effects).is_empty(), "overdue bytes stay out");
    assert_eq!(ledger.open_returns(0), 0, "overdue: no more fast polling");
    assert_eq!(ledger.returns()[0].bytes, 8 * GIB);
    // The process exits: the reading no longer lists it, and b is granted.
    let effects = ledger.observe(0, reading(late, 0, &[]), late);
    assert_eq!(granted(&effects), vec![b]);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Returned { ret, .. } if ret.overdue))
    );
    assert!(ledger.tracked(0).contains(&8) && !ledger.tracked(0).contains(&7));
}

#[test]
fn a_reading_frees_what_a_holder_no_longer_uses_and_keeps_the_rest() {
    // A process keeps its CUDA context (say) after giving its only lease back.
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (a, _) = ledger
        .ask(visible("a", 8 * GIB, Priority::Normal, 7), t0)
        .unwrap();
    ledger.observe(0, reading(t0, 0, &[(7, 8 * GIB)]), t0);
    let (b, _) = ledger
        .ask(visible("b", 8 * GIB, Priority::Normal, 8), t0)
        .unwrap();
    ledger.end(a, ReleaseReason::Released, t0);
    let t1 = t0 + Duration::from_millis(5);
    let effects = ledger.observe(0, reading(t1, 0, &[(7, GIB)]), t1);
    assert_eq!(returned(&effects).iter().map(|r| r.1).sum::<u64>(), 7 * GIB);
    assert_eq!(
        granted(&effects),
        vec![b],
        "9 GiB free beside the 1 GiB still used"
    );
    assert_eq!(ledger.books()[0].returning, GIB);
    assert_eq!(ledger.returns()[0].bytes, GIB);
}

#[test]
fn a_holder_counted_by_bytes_is_taken_at_its_word() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (a, _) = ledger
        .ask(ask("tcp", 8 * GIB, Priority::Normal), now)
        .unwrap();
    let (b, _) = ledger
        .ask(ask("next", 8 * GIB, Priority::Normal), now)
        .unwrap();
    let effects = ledger.end(a, ReleaseReason::Released, now);
    assert_eq!(granted(&effects), vec![b]);
    assert!(ledger.tracked(0).is_empty());
}

#[test]
fn a_verified_end_is_grantable_at_once() {
    let now = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (a, _) = ledger
        .ask(visible("job", 8 * GIB, Priority::Normal, 7), now)
        .unwrap();
    let (b, _) = ledger
        .ask(visible("next", 8 * GIB, Priority::Normal, 8), now)
        .unwrap();
    let effects = ledger.end_verified(a, now);
    assert_eq!(granted(&effects), vec![b]);
}

#[test]
fn grants_wait_for_a_fresh_reading() {
    let t0 = Instant::now();
    let mut policy = policy();
    policy.fresh_within = Some(Duration::from_millis(100));
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy);
    ledger.observe(0, reading(t0, 0, &[]), t0);
    let (_, effects) = ledger
        .ask(
            ask("quick", GIB, Priority::Normal),
            t0 + Duration::from_millis(50),
        )
        .unwrap();
    assert_eq!(granted(&effects).len(), 1, "a 50 ms old reading is fresh");
    let t1 = t0 + Duration::from_secs(1);
    let (late, effects) = ledger.ask(ask("late", GIB, Priority::Normal), t1).unwrap();
    assert!(granted(&effects).is_empty());
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::NeedReading { gpu: 0 }))
    );
    // The new reading shows a foreign process that took most of the card since: no grant.
    let effects = ledger.observe(0, reading(t1, 9 * GIB + GIB / 2, &[]), t1);
    assert!(granted(&effects).is_empty());
    let effects = ledger.observe(0, reading(t1, 0, &[]), t1);
    assert_eq!(granted(&effects), vec![late]);
}

fn overuse_policy(action: Action) -> Policy {
    let mut policy = policy();
    policy.overuse = [action; 4];
    policy.tolerance = GIB / 4;
    policy
}

#[test]
fn overuse_is_asked_back_then_revoked_and_withdrawn_once_answered() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[80 * GIB]), overuse_policy(Action::Reclaim));
    let (a, _) = ledger
        .ask(visible("a", 10 * GIB, Priority::Normal, 7), t0)
        .unwrap();
    let effects = ledger.observe(0, reading(t0, 0, &[(7, 12 * GIB)]), t0);
    let reclaim = effects.iter().find_map(|e| match e {
        Effect::ReclaimRequested { lease } => lease.reclaim.clone(),
        _ => None,
    });
    assert_eq!(
        reclaim.map(|r| (r.bytes, r.for_ticket)),
        Some((2 * GIB, None))
    );
    // Answered: the use is back within the lease.
    let effects = ledger.observe(0, reading(t0, 0, &[(7, 9 * GIB)]), t0);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReclaimWithdrawn { lease } if lease.ticket == a))
    );
    // Overused again and not answered: revoked at the deadline, its memory still out.
    let effects = ledger.observe(0, reading(t0, 0, &[(7, 12 * GIB)]), t0);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReclaimRequested { .. }))
    );
    let effects = ledger.tick(t0 + Duration::from_secs(6));
    assert!(effects.iter().any(|e| matches!(e,
        Effect::Revoked { lease, returning, kill: false, .. } if lease.ticket == a && *returning == 10 * GIB)));
    assert_eq!(ledger.books()[0].available(), 80 * GIB - 12 * GIB);
}

#[test]
fn overuse_revokes_or_kills_where_configured() {
    for (action, kill) in [(Action::Revoke, false), (Action::Kill, true)] {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(books(&[80 * GIB]), overuse_policy(action));
        ledger
            .ask(visible("a", 10 * GIB, Priority::Normal, 7), t0)
            .unwrap();
        // Within the tolerance: nothing.
        let effects = ledger.observe(0, reading(t0, 0, &[(7, 10 * GIB + GIB / 8)]), t0);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Overuse { .. })));
        let effects = ledger.observe(0, reading(t0, 0, &[(7, 11 * GIB)]), t0);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::Revoked { kill: k, .. } if *k == kill)),
            "{action:?}"
        );
        assert_eq!(ledger.books()[0].granted, 0);
        assert_eq!(ledger.books()[0].available(), 69 * GIB);
    }
}

#[test]
fn an_unanswered_reclaim_for_a_waiter_grants_only_what_the_card_shows_free() {
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let mut silent = visible("silent", 8 * GIB, Priority::Batch, 7);
    silent.preemptible = true;
    ledger.ask(silent, t0).unwrap();
    ledger.observe(0, reading(t0, 0, &[(7, 8 * GIB)]), t0);
    let (urgent, _) = ledger
        .ask(visible("urgent", 8 * GIB, Priority::Critical, 8), t0)
        .unwrap();
    let t1 = t0 + Duration::from_secs(6);
    let effects = ledger.tick(t1);
    assert!(effects.iter().any(|e| matches!(e, Effect::Revoked { .. })));
    assert!(
        granted(&effects).is_empty(),
        "revoked, but its memory is still in use"
    );
    let effects = ledger.observe(0, reading(t1, 0, &[(7, 8 * GIB)]), t1);
    assert!(granted(&effects).is_empty());
    let effects = ledger.observe(0, reading(t1, 0, &[]), t1);
    assert_eq!(granted(&effects), vec![urgent]);
}

#[test]
fn one_process_with_two_leases_returns_one_when_its_use_fits_the_other() {
    // The tts service: a resident lease and a preemptible lip-sync lease, one pid.
    let t0 = Instant::now();
    let mut ledger = Ledger::new(books(&[10 * GIB]), policy());
    let (_resident, _) = ledger
        .ask(visible("tts", 2 * GIB, Priority::Interactive, 7), t0)
        .unwrap();
    let (lipsync, _) = ledger
        .ask(visible("tts/lipsync", GIB, Priority::Batch, 7), t0)
        .unwrap();
    ledger.observe(0, reading(t0, 0, &[(7, 3 * GIB)]), t0);
    let t1 = t0 + Duration::from_millis(10);
    ledger.end(lipsync, ReleaseReason::Released, t1);
    let effects = ledger.observe(0, reading(t1, 0, &[(7, 3 * GIB)]), t1);
    assert!(returned(&effects).is_empty());
    let effects = ledger.observe(0, reading(t1, 0, &[(7, 2 * GIB)]), t1);
    assert_eq!(returned(&effects).len(), 1);
    assert_eq!(ledger.books()[0].available(), 8 * GIB);
}

// === property tests ===

#[derive(Clone, Debug)]
enum Op {
    Ask {
        bytes: u64,
        gpu: Option<u32>,
        priority: u8,
        preemptible: bool,
        reload: ReloadCost,
        wait: Option<u64>,
        unary: bool,
    },
    End {
        pick: usize,
    },
    Shrink {
        pick: usize,
        permille: u16,
    },
    Renew {
        pick: usize,
    },
    Foreign {
        gpu: u32,
        bytes: u64,
    },
    Wait {
        secs: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1..=12u64, proptest::option::of(0..2u32), 1..=4u8, any::<bool>(), reload_cost(), proptest::option::of(1..60u64), any::<bool>())
            .prop_map(|(g, gpu, priority, preemptible, reload, wait, unary)| Op::Ask { bytes: g * GIB / 2, gpu, priority, preemptible, reload, wait, unary }),
        3 => any::<usize>().prop_map(|pick| Op::End { pick }),
        1 => (any::<usize>(), 1..1000u16).prop_map(|(pick, permille)| Op::Shrink { pick, permille }),
        1 => any::<usize>().prop_map(|pick| Op::Renew { pick }),
        1 => (0..2u32, 0..6u64).prop_map(|(gpu, g)| Op::Foreign { gpu, bytes: g * GIB }),
        2 => (0..40u64).prop_map(|secs| Op::Wait { secs }),
    ]
}

/// A reload cost from a few rates, so that equal costs (where the tie-break decides) and
/// strictly cheaper ones both come up.
fn reload_cost() -> impl Strategy<Value = ReloadCost> {
    let source = prop_oneof![
        Just(ReloadSource::Unknown),
        Just(ReloadSource::HostPool),
        Just(ReloadSource::PageCache),
        Just(ReloadSource::Disk),
        Just(ReloadSource::Recompute),
    ];
    let measured = proptest::option::of(prop_oneof![
        Just(1_500_000_000u64),
        Just(6_000_000_000),
        Just(25_000_000_000),
        Just(50_000_000_000),
    ]);
    (source, measured).prop_map(|(source, measured)| ReloadCost { source, measured })
}

/// Where a lease stands in the order reclaims ask in, stated here apart from the ledger's
/// own comparison: the lowest class, then the fastest reload (an unknown rate last), then
/// the most recently granted.
fn reclaim_rank(
    lease: &Lease,
) -> (
    Priority,
    std::cmp::Reverse<Option<u64>>,
    std::cmp::Reverse<Instant>,
) {
    (
        lease.priority,
        std::cmp::Reverse(lease.reload.rate()),
        std::cmp::Reverse(lease.granted_at),
    )
}

/// The reclaims that `effects` requested for waiters follow the reclaim order: each holder
/// asked is eligible (preemptible, of a lower class than the waiter, on the GPU it waits
/// for), and no eligible holder left unasked ranks strictly before one that was asked, so
/// the holders asked are a prefix of that order; and a waiter is never owed more on one GPU
/// than it asked for. Leases granted, or whose reclaim was withdrawn, during the same operation are
/// left out: at the moment of the choice they did not exist, or were not eligible.
fn check_reclaim_order(ledger: &Ledger, effects: &[Effect]) {
    let mut late: Vec<Ticket> = Vec::new();
    for effect in effects {
        match effect {
            Effect::Granted { lease, .. } | Effect::ReclaimWithdrawn { lease } => {
                late.push(lease.ticket)
            }
            _ => {}
        }
    }
    for effect in effects {
        let Effect::ReclaimRequested { lease: asked } = effect else {
            continue;
        };
        let Some(for_ticket) = asked.reclaim.as_ref().and_then(|r| r.for_ticket) else {
            continue; // overuse: not a choice among holders
        };
        let Some(waiter) = ledger.waiters.iter().find(|w| w.ticket == for_ticket) else {
            continue; // it stopped waiting in the same operation
        };
        let class = waiter.ask.priority;
        assert!(
            asked.preemptible && asked.priority < class,
            "asked {asked:?} for a waiter of class {class:?}"
        );
        let owed: u64 = ledger
            .leases()
            .filter(|l| l.gpu == asked.gpu)
            .filter_map(|l| l.reclaim.as_ref())
            .filter(|r| r.for_ticket == Some(for_ticket))
            .map(|r| r.bytes)
            .sum();
        assert!(
            owed <= waiter.ask.bytes,
            "{} asked back for a waiter of {}",
            ByteSize(owed),
            ByteSize(waiter.ask.bytes)
        );
        for other in ledger.leases() {
            let eligible = other.ticket != asked.ticket
                && other.gpu == asked.gpu
                && other.preemptible
                && other.reclaim.is_none()
                && other.priority < class
                && !late.contains(&other.ticket);
            assert!(
                !(eligible && reclaim_rank(other) < reclaim_rank(asked)),
                "asked {} ({:?}, {:?}) but not {} ({:?}, {:?}), which ranks before it",
                asked.ticket,
                asked.priority,
                asked.reload,
                other.ticket,
                other.priority,
                other.reload
            );
        }
    }
}

fn priority(n: u8) -> Priority {
    match n {
        1 => Priority::Batch,
        2 => Priority::Normal,
        3 => Priority::Interactive,
        _ => Priority::Critical,
    }
}

/// Every known ticket, waiting or granted, so `pick` can choose among them.
fn live(ledger: &Ledger) -> Vec<Ticket> {
    let mut all: Vec<Ticket> = ledger.waiters.iter().map(|w| w.ticket).collect();
    all.extend(ledger.leases.keys().copied());
    all.sort();
    all
}

fn check_books(ledger: &Ledger, before: &[u64]) {
    for (g, book) in ledger.books().iter().enumerate() {
        let sum: u64 = ledger
            .leases()
            .filter(|l| l.gpu as usize == g)
            .map(|l| l.bytes)
            .sum();
        assert_eq!(
            sum, book.granted,
            "GPU {g}: the book disagrees with its leases"
        );
        if book.granted > before[g] {
            assert!(
                book.granted <= book.budget.total(),
                "GPU {g}: granted {} over a budget of {}",
                book.granted,
                book.budget.total()
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Under any sequence of acquire, release, death, shrink, foreign use and time passing,
    /// grants never exceed the budget, every reclaim asks holders in the reclaim order
    /// (class, then reload cost, then recency), and afterwards every waiter that fits is
    /// granted or times out once the holders go away.
    #[test]
    fn grants_stay_within_budget_and_every_fitting_waiter_is_served(ops in proptest::collection::vec(op(), 1..80)) {
        let start = Instant::now();
        let mut now = start;
        let mut ledger = Ledger::new(books(&[8 * GIB, 4 * GIB]), policy());
        for op in ops {
            let before: Vec<u64> = ledger.books().iter().map(|b| b.granted).collect();
            let mut effects = Vec::new();
            match op {
                Op::Ask { bytes, gpu, priority: p, preemptible, reload, wait, unary } => {
                    let request = Ask {
                        holder: "h".into(),
                        gpu: gpu.map_or(GpuChoice::Any, GpuChoice::Index),
                        bytes,
                        priority: priority(p),
                        preemptible,
                        reload,
                        max_wait: wait.map(Duration::from_secs),
                        form: if unary { Form::Unary { ttl: Duration::from_secs(30) } } else { Form::Stream },
                        peer: None,
                        owner: String::new(),
                        quota: None,
                    };
                    let limit = match request.gpu {
                        GpuChoice::Any => ledger.books().iter().map(|b| b.budget.limit()).max().unwrap(),
                        GpuChoice::Index(i) => ledger.books()[i as usize].budget.limit(),
                    };
                    match ledger.ask(request, now) {
                        Ok((_, e)) => {
                            prop_assert!(bytes <= limit);
                            effects = e;
                        }
                        Err(LeaseError::NeverFits { .. }) => prop_assert!(bytes > limit),
                        Err(other) => prop_assert!(false, "unexpected refusal {other}"),
                    }
                }
                Op::End { pick } => {
                    let all = live(&ledger);
                    if !all.is_empty() {
                        effects = ledger.end(all[pick % all.len()], ReleaseReason::HolderDied, now);
                    }
                }
                Op::Shrink { pick, permille } => {
                    let leases: Vec<(Ticket, u64)> = ledger.leases().map(|l| (l.ticket, l.bytes)).collect();
                    if !leases.is_empty() {
                        let (t, held) = leases[pick % leases.len()];
                        if let Ok((_, e)) = ledger.shrink(t, held * permille as u64 / 1000, now) { effects = e; }
                    }
                }
                Op::Renew { pick } => {
                    let leases: Vec<Ticket> = ledger.leases().map(|l| l.ticket).collect();
                    if !leases.is_empty() {
                        let _ = ledger.renew(leases[pick % leases.len()], now);
                    }
                }
                Op::Foreign { gpu, bytes } => { effects = ledger.set_unleased(gpu, bytes, now); }
                Op::Wait { secs } => {
                    now += Duration::from_secs(secs);
                    effects = ledger.tick(now);
                }
            }
            check_books(&ledger, &before);
            check_reclaim_order(&ledger, &effects);
        }

        // Liveness: foreign processes leave, holders release in turn; the queue must drain.
        for g in 0..2 { ledger.set_unleased(g, 0, now); }
        let mut rounds = 0;
        while !ledger.waiters.is_empty() {
            rounds += 1;
            prop_assert!(rounds < 200, "queue did not drain: {} waiters left", ledger.waiters.len());
            let before: Vec<u64> = ledger.books().iter().map(|b| b.granted).collect();
            let waiting = ledger.waiters.len();
            for t in ledger.leases.keys().copied().collect::<Vec<_>>() {
                ledger.end(t, ReleaseReason::Released, now);
            }
            now += Duration::from_secs(1);
            ledger.tick(now);
            check_books(&ledger, &before);
            prop_assert!(ledger.waiters.len() < waiting || ledger.leases.is_empty() && ledger.waiters.is_empty(),
                "no progress with every lease released: {} waiters", ledger.waiters.len());
        }
    }
}

// === property tests with what the holders really use ===

const PIDS: [u32; 4] = [101, 102, 103, 104];

#[derive(Clone, Debug)]
enum UseOp {
    /// A request; `pid` None: a holder the ledger cannot see.
    Ask {
        pid: Option<usize>,
        bytes: u64,
        gpu: Option<u32>,
        priority: u8,
        preemptible: bool,
        reload: ReloadCost,
        unary: bool,
    },
    /// Release or death: the holder may go on using its memory (it lies) or not.
    End {
        pick: usize,
    },
    /// Shrink (the answer to a reclaim, or a lie): use does not follow by itself.
    Shrink {
        pick: usize,
        permille: u16,
    },
    /// A process's real use changes. Growth above what it holds is read at once: grants
    /// are decided on fresh readings.
    Use {
        pid: usize,
        gpu: u32,
        bytes: u64,
    },
    Foreign {
        gpu: u32,
        bytes: u64,
    },
    /// A periodic reading of a GPU.
    Read {
        gpu: u32,
    },
    Wait {
        millis: u64,
    },
}

fn use_op() -> impl Strategy<Value = UseOp> {
    prop_oneof![
        4 => (proptest::option::of(0..PIDS.len()), 1..=12u64, proptest::option::of(0..2u32), 1..=4u8, any::<bool>(), reload_cost(), any::<bool>())
            .prop_map(|(pid, g, gpu, priority, preemptible, reload, unary)| UseOp::Ask { pid, bytes: g * GIB / 2, gpu, priority, preemptible, reload, unary }),
        2 => any::<usize>().prop_map(|pick| UseOp::End { pick }),
        2 => (any::<usize>(), 1..1000u16).prop_map(|(pick, permille)| UseOp::Shrink { pick, permille }),
        4 => (0..PIDS.len(), 0..2u32, 0..=16u64).prop_map(|(pid, gpu, g)| UseOp::Use { pid, gpu, bytes: g * GIB / 2 }),
        1 => (0..2u32, 0..6u64).prop_map(|(gpu, g)| UseOp::Foreign { gpu, bytes: g * GIB }),
        3 => (0..2u32).prop_map(|gpu| UseOp::Read { gpu }),
        2 => prop_oneof![0..200u64, 0..20_000u64].prop_map(|millis| UseOp::Wait { millis }),
    ]
}

fn action(n: u8) -> Action {
    [Action::Log, Action::Reclaim, Action::Revoke, Action::Kill][n as usize % 4]
}

/// The card as it really is: what each process uses, and foreign use.
struct Card {
    used: HashMap<(u32, u32), u64>,
    foreign: [u64; 2],
}

impl Card {
    /// What a real card lets `pid` (None: foreign processes) have at most on `gpu`: an
    /// allocation beyond the memory there fails.
    fn room(&self, gpu: u32, pid: Option<u32>, capacity: u64) -> u64 {
        let others: u64 = self
            .used
            .iter()
            .filter(|((g, p), _)| *g == gpu && Some(*p) != pid)
            .map(|(_, b)| *b)
            .sum();
        let foreign = if pid.is_some() {
            self.foreign[gpu as usize]
        } else {
            0
        };
        capacity.saturating_sub(others + foreign)
    }

    /// A reading of `gpu` as the broker attributes it: tracked pids by name, the rest foreign.
    fn read(&self, ledger: &Ledger, gpu: u32, at: Instant) -> Reading {
        let tracked = ledger.tracked(gpu);
        let mut reading = Reading {
            taken_at: Some(at),
            unleased: self.foreign[gpu as usize],
            used_by: HashMap::new(),
        };
        for pid in PIDS {
            let used = self.used.get(&(gpu, pid)).copied().unwrap_or(0);
            if tracked.contains(&pid) {
                reading.used_by.insert(pid, used);
            } else {
                reading.unleased += used;
            }
        }
        reading
    }

    /// What the card must hold if every holder uses what it may: for each process the
    /// larger of its leases and its real use, plus leases of unseen holders, plus foreign.
    fn committed(&self, ledger: &Ledger, gpu: u32) -> u64 {
        let mut leased: HashMap<u32, u64> = HashMap::new();
        let mut unseen = 0;
        for lease in ledger.leases().filter(|l| l.gpu == gpu) {
            match visible_pid(lease) {
                Some(pid) => *leased.entry(pid).or_default() += lease.bytes,
                None => unseen += lease.bytes,
            }
        }
        let processes: u64 = PIDS
            .iter()
            .map(|pid| {
                let used = self.used.get(&(gpu, *pid)).copied().unwrap_or(0);
                used.max(leased.get(pid).copied().unwrap_or(0))
            })
            .sum();
        processes + unseen + self.foreign[gpu as usize]
    }
}

/// Sums the effects the way a watcher of the event feed would: granted bytes per GPU, and
/// bytes on their way back.
#[derive(Default)]
struct Feed {
    granted: [i128; 2],
    returning: [i128; 2],
}

impl Feed {
    fn add(&mut self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Granted { lease, .. } => {
                    self.granted[lease.gpu as usize] += lease.bytes as i128
                }
                Effect::Released {
                    lease,
                    bytes,
                    returning,
                    ..
                } => {
                    self.granted[lease.gpu as usize] -= *bytes as i128;
                    self.returning[lease.gpu as usize] += *returning as i128;
                }
                Effect::Revoked {
                    lease, returning, ..
                } => {
                    self.granted[lease.gpu as usize] -= lease.bytes as i128;
                    self.returning[lease.gpu as usize] += *returning as i128;
                }
                Effect::Returned { ret, .. } => {
                    self.returning[ret.gpu as usize] -= ret.bytes as i128
                }
                _ => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Holders that use more than they hold, shrink or release while still using, answer
    /// reclaims late or never: at every grant the card can hold what every holder may use
    /// (for each process the larger of its leases and its use, plus foreign use), the
    /// effects, summed like the event feed, agree with the books, and every reclaim for a
    /// waiter asks holders in the reclaim order.
    #[test]
    fn no_byte_is_promised_twice(ops in proptest::collection::vec(use_op(), 1..100), actions in (0..4u8, 0..4u8)) {
        let start = Instant::now();
        let mut now = start;
        let mut policy = policy();
        policy.fresh_within = Some(Duration::from_millis(100));
        policy.overuse = [action(actions.0), action(actions.1), action(actions.0), action(actions.1)];
        let mut ledger = Ledger::new(books(&[8 * GIB, 4 * GIB]), policy);
        let mut card = Card { used: HashMap::new(), foreign: [0, 0] };
        let mut feed = Feed::default();
        for g in 0..2 {
            let reading = card.read(&ledger, g, now);
            feed.add(&ledger.observe(g, reading, now));
        }
        for op in ops {
            let mut effects = Vec::new();
            match op {
                UseOp::Ask { pid, bytes, gpu, priority: p, preemptible, reload, unary } => {
                    let request = Ask {
                        holder: "h".into(),
                        gpu: gpu.map_or(GpuChoice::Any, GpuChoice::Index),
                        bytes,
                        priority: priority(p),
                        preemptible,
                        reload,
                        max_wait: Some(Duration::from_secs(30)),
                        form: if unary { Form::Unary { ttl: Duration::from_secs(30) } } else { Form::Stream },
                        peer: pid.map(|i| Peer { pid: PIDS[i], uid: 0 }),
                        owner: String::new(),
                        quota: None,
                    };
                    if let Ok((_, e)) = ledger.ask(request, now) { effects = e; }
                }
                UseOp::End { pick } => {
                    let all = live(&ledger);
                    if !all.is_empty() {
                        effects = ledger.end(all[pick % all.len()], ReleaseReason::HolderDied, now);
                    }
                }
                UseOp::Shrink { pick, permille } => {
                    let leases: Vec<(Ticket, u64)> = ledger.leases().map(|l| (l.ticket, l.bytes)).collect();
                    if !leases.is_empty() {
                        let (t, held) = leases[pick % leases.len()];
                        if let Ok((_, e)) = ledger.shrink(t, held * permille as u64 / 1000, now) { effects = e; }
                    }
                }
                UseOp::Use { pid, gpu, bytes } => {
                    let pid = PIDS[pid];
                    let bytes = bytes.min(card.room(gpu, Some(pid), ledger.books()[gpu as usize].budget.capacity));
                    let before = card.used.insert((gpu, pid), bytes).unwrap_or(0);
                    let holds: u64 = ledger.leases().filter(|l| l.gpu == gpu && visible_pid(l) == Some(pid)).map(|l| l.bytes).sum();
                    if bytes > before && bytes > holds {
                        let reading = card.read(&ledger, gpu, now);
                        effects = ledger.observe(gpu, reading, now);
                    }
                }
                UseOp::Foreign { gpu, bytes } => {
                    let bytes = bytes.min(card.room(gpu, None, ledger.books()[gpu as usize].budget.capacity));
                    let before = std::mem::replace(&mut card.foreign[gpu as usize], bytes);
                    if bytes > before {
                        let reading = card.read(&ledger, gpu, now);
                        effects = ledger.observe(gpu, reading, now);
                    }
                }
                UseOp::Read { gpu } => {
                    let reading = card.read(&ledger, gpu, now);
                    effects = ledger.observe(gpu, reading, now);
                }
                UseOp::Wait { millis } => {
                    now += Duration::from_millis(millis);
                    effects = ledger.tick(now);
                }
            }
            feed.add(&effects);
            check_reclaim_order(&ledger, &effects);
            let grants: Vec<u32> = effects.iter().filter_map(|e| match e {
                Effect::Granted { lease, .. } => Some(lease.gpu),
                _ => None,
            }).collect();
            {
                for g in grants {
                    let committed = card.committed(&ledger, g);
                    let limit = ledger.books()[g as usize].budget.limit();
                    prop_assert!(committed <= limit,
                        "GPU {g}: a grant promised bytes the card holds: {} committed on {}", ByteSize(committed), ByteSize(limit));
                }
            }
            for (g, book) in ledger.books().iter().enumerate() {
                let sum: u64 = ledger.leases().filter(|l| l.gpu as usize == g).map(|l| l.bytes).sum();
                prop_assert_eq!(sum, book.granted);
                prop_assert_eq!(feed.granted[g], book.granted as i128, "GPU {}: the feed's granted bytes", g);
                prop_assert_eq!(feed.returning[g], book.returning as i128, "GPU {}: the feed's returning bytes", g);
            }
        }

        // Liveness: every process stops using memory, holders release, readings come: the
        // queue drains and every return is seen.
        card.used.clear();
        card.foreign = [0, 0];
        let mut rounds = 0;
        while !ledger.waiters.is_empty() || !ledger.returns().is_empty() {
            rounds += 1;
            prop_assert!(rounds < 200, "did not drain: {} waiters, {} returns", ledger.waiters.len(), ledger.returns().len());
            for t in ledger.leases.keys().copied().collect::<Vec<_>>() {
                feed.add(&ledger.end(t, ReleaseReason::Released, now));
            }
            now += Duration::from_millis(10);
            for g in 0..2 {
                let reading = card.read(&ledger, g, now);
                feed.add(&ledger.observe(g, reading, now));
            }
            feed.add(&ledger.tick(now));
        }
        for g in 0..2 {
            prop_assert_eq!(feed.returning[g], 0);
        }
    }
}
