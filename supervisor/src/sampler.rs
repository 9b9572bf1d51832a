//! Samples every GPU on a fixed interval and folds the readings into the broker, which
//! keeps each budget current with foreign use and spots holders using more than they hold.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::gpu::Inventory;
use crate::lease::broker::Broker;

/// Reads every GPU once, now.
pub async fn sample_all(inventory: &Arc<dyn Inventory>, broker: &Arc<Broker>) {
    for gpu in inventory.gpus().iter().map(|g| g.index).collect::<Vec<_>>() {
        let source = Arc::clone(inventory);
        // NVML calls block (briefly); keep them off the async workers.
        match tokio::task::spawn_blocking(move || source.sample(gpu)).await {
            Ok(Ok(sample)) => broker.observe(gpu, sample),
            Ok(Err(error)) => {
                tracing::warn!(gpu, %error, "cannot sample GPU; keeping the last reading")
            }
            Err(error) => tracing::error!(gpu, %error, "GPU sampling task failed"),
        }
    }
}

/// Samples until `stop` fires.
pub async fn run(
    inventory: Arc<dyn Inventory>,
    broker: Arc<Broker>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = interval.tick() => sample_all(&inventory, &broker).await,
        }
    }
}
