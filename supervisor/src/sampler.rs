//! Reads the GPUs and folds the readings into the broker, which keeps each budget current
//! with foreign use and each holder charged for what it uses.
//!
//! Three reasons to read a card: the periodic sample (`every`); a grant waiting for a
//! reading newer than the ledger's freshness bound (the broker wakes this loop at once);
//! and given-back bytes waiting to be seen free, for which the card is read every
//! `return_poll`, so that the waiter they are for is granted the moment they are back.

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
    let mut last_periodic: HashMap<u32, Instant> = HashMap::new();
    loop {
        let now = Instant::now();
        let wanted = broker.readings_wanted();
        for &gpu in &gpus {
            let due = last_periodic
                .get(&gpu)
                .is_none_or(|at| now.saturating_duration_since(*at) >= every);
            if due {
                last_periodic.insert(gpu, now);
            }
            if due || wanted.contains(&gpu) {
                sample(&inventory, &broker, gpu).await;
            }
        }
        // Sleep until the next periodic sample, or a short poll while bytes are on their
        // way back; a grant that wants a reading wakes us early.
        let next_periodic = gpus
            .iter()
            .map(|g| {
                last_periodic
                    .get(g)
                    .map_or(Duration::ZERO, |at| every.saturating_sub(at.elapsed()))
            })
            .min()
            .unwrap_or(every);
        let pause = if broker.readings_wanted().is_empty() {
            next_periodic
        } else {
            next_periodic.min(return_poll)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
            _ = broker.reading_wanted() => {}
        }
    }
}
