//! Loading weights from host memory that another process filled: the weight pool's sealed,
//! read-only mapping of a file (`arbiter::pool`), registered with the CUDA driver in place.
//!
//! Why: a worker per job otherwise reads every component from the page cache and pins it
//! again (streamed components) in each new process. With the pool, the bytes are already in
//! page-locked shared memory; what is left per process is registering those pages with the
//! driver (`cudaHostRegister`, no copy: measured against the copy rate by
//! `arbiter-loadbench --pool`) and one host-to-device copy at the pinned rate.
//!
//! - onto a GPU: one device buffer, filled by one copy from the registered mapping;
//! - onto the CPU (the `cpu` placement, and a streamed component's host-side blocks): views
//!   of the mapping itself, no copy at all. They are read-only memory: a model only reads its
//!   weights, and a write would fault rather than corrupt what the next worker loads.
//!
//! Every tensor made here keeps its [`HostBytes`] alive (through the tensor's deleter), so
//! the mapping and its registration end with the last view of them.

use std::ffi::{c_int, c_void};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tch::{Device, Tensor};

use crate::load::{Loaded, allocate, finish};
use crate::readers::ReadTime;
use crate::safetensors::header_of_bytes;
use crate::weights_error::WeightsError;

unsafe extern "C" {
    fn arbiter_host_register(p: *mut c_void, len: usize, flags: u32) -> c_int;
    fn arbiter_host_unregister(p: *mut c_void) -> c_int;
    fn arbiter_host_wrap(
        p: *mut c_void,
        bytes: usize,
        release: extern "C" fn(*mut c_void),
        ctx: *mut c_void,
        out: *mut *mut torch_sys::C_tensor,
    ) -> c_int;
}

/// cudaHostRegisterPortable | cudaHostRegisterReadOnly: pinned for every context, and
/// allowed on a mapping this process may only read.
const REGISTER_FLAGS: u32 = 1 | 8;

/// Memory somebody else owns and keeps mapped: what [`HostBytes`] wraps.
pub trait Region: Send + Sync + 'static {
    /// The file's bytes.
    fn bytes(&self) -> &[u8];
    /// The whole mapping (page-aligned start, length a multiple of its page size), which is
    /// what the driver registers.
    fn mapping(&self) -> (*const u8, usize);
}

/// The weight pool's mapping of a file: page-aligned, a whole number of its pages.
impl Region for arbiter::pool::Shared {
    fn bytes(&self) -> &[u8] {
        arbiter::pool::Shared::bytes(self)
    }
    fn mapping(&self) -> (*const u8, usize) {
        (self.as_ptr(), self.mapped_len())
    }
}

/// Why host memory is not registered with the driver (its loads then copy pageable).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    #[error("not registered: the bytes are used on the host")]
    NotAsked,
    #[error("no CUDA runtime in this process")]
    NoRuntime,
    #[error(
        "the CUDA driver refused to register {len} bytes of read-only host memory (error {code})"
    )]
    Refused { len: usize, code: i32 },
}

/// A [`Region`], registered with the CUDA driver for its life when asked.
pub struct HostBytes {
    region: Box<dyn Region>,
    registered: Result<f64, RegisterError>,
}

impl HostBytes {
    /// Wraps `region` without registering it: for CPU loads, which need no pinning.
    pub fn unregistered(region: impl Region) -> HostBytes {
        HostBytes {
            region: Box::new(region),
            registered: Err(RegisterError::NotAsked),
        }
    }

    /// Wraps `region` and registers its pages with the CUDA driver, timing it. A refusal is
    /// kept (see [`HostBytes::registration`]), not returned: the bytes are still loadable.
    pub fn registered(region: impl Region) -> HostBytes {
        let (ptr, len) = region.mapping();
        let started = Instant::now();
        // SAFETY: `ptr`/`len` is a live mapping owned by `region`, which this value keeps
        // until Drop unregisters it; registration neither reads nor writes the bytes.
        let code = unsafe { arbiter_host_register(ptr.cast_mut().cast(), len, REGISTER_FLAGS) };
        let registered = match code {
            0 => Ok(started.elapsed().as_secs_f64()),
            -1 => Err(RegisterError::NoRuntime),
            code => Err(RegisterError::Refused { len, code }),
        };
        HostBytes {
            region: Box::new(region),
            registered,
        }
    }

    /// Seconds the registration took, or why there is none.
    pub fn registration(&self) -> Result<f64, RegisterError> {
        self.registered.clone()
    }

    pub fn is_registered(&self) -> bool {
        self.registered.is_ok()
    }

    pub fn bytes(&self) -> &[u8] {
        self.region.bytes()
    }
}

impl Drop for HostBytes {
    fn drop(&mut self) {
        if self.registered.is_ok() {
            let (ptr, _) = self.region.mapping();
            // SAFETY: registered in `registered`, unregistered once, before the region (and
            // its mapping) drops after this.
            unsafe { arbiter_host_unregister(ptr.cast_mut().cast()) };
        }
    }
}

extern "C" fn release(ctx: *mut c_void) {
    // SAFETY: `ctx` is the Box<Arc<HostBytes>> leaked in `wrap`, released once by the shim.
    drop(unsafe { Box::from_raw(ctx.cast::<Arc<HostBytes>>()) });
}

/// `len` bytes of `host` from `offset` as a uint8 CPU tensor that keeps `host` alive.
fn wrap(
    path: &Path,
    host: &Arc<HostBytes>,
    offset: usize,
    len: usize,
) -> Result<Tensor, WeightsError> {
    let bytes = host.bytes();
    let Some(range) = bytes.get(offset..offset + len) else {
        return Err(WeightsError::Options(format!(
            "{}: {len} bytes from {offset} are past the pooled copy's {} bytes",
            path.display(),
            bytes.len()
        )));
    };
    let ctx = Box::into_raw(Box::new(Arc::clone(host)));
    let mut raw = std::ptr::null_mut();
    // SAFETY: the range lies inside the mapping that `ctx` keeps alive until the shim calls
    // `release`, which it does exactly once when the tensor's storage is freed.
    let code = unsafe {
        arbiter_host_wrap(
            range.as_ptr().cast_mut().cast(),
            len,
            release,
            ctx.cast(),
            &mut raw,
        )
    };
    match code {
        // SAFETY: on 0 the shim stored an owned at::Tensor in `raw`.
        0 => Ok(unsafe { Tensor::from_ptr(raw) }),
        code => {
            if code == -3 {
                // SAFETY: not released by the shim: ours to drop, once.
                drop(unsafe { Box::from_raw(ctx) });
            }
            Err(WeightsError::Options(format!(
                "{}: libtorch could not wrap the pooled copy in a tensor",
                path.display()
            )))
        }
    }
}

/// Loads every tensor of the safetensors file `path`, whose bytes `host` holds, onto
/// `device`: views of `host` itself on the CPU, one copy into one buffer on a GPU (at the
/// pinned rate when `host` is registered). The header is checked as a file's would be.
pub fn load_host(
    path: &Path,
    host: &Arc<HostBytes>,
    device: Device,
) -> Result<Loaded, WeightsError> {
    let start = Instant::now();
    let header = header_of_bytes(path, host.bytes())?;
    let (data_start, data_len) = (header.data_start as usize, header.data_len() as usize);
    let read = ReadTime {
        spent: std::time::Duration::ZERO,
        threads: 0,
    };
    // A view needs at least one byte.
    if data_len == 0 {
        let empty = allocate(path, &header, Device::Cpu)?;
        return finish(path, &header, &empty, start, read, false);
    }
    let view = wrap(path, host, data_start, data_len)?;
    match device {
        Device::Cpu => finish(path, &header, &view, start, read, host.is_registered()),
        Device::Cuda(_) => {
            let mut buffer = allocate(path, &header, device)?;
            buffer
                .f_copy_(&view)
                .map_err(|source| WeightsError::Torch {
                    path: path.to_path_buf(),
                    action: "copying the pooled copy to the GPU",
                    source,
                })?;
            drop(view);
            finish(path, &header, &buffer, start, read, host.is_registered())
        }
        other => Err(WeightsError::Options(format!(
            "loading onto {other:?} is not supported (CPU or CUDA only)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tch::Kind;

    use super::*;
    use crate::safetensors::write;

    /// Plain heap bytes: all the loader needs is bytes that someone else owns (the pool's
    /// own mapping is tested with the pool, in the whole-system tests).
    struct Heap {
        bytes: Vec<u8>,
        dropped: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Region for Heap {
        fn bytes(&self) -> &[u8] {
            &self.bytes
        }
        fn mapping(&self) -> (*const u8, usize) {
            (self.bytes.as_ptr(), self.bytes.len())
        }
    }

    impl Drop for Heap {
        fn drop(&mut self) {
            self.dropped
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn tensors_from_host_bytes_equal_a_file_load_and_keep_the_bytes_alive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let a = Tensor::randn([33, 7], (Kind::BFloat16, Device::Cpu));
        let b = Tensor::arange(9, (Kind::Int, Device::Cpu)) * -3;
        write(&path, &[("a", &a), ("b", &b)], &BTreeMap::new()).unwrap();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let host = Arc::new(HostBytes::unregistered(Heap {
            bytes: std::fs::read(&path).unwrap(),
            dropped: Arc::clone(&dropped),
        }));
        let from_file = crate::load::load(&path, Device::Cpu, &Default::default()).unwrap();
        let from_host = load_host(&path, &host, Device::Cpu).unwrap();
        drop(host);
        assert_eq!(from_host.stats.bytes, from_file.stats.bytes);
        assert!(!from_host.stats.pinned);
        for ((name, x), (other, y)) in from_file.tensors.iter().zip(&from_host.tensors) {
            assert_eq!(name, other);
            assert!(x.equal(y), "{name}");
        }
        assert!(
            !dropped.load(std::sync::atomic::Ordering::SeqCst),
            "views hold the bytes"
        );
        drop(from_host);
        assert!(
            dropped.load(std::sync::atomic::Ordering::SeqCst),
            "and only they do"
        );
    }

    #[test]
    fn a_bad_header_in_host_bytes_is_named_like_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let host = Arc::new(HostBytes::unregistered(Heap {
            bytes: vec![200, 0, 0, 0, 0, 0, 0, 0, b'{', b'}'],
            dropped: Default::default(),
        }));
        let error = load_host(&path, &host, Device::Cpu).unwrap_err();
        assert!(
            matches!(error, WeightsError::HeaderLength { .. }),
            "{error}"
        );
    }

    #[test]
    fn without_a_gpu_registration_says_why() {
        if tch::Cuda::is_available() {
            return;
        }
        let host = HostBytes::registered(Heap {
            bytes: vec![0; 4096],
            dropped: Default::default(),
        });
        assert!(host.registration().is_err());
    }
}
