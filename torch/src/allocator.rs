//! libtorch's caching allocator, which tch does not expose: empty its cache, read its
//! statistics. A model process calls [`empty_cache`] after dropping a stage's tensors,
//! because dropped tensors stay reserved in the cache (on an H100, a dropped 1 GiB tensor
//! left 1058 MiB reserved until the cache was emptied), and reads [`stats`] to size its
//! lease from what it really holds.
//!
//! The calls go through a small C++ shim (shim/allocator.cpp) built against the same
//! libtorch headers as tch; without a CUDA device they return [`AllocatorError::NoAccelerator`].

use std::os::raw::c_int;

unsafe extern "C" {
    fn arbiter_empty_cache() -> c_int;
    fn arbiter_memory_stats(device: c_int, out: *mut i64) -> c_int;
    fn arbiter_reset_peak(device: c_int) -> c_int;
}

/// The allocator's view of one device, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live tensors.
    pub allocated: u64,
    pub max_allocated: u64,
    /// Held from the driver by the cache (allocated plus cached free blocks).
    pub reserved: u64,
    pub max_reserved: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocatorError {
    #[error("no accelerator: libtorch's caching allocator exists only on a GPU")]
    NoAccelerator,
    #[error(
        "libtorch refused the allocator call: no CUDA allocation yet in this process, or no such device"
    )]
    Refused,
}

/// The CUDA build of libtorch reports CUDA as its accelerator even on a machine without a
/// GPU, so ask tch whether a device is really there before calling into the shim.
fn gpu() -> Result<(), AllocatorError> {
    if tch::Cuda::is_available() {
        Ok(())
    } else {
        Err(AllocatorError::NoAccelerator)
    }
}

fn check(code: c_int) -> Result<(), AllocatorError> {
    match code {
        0 => Ok(()),
        -1 => Err(AllocatorError::NoAccelerator),
        _ => Err(AllocatorError::Refused),
    }
}

/// Returns the cache's free blocks to the driver.
pub fn empty_cache() -> Result<(), AllocatorError> {
    gpu()?;
    // SAFETY: a C function with no arguments; it catches every C++ exception.
    check(unsafe { arbiter_empty_cache() })
}

/// The allocator's statistics for CUDA device `device`.
pub fn stats(device: i32) -> Result<MemoryStats, AllocatorError> {
    gpu()?;
    let mut out = [0i64; 4];
    // SAFETY: `out` has the four slots the shim writes; it catches every C++ exception.
    check(unsafe { arbiter_memory_stats(device, out.as_mut_ptr()) })?;
    let bytes = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(MemoryStats {
        allocated: bytes(out[0]),
        max_allocated: bytes(out[1]),
        reserved: bytes(out[2]),
        max_reserved: bytes(out[3]),
    })
}

/// Starts the peak figures afresh, so each stage's peak can be measured on its own.
pub fn reset_peak(device: i32) -> Result<(), AllocatorError> {
    gpu()?;
    // SAFETY: as above.
    check(unsafe { arbiter_reset_peak(device) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_a_gpu_dropping_and_emptying_returns_the_memory_and_elsewhere_says_why_not() {
        if !tch::Cuda::is_available() {
            assert_eq!(stats(0), Err(AllocatorError::NoAccelerator));
            assert_eq!(empty_cache(), Err(AllocatorError::NoAccelerator));
            return;
        }
        // Before the process's first CUDA allocation the allocator has no statistics yet.
        assert_eq!(stats(0), Err(AllocatorError::Refused));
        let warm = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cuda(0)));
        let before = stats(0).unwrap();
        let tensor =
            tch::Tensor::zeros([256, 1024, 1024], (tch::Kind::Float, tch::Device::Cuda(0)));
        let held = stats(0).unwrap();
        assert!(held.allocated >= before.allocated + (1 << 30));
        drop(tensor);
        assert!(
            stats(0).unwrap().reserved >= 1 << 30,
            "a dropped tensor stays cached"
        );
        empty_cache().unwrap();
        assert!(stats(0).unwrap().reserved < 1 << 30);
        assert!(
            stats(0).unwrap().max_allocated >= 1 << 30,
            "the peak remembers the tensor"
        );
        reset_peak(0).unwrap();
        assert!(stats(0).unwrap().max_allocated < 1 << 30);
        drop(warm);
    }
}
