//! The order in which waiters are served: priority, then arrival, with aging.
//!
//! A waiter's rank is its priority class plus one class for every `aging` it has waited,
//! so a batch job that waited long enough outranks fresh interactive requests: nobody
//! starves behind a stream of higher-priority work. Equal ranks go by arrival.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use super::{Priority, Ticket};

/// The effective rank of a waiter at `now`.
pub fn rank(priority: Priority, arrived: Instant, now: Instant, aging: Duration) -> f64 {
    let waited = now.saturating_duration_since(arrived).as_secs_f64();
    let aging = aging.as_secs_f64();
    if aging > 0.0 {
        priority.rank() + waited / aging
    } else {
        priority.rank()
    }
}

/// Sorts `(rank, ticket)` pairs into service order: highest rank first, then oldest ticket.
pub fn service_order(entries: &mut [(f64, Ticket, usize)]) {
    entries.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then(a.1.cmp(&b.1))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aging_lifts_a_long_wait_above_a_higher_class() {
        let start = Instant::now();
        let aging = Duration::from_secs(30);
        let now = start + Duration::from_secs(61);
        let old_batch = rank(Priority::Batch, start, now, aging);
        let fresh_interactive = rank(Priority::Interactive, now, now, aging);
        assert!(old_batch > fresh_interactive);
    }

    #[test]
    fn equal_ranks_go_by_arrival() {
        let mut entries = vec![(2.0, 7, 0), (3.0, 9, 1), (2.0, 3, 2)];
        service_order(&mut entries);
        let tickets: Vec<_> = entries.iter().map(|e| e.1).collect();
        assert_eq!(tickets, vec![9, 3, 7]);
    }
}
