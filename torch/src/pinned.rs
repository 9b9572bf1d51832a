//! Page-locked host buffers made by registering ordinary memory with the CUDA driver,
//! rather than through libtorch's pinned allocator.
//!
//! Streamed components keep their weights in pinned host memory. libtorch's allocator
//! (`cudaHostAlloc`, rounded up to a power of two) pinned ~1.5 GB/s on the H100 host: a
//! 13.9 GB text encoder spent 9 s just being pinned. Here the memory is mapped with
//! huge-page advice, filled by the loader's parallel reads (which fault the pages in from
//! many threads), and only then registered (`cudaHostRegister`), which locks pages that
//! already exist. The shim (shim/pinned.cpp) finds the CUDA runtime at run time, so nothing
//! here needs CUDA headers, and without a GPU [`Mapping::pin`] says so instead of failing.

use std::ffi::{c_int, c_void};

use tch::{Kind, Tensor};

unsafe extern "C" {
    fn arbiter_host_map(bytes: usize) -> *mut c_void;
    fn arbiter_host_unmap(p: *mut c_void, bytes: usize);
    fn arbiter_host_pin(p: *mut c_void, bytes: usize, out: *mut *mut torch_sys::C_tensor) -> c_int;
}

/// Why a mapping could not be pinned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    #[error("no CUDA runtime in this process: host memory cannot be pinned")]
    NoRuntime,
    #[error("the CUDA driver refused to register {0} bytes of host memory")]
    Refused(usize),
    #[error("libtorch could not wrap the pinned memory in a tensor")]
    Wrap,
}

/// Anonymous host memory, not yet pinned; unmapped on drop unless [`Mapping::pin`] took it.
pub struct Mapping {
    ptr: *mut c_void,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes (at least 1); `None` when the kernel refuses.
    pub fn new(len: usize) -> Option<Mapping> {
        let len = len.max(1);
        // SAFETY: asks for fresh anonymous memory; null means failure.
        let ptr = unsafe { arbiter_host_map(len) };
        (!ptr.is_null()).then_some(Mapping { ptr, len })
    }

    /// A uint8 CPU tensor over the mapping, for the loader to fill.
    ///
    /// # Safety
    /// The tensor does not own the memory: the caller must drop it (and every view of it)
    /// before pinning or dropping the mapping.
    pub unsafe fn view(&self) -> Tensor {
        // SAFETY: the mapping is `len` readable and writable bytes, which the caller keeps
        // alive for the view's life (the function's contract); strides [1] over one dimension.
        unsafe {
            Tensor::from_blob(
                self.ptr as *const u8,
                &[self.len as i64],
                &[1],
                Kind::Uint8,
                tch::Device::Cpu,
            )
        }
    }

    /// Registers the memory with the CUDA driver and hands it to a tensor that unregisters
    /// and unmaps it when its last view is dropped.
    pub fn pin(self) -> Result<Tensor, PinError> {
        let (ptr, len) = (self.ptr, self.len);
        let mut raw = std::ptr::null_mut();
        // SAFETY: `ptr`/`len` came from arbiter_host_map; on 0 the shim stored an owned
        // at::Tensor in `raw`; on -2/-3 it has unmapped the memory itself; on -1 it has not.
        let code = unsafe { arbiter_host_pin(ptr, len, &mut raw) };
        std::mem::forget(self);
        match code {
            // SAFETY: ownership of the heap-allocated at::Tensor passes to the tch tensor.
            0 => Ok(unsafe { Tensor::from_ptr(raw) }),
            -1 => {
                // SAFETY: not taken by the shim; unmapped exactly once here.
                unsafe { arbiter_host_unmap(ptr, len) };
                Err(PinError::NoRuntime)
            }
            -2 => Err(PinError::Refused(len)),
            _ => Err(PinError::Wrap),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: a mapping not handed to `pin` is still ours, and is unmapped once.
        unsafe { arbiter_host_unmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapping_can_be_filled_and_without_cuda_pinning_says_so() {
        let mapping = Mapping::new(3 << 20).expect("a mapping");
        {
            // SAFETY: the view is dropped at the end of this block, before the mapping.
            let mut view = unsafe { mapping.view() };
            let _ = view.fill_(7);
            assert_eq!(view.int64_value(&[(3 << 20) - 1]), 7);
        }
        if !tch::Cuda::is_available() {
            // The pip wheel ships the CUDA runtime, which then finds no driver.
            let error = mapping.pin().unwrap_err();
            assert!(
                matches!(error, PinError::NoRuntime | PinError::Refused(_)),
                "{error}"
            );
        }
    }
}
