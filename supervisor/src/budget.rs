//! A GPU's budget: what the supervisor may lend out on it.
//!
//! `capacity - reserve - unleased`: the card's memory, less what the operator holds back
//! (driver overhead, headroom), less what processes without a lease are using now. The last
//! term comes from NVML samples, so a foreign process starting on the card shrinks what can
//! be granted, and its exit gives the room back.

/// The three terms of one GPU's budget, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Budget {
    /// Memory the card offers (NVML total less what the driver itself reserves).
    pub capacity: u64,
    /// Held back by configuration.
    pub reserve: u64,
    /// Used by processes that hold no lease, as last sampled.
    pub unleased: u64,
}

impl Budget {
    /// The most any single lease could ever be granted: nothing but the reserve in the way.
    pub fn limit(&self) -> u64 {
        self.capacity.saturating_sub(self.reserve)
    }

    /// What may be granted in all right now.
    pub fn total(&self) -> u64 {
        self.limit().saturating_sub(self.unleased)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_use_shrinks_the_budget_and_never_underflows() {
        let mut budget = Budget {
            capacity: 80,
            reserve: 2,
            unleased: 10,
        };
        assert_eq!(budget.limit(), 78);
        assert_eq!(budget.total(), 68);
        budget.unleased = 500;
        assert_eq!(budget.total(), 0);
    }
}
