//! The ledger's rules, one test each, and property tests over arbitrary event sequences.

use super::*;
use crate::lease::{Peer, Priority};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn books(sizes: &[u64]) -> Vec<Book> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &capacity)| Book {
            label: format!("GPU {i}"),
            budget: Budget {
                capacity,
                reserve: 0,
                unleased: 0,
            },
            granted: 0,
        })
        .collect()
}

fn policy() -> Policy {
    Policy {
        aging: Duration::from_secs(30),
        reclaim_grace: Duration::from_secs(5),
    }
}

fn ask(holder: &str, bytes: u64, priority: Priority) -> Ask {
    Ask {
        holder: holder.into(),
        gpu: GpuChoice::Any,
        bytes,
        priority,
        preemptible: false,
        max_wait: None,
        form: Form::Stream,
        peer: Some(Peer { pid: 1, uid: 0 }),
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

// === property tests ===

#[derive(Clone, Debug)]
enum Op {
    Ask {
        bytes: u64,
        gpu: Option<u32>,
        priority: u8,
        preemptible: bool,
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
        4 => (1..=12u64, proptest::option::of(0..2u32), 1..=4u8, any::<bool>(), proptest::option::of(1..60u64), any::<bool>())
            .prop_map(|(g, gpu, priority, preemptible, wait, unary)| Op::Ask { bytes: g * GIB / 2, gpu, priority, preemptible, wait, unary }),
        3 => any::<usize>().prop_map(|pick| Op::End { pick }),
        1 => (any::<usize>(), 1..1000u16).prop_map(|(pick, permille)| Op::Shrink { pick, permille }),
        1 => any::<usize>().prop_map(|pick| Op::Renew { pick }),
        1 => (0..2u32, 0..6u64).prop_map(|(gpu, g)| Op::Foreign { gpu, bytes: g * GIB }),
        2 => (0..40u64).prop_map(|secs| Op::Wait { secs }),
    ]
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
    /// grants never exceed the budget, and afterwards every waiter that fits is granted or
    /// times out once the holders go away.
    #[test]
    fn grants_stay_within_budget_and_every_fitting_waiter_is_served(ops in proptest::collection::vec(op(), 1..80)) {
        let start = Instant::now();
        let mut now = start;
        let mut ledger = Ledger::new(books(&[8 * GIB, 4 * GIB]), policy());
        for op in ops {
            let before: Vec<u64> = ledger.books().iter().map(|b| b.granted).collect();
            match op {
                Op::Ask { bytes, gpu, priority: p, preemptible, wait, unary } => {
                    let request = Ask {
                        holder: "h".into(),
                        gpu: gpu.map_or(GpuChoice::Any, GpuChoice::Index),
                        bytes,
                        priority: priority(p),
                        preemptible,
                        max_wait: wait.map(Duration::from_secs),
                        form: if unary { Form::Unary { ttl: Duration::from_secs(30) } } else { Form::Stream },
                        peer: None,
                    };
                    let limit = match request.gpu {
                        GpuChoice::Any => ledger.books().iter().map(|b| b.budget.limit()).max().unwrap(),
                        GpuChoice::Index(i) => ledger.books()[i as usize].budget.limit(),
                    };
                    match ledger.ask(request, now) {
                        Ok(_) => prop_assert!(bytes <= limit),
                        Err(LeaseError::NeverFits { .. }) => prop_assert!(bytes > limit),
                        Err(other) => prop_assert!(false, "unexpected refusal {other}"),
                    }
                }
                Op::End { pick } => {
                    let all = live(&ledger);
                    if !all.is_empty() {
                        ledger.end(all[pick % all.len()], ReleaseReason::HolderDied, now);
                    }
                }
                Op::Shrink { pick, permille } => {
                    let leases: Vec<(Ticket, u64)> = ledger.leases().map(|l| (l.ticket, l.bytes)).collect();
                    if !leases.is_empty() {
                        let (t, held) = leases[pick % leases.len()];
                        let _ = ledger.shrink(t, held * permille as u64 / 1000, now);
                    }
                }
                Op::Renew { pick } => {
                    let leases: Vec<Ticket> = ledger.leases().map(|l| l.ticket).collect();
                    if !leases.is_empty() {
                        let _ = ledger.renew(leases[pick % leases.len()], now);
                    }
                }
                Op::Foreign { gpu, bytes } => { ledger.set_unleased(gpu, bytes, now); }
                Op::Wait { secs } => {
                    now += Duration::from_secs(secs);
                    ledger.tick(now);
                }
            }
            check_books(&ledger, &before);
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
