//! The supervisor's Prometheus metrics, served at `GET /metrics` when `[metrics] listen`
//! is set (the listener itself is `arbiter::scrape`, shared with arbiter-tts).
//!
//! Three sources, none of which the ledger knows about:
//! - [`feed`]: counters and histograms folded from the broker's event feed (grants,
//!   releases, reclaims, revocations, deadline expiries, the wait from request to grant);
//! - [`snapshot`]: gauges read from the broker at each scrape (bytes per GPU, leases,
//!   the queue, each leased process's NVML bytes);
//! - [`jobs`]: jobs by state at each scrape, and each ended job's durations and loads;
//! - [`pool`]: the host weight pool's figures at each scrape, when it is on.
//!
//! Every name starts with `arbiter_` and carries its base unit (`_bytes`, `_seconds`;
//! counters end in `_total`).

pub mod feed;
pub mod jobs;
pub mod pool;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use prometheus_client::registry::Registry;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::MetricsConfig;
use crate::job::jobs::Jobs;
use crate::lease::broker::Broker;
use crate::lease::events::Event;
use crate::pool::Pool;
use feed::{Feed, Fold};
use jobs::JobMetrics;
use snapshot::Snapshot;

/// Every metric the supervisor exports, and where the scrape-time ones are read from.
pub struct Metrics {
    registry: Registry,
    feed: Arc<Feed>,
    snapshot: Snapshot,
    jobs: JobMetrics,
    broker: Arc<Broker>,
    hub: Arc<Jobs>,
    /// The host weight pool, when on, and its figures.
    pool: Option<(Arc<Pool>, pool::PoolMetrics)>,
    /// One render at a time: the scrape-time gauges are cleared and refilled per render.
    rendering: Mutex<()>,
}

impl Metrics {
    pub fn new(broker: Arc<Broker>, hub: Arc<Jobs>, weights: Option<Arc<Pool>>) -> Metrics {
        let feed = Arc::new(Feed::new());
        let snapshot = Snapshot::default();
        let jobs = JobMetrics::new(&hub.list(&[], usize::MAX));
        let mut registry = Registry::with_prefix("arbiter");
        feed.register(&mut registry);
        snapshot.register(&mut registry);
        jobs.register(&mut registry);
        let pool = weights.map(|weights| {
            let figures = pool::PoolMetrics::default();
            figures.register(&mut registry);
            (weights, figures)
        });
        Metrics {
            registry,
            feed,
            snapshot,
            jobs,
            broker,
            hub,
            pool,
            rendering: Mutex::new(()),
        }
    }

    /// The exposition text (OpenMetrics), read from the broker and the jobs now.
    pub fn render(&self) -> String {
        let _one = self.rendering.lock().unwrap_or_else(|p| p.into_inner());
        let (gpus, waiting) = self.broker.status();
        let leases: Vec<_> = self
            .broker
            .leases(None)
            .into_iter()
            .map(|(lease, _)| lease)
            .collect();
        self.snapshot.update(&gpus, waiting.len(), &leases);
        self.jobs.update(&self.hub.list(&[], usize::MAX));
        self.jobs.update_standby(&self.hub.standby_ready());
        if let Some((weights, figures)) = &self.pool {
            figures.update(&weights.status());
        }
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            // Writing to a String does not fail; a label that cannot be encoded would.
            tracing::error!(%error, "cannot encode the metrics");
        }
        text
    }

    /// Folds the event feed into the counters until `stop` or the feed closes. Take
    /// `events` before the first request is served, so no grant is missed.
    pub async fn follow(&self, mut events: broadcast::Receiver<Event>, stop: CancellationToken) {
        let mut fold = Fold::default();
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                event = events.recv() => event,
            };
            match event {
                Ok(event) => self.feed.fold(&event.kind, &mut fold),
                Err(broadcast::error::RecvError::Lagged(count)) => {
                    tracing::debug!(count, "the metrics fell behind the event feed");
                    self.feed.skipped(count, &mut fold);
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Binds the endpoint, then folds the feed and serves scrapes until `stop`. Returns the
/// address bound. Call it before the first request is served.
pub async fn start(
    endpoint: arbiter::scrape::Endpoint,
    readers: Option<arbiter::scrape::Readers>,
    broker: &Arc<Broker>,
    hub: &Arc<Jobs>,
    weights: Option<Arc<Pool>>,
    stop: CancellationToken,
) -> Result<SocketAddr, arbiter::scrape::ScrapeError> {
    let listener = endpoint.bind(MetricsConfig::ALLOW_REMOTE).await?;
    let address = listener
        .local_addr()
        .map_err(|source| arbiter::scrape::ScrapeError::Bind {
            address: endpoint.address,
            source,
        })?;
    let events = broker.feed().subscribe();
    let metrics = Arc::new(Metrics::new(Arc::clone(broker), Arc::clone(hub), weights));
    let follower = Arc::clone(&metrics);
    let until = stop.clone();
    tokio::spawn(async move { follower.follow(events, until).await });
    let render: arbiter::scrape::Render = Arc::new(move || metrics.render());
    let listener = match readers {
        Some(readers) => listener.with_readers(readers),
        None => listener,
    };
    tokio::spawn(listener.serve(render, stop));
    Ok(address)
}

#[cfg(test)]
mod tests;
