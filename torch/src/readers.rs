//! What every parallel reader of a weights file shares, whichever path its bytes take (a CPU
//! load, the pinned staging ring, a prewarm): how long the readers spent, and the error
//! for one that panicked.
//!
//! It sits below `load`, `staging` and `prewarm` so that `load` can drive `staging`
//! without `staging` reaching back into `load`.

use std::path::Path;
use std::time::Duration;

use crate::weights_error::WeightsError;

/// How the readers did: time inside `pread` summed over threads, and how many there were.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ReadTime {
    pub spent: Duration,
    pub threads: usize,
}

/// The error for a reader thread that panicked.
pub(crate) fn reader_died(path: &Path, panic: &(dyn std::any::Any + Send)) -> WeightsError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panicked".into());
    WeightsError::Reader {
        path: path.to_path_buf(),
        message,
    }
}
