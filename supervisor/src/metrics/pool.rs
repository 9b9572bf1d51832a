//! The host weight pool's figures at each scrape (`crate::pool::Status`, what GetStatus's
//! `weight_pool` says): the bytes it holds against its budget, its files, and how it has
//! served them. The pool counts for itself; its counters here only follow its counts.

use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::snapshot::gauge_bytes;
use crate::pool::Status;

#[derive(Debug, Default)]
pub struct PoolMetrics {
    bytes: Gauge,
    budget: Gauge,
    files: Gauge,
    huge_files: Gauge,
    locked_files: Gauge,
    hits: Counter,
    fills: Counter,
    evictions: Counter,
    refusals: Counter,
    fill_bytes: Counter,
    /// The pool's counts at the last scrape, which the counters are at.
    seen: Mutex<Status>,
}

impl PoolMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let pool = registry.sub_registry_with_prefix("weight_pool");
        pool.register_with_unit(
            "held",
            "Host memory the weight pool holds (its files' pages)",
            Unit::Bytes,
            self.bytes.clone(),
        );
        pool.register_with_unit(
            "budget",
            "The weight pool's host-memory budget ([pool] host_bytes)",
            Unit::Bytes,
            self.budget.clone(),
        );
        pool.register("files", "Files in the weight pool", self.files.clone());
        pool.register(
            "huge_page_files",
            "Files in the weight pool on explicit 2 MiB pages",
            self.huge_files.clone(),
        );
        pool.register(
            "locked_files",
            "Files in the weight pool locked in RAM",
            self.locked_files.clone(),
        );
        pool.register("hits", "Asks answered from memory", self.hits.clone());
        pool.register("fills", "Files read into the pool", self.fills.clone());
        pool.register(
            "evictions",
            "Files evicted to make room",
            self.evictions.clone(),
        );
        pool.register(
            "refusals",
            "Asks refused (not served, too large, or a failed read)",
            self.refusals.clone(),
        );
        pool.register_with_unit(
            "filled",
            "Bytes read into the pool",
            Unit::Bytes,
            self.fill_bytes.clone(),
        );
    }

    pub fn update(&self, status: &Status) {
        self.bytes.set(gauge_bytes(status.bytes));
        self.budget.set(gauge_bytes(status.budget));
        self.files.set(gauge_bytes(status.files));
        self.huge_files.set(gauge_bytes(status.huge_files));
        self.locked_files.set(gauge_bytes(status.locked_files));
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let step = |counter: &Counter, now: u64, before: u64| {
            counter.inc_by(now.saturating_sub(before));
        };
        step(&self.hits, status.hits, seen.hits);
        step(&self.fills, status.fills, seen.fills);
        step(&self.evictions, status.evictions, seen.evictions);
        step(&self.refusals, status.refusals, seen.refusals);
        step(&self.fill_bytes, status.fill_bytes, seen.fill_bytes);
        *seen = status.clone();
    }
}
