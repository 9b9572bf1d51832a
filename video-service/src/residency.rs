//! What the worker holds on the GPU, stage by stage, as the supervisor should see it.
//!
//! On a real GPU the supervisor reads the worker's memory from NVML; the worker reports 0
//! for now (its own figure will come from the allocator shim in `arbiter-torch`). On a
//! simulated GPU nothing allocates real memory, so the worker writes what it *would* hold
//! into the simulated process table ([`arbiter::simulated::record_self`]) and reports the
//! same figure: that is how the supervisor's accounting, enforcement and "memory came back"
//! checks get exercised without a GPU.
//!
//! The figures come from the manifest, the one estimate both sides share. A staged
//! pipeline's stages hold what [`Manifest::estimate`] says for the request's placements;
//! a pipeline without components (the built-in `tiny`) holds its peak in `denoise` and the
//! context plus a fraction of the working set in the other stages. No figure exceeds the
//! lease.

use std::collections::HashMap;

use arbiter::pipeline::{Manifest, Placements, Shape, Stage};

/// What a CUDA context costs on its own (measured on an H100: about 0.6 GiB).
pub const CUDA_CONTEXT_BYTES: u64 = 600 << 20;

/// What each stage of a job of this shape holds on the GPU, at most `lease_bytes` (when
/// the lease is known, i.e. not 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Estimates {
    by_stage: HashMap<Stage, u64>,
    /// Stages not listed (mux, and stages a pipeline lacks) hold the context.
    context: u64,
}

impl Estimates {
    pub fn new(
        manifest: &Manifest,
        shape: &Shape,
        lease_bytes: u64,
        placements: &Placements,
    ) -> Estimates {
        let cap = |bytes: u64| {
            if lease_bytes == 0 {
                bytes
            } else {
                bytes.min(lease_bytes)
            }
        };
        let context = cap(manifest.memory.context.0.max(CUDA_CONTEXT_BYTES));
        let mut by_stage = HashMap::new();
        if manifest.stages.is_empty() {
            // The lease is peak + growth + margin; the margin is headroom, not use.
            let peak = manifest
                .lease_bytes(shape)
                .saturating_sub(manifest.memory.margin.0)
                .max(CUDA_CONTEXT_BYTES);
            let working = peak - CUDA_CONTEXT_BYTES;
            by_stage.insert(Stage::Text, cap(CUDA_CONTEXT_BYTES + working / 8));
            by_stage.insert(Stage::Denoise, cap(peak));
            by_stage.insert(Stage::Decode, cap(CUDA_CONTEXT_BYTES + working / 4));
        } else {
            for estimate in manifest.estimate(shape, placements) {
                by_stage.insert(estimate.stage, cap(estimate.total));
            }
        }
        Estimates { by_stage, context }
    }

    pub fn of(&self, stage: Stage) -> u64 {
        self.by_stage.get(&stage).copied().unwrap_or(self.context)
    }
}

/// Why the simulated process table could not be written.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot record {bytes} bytes in the simulated GPU's process table ({dir_env}/{index_env}): {source}",
    dir_env = arbiter::simulated::DIR_ENV,
    index_env = arbiter::simulated::INDEX_ENV
)]
pub struct RecordError {
    pub bytes: u64,
    pub source: std::io::Error,
}

/// This process's GPU memory as recorded: set at each stage, back to 0 when dropped, so
/// that every way out of a job (success, failure, cancel) clears the record.
#[derive(Debug)]
pub struct Residency {
    simulated: bool,
    recorded: u64,
}

impl Residency {
    /// Reads the environment once: the GPU is simulated when the supervisor said so.
    pub fn from_env() -> Residency {
        Residency {
            simulated: std::env::var_os(arbiter::simulated::DIR_ENV).is_some()
                && std::env::var_os(arbiter::simulated::INDEX_ENV).is_some(),
            recorded: 0,
        }
    }

    /// Records `bytes` as held now (on a simulated GPU; a no-op on a real one).
    pub fn hold(&mut self, bytes: u64) -> Result<(), RecordError> {
        arbiter::simulated::record_self(bytes).map_err(|source| RecordError { bytes, source })?;
        self.recorded = bytes;
        Ok(())
    }

    /// What to report as `vram_bytes`: the recorded figure on a simulated GPU; on a real
    /// one what libtorch's caching allocator has reserved (0 on a CPU).
    pub fn reported(&self) -> u64 {
        if self.simulated {
            self.recorded
        } else {
            arbiter_torch::allocator::stats(0).map_or(0, |s| s.reserved)
        }
    }

    /// Records that nothing is held any more.
    pub fn release(&mut self) -> Result<(), RecordError> {
        self.hold(0)
    }
}

impl Drop for Residency {
    fn drop(&mut self) {
        if self.recorded != 0
            && let Err(error) = self.release()
        {
            tracing::warn!(%error, "could not clear this worker's simulated GPU memory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arbiter::ByteSize;

    #[test]
    fn denoise_is_the_peak_and_no_stage_exceeds_the_lease() {
        let tiny = Manifest::tiny();
        let shape = tiny.shape(0, 0, 0, 0, 0).unwrap();
        let lease = tiny.lease_bytes(&shape);
        let none = Placements::new();
        let estimates = Estimates::new(&tiny, &shape, lease, &none);
        let denoise = estimates.of(Stage::Denoise);
        assert_eq!(Some(ByteSize(denoise)), tiny.memory.peak);
        for stage in Stage::ALL {
            assert!(estimates.of(stage) <= denoise, "{stage}");
            assert!(estimates.of(stage) >= CUDA_CONTEXT_BYTES, "{stage}");
        }
        let tight = Estimates::new(&tiny, &shape, 700 << 20, &none);
        assert!(Stage::ALL.iter().all(|&s| tight.of(s) <= 700 << 20));
        let large = tiny.shape(512, 512, 49, 8, 0).unwrap();
        assert!(Estimates::new(&tiny, &large, 0, &none).of(Stage::Denoise) > denoise);
    }
}
