//! Gauges read from the broker at each scrape: every GPU's bytes (total, used, foreign,
//! budget, granted, returning, available), the leases by priority class and form, the
//! queue's length, and each leased process's NVML bytes.
//!
//! Taken from `Broker::status` and `Broker::leases` when Prometheus asks, so they are
//! exactly what `arbiter-supervisor status` would say at that moment, and nothing has to
//! be kept in step between scrapes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use super::feed::{FORMS, LeaseLabels, PRIORITIES, form_label, priority_label};
use crate::lease::Lease;
use crate::lease::events::GpuView;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuInfoLabels {
    pub gpu: String,
    pub uuid: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    pub gpu: String,
    pub pid: String,
    pub holder: String,
    pub lease: String,
}

/// A byte count as a gauge value (which is signed).
pub fn gauge_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[derive(Debug, Default)]
pub struct Snapshot {
    info: Family<GpuInfoLabels, Gauge>,
    total: Family<GpuLabels, Gauge>,
    used: Family<GpuLabels, Gauge>,
    foreign: Family<GpuLabels, Gauge>,
    budget: Family<GpuLabels, Gauge>,
    granted: Family<GpuLabels, Gauge>,
    returning: Family<GpuLabels, Gauge>,
    available: Family<GpuLabels, Gauge>,
    leases: Family<LeaseLabels, Gauge>,
    queue: Gauge,
    processes: Family<ProcessLabels, Gauge>,
}

impl Snapshot {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gpu_info",
            "Each GPU the supervisor serves (value 1), with its uuid and name",
            self.info.clone(),
        );
        let bytes = [
            (
                "gpu_total",
                "Memory the card offers to processes",
                &self.total,
            ),
            (
                "gpu_used",
                "Memory in use on the card at the last reading",
                &self.used,
            ),
            (
                "gpu_foreign",
                "Memory used by processes without a lease (out of the budget)",
                &self.foreign,
            ),
            (
                "gpu_budget",
                "What may be lent: total less the reserve and foreign use",
                &self.budget,
            ),
            ("gpu_granted", "Memory granted to leases", &self.granted),
            (
                "gpu_returning",
                "Given-back memory the card does not yet show free",
                &self.returning,
            ),
            (
                "gpu_available",
                "What a new lease could be granted now",
                &self.available,
            ),
        ];
        for (name, help, family) in bytes {
            registry.register_with_unit(name, help, Unit::Bytes, family.clone());
        }
        registry.register(
            "leases",
            "Leases granted now, by priority class and form",
            self.leases.clone(),
        );
        registry.register(
            "lease_queue_length",
            "Requests waiting in the queue",
            self.queue.clone(),
        );
        registry.register_with_unit(
            "lease_process",
            "GPU memory NVML shows for each process counted against a lease (a holder and its descendants)",
            Unit::Bytes,
            self.processes.clone(),
        );
    }

    /// Sets every gauge from one reading of the broker. Series of GPUs, leases and
    /// processes that are gone disappear.
    pub fn update(&self, gpus: &[GpuView], waiting: usize, leases: &[Lease]) {
        for family in [
            &self.total,
            &self.used,
            &self.foreign,
            &self.budget,
            &self.granted,
            &self.returning,
            &self.available,
        ] {
            family.clear();
        }
        self.info.clear();
        self.processes.clear();
        for view in gpus {
            let gpu = GpuLabels {
                gpu: view.index.to_string(),
            };
            self.info
                .get_or_create(&GpuInfoLabels {
                    gpu: gpu.gpu.clone(),
                    uuid: view.uuid.clone(),
                    name: view.name.clone(),
                })
                .set(1);
            for (family, bytes) in [
                (&self.total, view.total),
                (&self.used, view.used),
                (&self.foreign, view.unleased),
                (&self.budget, view.budget),
                (&self.granted, view.granted),
                (&self.returning, view.returning),
                (&self.available, view.available),
            ] {
                family.get_or_create(&gpu).set(gauge_bytes(bytes));
            }
            for (pid, used, lease_id) in &view.processes {
                let Some(lease_id) = lease_id else {
                    continue; // foreign: counted in arbiter_gpu_foreign_bytes
                };
                let holder = leases
                    .iter()
                    .find(|l| &l.id == lease_id)
                    .map_or_else(String::new, |l| l.holder.clone());
                self.processes
                    .get_or_create(&ProcessLabels {
                        gpu: gpu.gpu.clone(),
                        pid: pid.to_string(),
                        holder,
                        lease: lease_id.clone(),
                    })
                    .inc_by(gauge_bytes(*used));
            }
        }
        // Every class and form, so a dashboard sees 0 rather than no series.
        self.leases.clear();
        for priority in PRIORITIES {
            for form in FORMS {
                let count = leases
                    .iter()
                    .filter(|l| l.priority == priority && form_label(l.form) == form_label(form))
                    .count();
                self.leases
                    .get_or_create(&LeaseLabels {
                        priority: priority_label(priority).into(),
                        form: form_label(form).into(),
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
        }
        self.queue.set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }
}
