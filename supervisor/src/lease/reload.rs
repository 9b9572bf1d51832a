//! What a holder's bytes cost to bring back once it has given them up: the ledger's measure
//! for choosing whom to reclaim from within a priority class.
//!
//! Reclaiming from a holder costs it the time to load its bytes again. Any holder can be
//! asked for part of its lease, so taking the bytes a waiter lacks from the fastest
//! reloaders first costs the least reload time in all (each byte taken costs its holder
//! `1 / rate` seconds): the ledger orders candidates by rate, fastest first.
//!
//! A holder that says nothing counts as the slowest. Declaring a reload can then only make a
//! holder an earlier victim than it would be by staying silent, never a later one, so there
//! is nothing to gain by declaring a cheap reload it does not have.

use std::cmp::Ordering;
use std::ops::RangeInclusive;

/// Where reclaimed bytes come back from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReloadSource {
    /// The holder did not say: the slowest, like [`ReloadSource::Recompute`].
    #[default]
    Unknown,
    /// Pinned host memory, copied back by DMA.
    HostPool,
    /// Files in the page cache, copied through pageable memory.
    PageCache,
    /// Files read from disk.
    Disk,
    /// Bytes computed again (a KV cache, say).
    Recompute,
}

impl ReloadSource {
    /// The rate assumed when the holder measured none, in bytes per second; None: no rate
    /// can be assumed, so the slowest of all.
    ///
    /// Deliberately low, so that they rank the sources without flattering any: pinned host
    /// memory at what PCIe Gen4 x16 carries (the H100 host in docs/benchmarks.md copies 55
    /// GB/s); the page cache at a pageable copy (6.5-7.2 GB/s measured there; Arbiter's own
    /// loader, through pinned staging, reads it at ~48 GB/s and should say so); disk at a
    /// cold read (1.3-1.7 GB/s measured there).
    pub fn typical_rate(self) -> Option<u64> {
        match self {
            ReloadSource::HostPool => Some(25_000_000_000),
            ReloadSource::PageCache => Some(6_000_000_000),
            ReloadSource::Disk => Some(1_500_000_000),
            ReloadSource::Recompute | ReloadSource::Unknown => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReloadSource::Unknown => "unknown",
            ReloadSource::HostPool => "host pool",
            ReloadSource::PageCache => "page cache",
            ReloadSource::Disk => "disk",
            ReloadSource::Recompute => "recompute",
        }
    }
}

/// The measured rates a holder may declare, in bytes per second. Below 1 MB/s the number is
/// most likely GB/s or MB/s sent as a plain number; above 10 TB/s it is faster than any link
/// into a GPU (HBM itself runs at a few TB/s).
pub const MEASURED_RATES: RangeInclusive<u64> = 1_000_000..=10_000_000_000_000;

/// What a holder said its bytes cost to bring back. The default is a holder that said
/// nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ReloadCost {
    pub source: ReloadSource,
    /// Bytes per second the holder measured, within [`MEASURED_RATES`]; None: the source's
    /// typical rate.
    pub measured: Option<u64>,
}

impl ReloadCost {
    /// The rate the ledger assumes, in bytes per second: the measured one, else the
    /// source's typical one; None: the slowest of all.
    pub fn rate(self) -> Option<u64> {
        self.measured.or(self.source.typical_rate())
    }

    /// Estimated seconds to bring `bytes` back; infinite where no rate is known.
    pub fn seconds(self, bytes: u64) -> f64 {
        match self.rate() {
            Some(rate) => bytes as f64 / rate as f64,
            None => f64::INFINITY,
        }
    }

    /// Orders by what a reclaimed byte costs: faster reloads first (`Less`), an unknown rate
    /// last; equal rates are equal whatever their sources.
    pub fn cheaper_first(self, other: ReloadCost) -> Ordering {
        match (self.rate(), other.rate()) {
            (Some(a), Some(b)) => b.cmp(&a),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(source: ReloadSource, measured: Option<u64>) -> ReloadCost {
        ReloadCost { source, measured }
    }

    #[test]
    fn the_sources_rank_pool_then_page_cache_then_disk_then_the_rest() {
        use ReloadSource::*;
        let mut all = [Unknown, Disk, Recompute, HostPool, PageCache].map(|s| cost(s, None));
        all.sort_by(|a, b| a.cheaper_first(*b));
        let ranked: Vec<ReloadSource> = all.iter().map(|c| c.source).collect();
        assert_eq!(&ranked[..3], &[HostPool, PageCache, Disk]);
        assert_eq!(
            all[3].cheaper_first(all[4]),
            Ordering::Equal,
            "recompute without a rate is as slow as not saying"
        );
    }

    #[test]
    fn a_measured_rate_overrides_the_source() {
        let fast_disk = cost(ReloadSource::Disk, Some(30_000_000_000));
        let pool = cost(ReloadSource::HostPool, None);
        assert_eq!(fast_disk.cheaper_first(pool), Ordering::Less);
        let measured_recompute = cost(ReloadSource::Recompute, Some(1_000_000));
        assert_eq!(
            measured_recompute.cheaper_first(ReloadCost::default()),
            Ordering::Less,
            "any declared rate is cheaper than silence"
        );
    }

    #[test]
    fn seconds_are_bytes_over_the_rate() {
        let pool = cost(ReloadSource::HostPool, None);
        assert_eq!(pool.seconds(50_000_000_000), 2.0);
        assert!(ReloadCost::default().seconds(1).is_infinite());
    }
}
