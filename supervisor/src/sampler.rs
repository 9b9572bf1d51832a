//! Reads the GPUs and folds the readings into the broker, which keeps each budget current
//! with foreign use and each holder charged for what it uses.
//!
//! Three reasons to read a card: the periodic sample (`every`); a grant waiting for a
//! reading newer than the ledger's freshness bound (the broker wakes this loop, and the card
//! is read at once); and a waiter that would fit once given-back bytes are seen free, for
//! which the card is read every `return_poll` while it waits, so that it is granted within a
//! poll of the memory showing free. Nobody waiting, given-back bytes are seen at the next
//! reading of either other kind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::gpu::Inventory;
use crate::lease::broker::Broker;

/// Reads one GPU now and hands the reading to the broker.
pub async fn sample(inventory: &Arc<dyn Inventory>, broker: &Arc<Broker>, gpu: u32) {
    let source = Arc::clone(inventory);
    // The reading proves nothing about what happened after it began.
    let taken_at = Instant::now();
    // NVML calls block (briefly); keep them off the async workers.
    match tokio::task::spawn_blocking(move || source.sample(gpu)).await {
        Ok(Ok(sample)) => broker.observe(gpu, sample, taken_at),
        Ok(Err(error)) => {
            tracing::warn!(gpu, %error, "cannot sample GPU; keeping the last reading")
        }
        Err(error) => tracing::error!(gpu, %error, "GPU sampling task failed"),
    }
}

/// Reads every GPU once, now.
pub async fn sample_all(inventory: &Arc<dyn Inventory>, broker: &Arc<Broker>) {
    for gpu in inventory.gpus().iter().map(|g| g.index).collect::<Vec<_>>() {
        sample(inventory, broker, gpu).await;
    }
}

/// Samples until `stop` fires.
pub async fn run(
    inventory: Arc<dyn Inventory>,
    broker: Arc<Broker>,
    every: Duration,
    return_poll: Duration,
    stop: CancellationToken,
) {
    let gpus: Vec<u32> = inventory.gpus().iter().map(|g| g.index).collect();
    // When each GPU was last read by this loop, and last read for the periodic sample.
    let mut last: HashMap<u32, Instant> = HashMap::new();
    let mut last_periodic: HashMap<u32, Instant> = HashMap::new();
    let since = |map: &HashMap<u32, Instant>, gpu: u32, now: Instant| {
        map.get(&gpu)
            .map_or(Duration::MAX, |at| now.saturating_duration_since(*at))
    };
    loop {
        let now = Instant::now();
        let wanted = broker.readings_wanted();
        let returning = broker.returns_awaited();
        for &gpu in &gpus {
            let periodic = since(&last_periodic, gpu, now) >= every;
            let poll = returning.contains(&gpu) && since(&last, gpu, now) >= return_poll;
            if periodic || poll || wanted.contains(&gpu) {
                if periodic {
                    last_periodic.insert(gpu, now);
                }
                last.insert(gpu, now);
                sample(&inventory, &broker, gpu).await;
            }
        }
        // Sleep until the next periodic sample, or the next poll while bytes are on their
        // way back; a grant that wants a reading (or a new give-back) wakes us early.
        let now = Instant::now();
        let returning = broker.returns_awaited();
        let pause = gpus
            .iter()
            .map(|&gpu| {
                let periodic = every.saturating_sub(since(&last_periodic, gpu, now));
                if returning.contains(&gpu) {
                    periodic.min(return_poll.saturating_sub(since(&last, gpu, now)))
                } else {
                    periodic
                }
            })
            .min()
            .unwrap_or(every);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = broker.reading_wanted() => {}
        }
    }
}
