//! CUDA streams and events, which tch does not expose: what overlapping copies with compute
//! needs. A [`CopyStream`] carries host-to-device copies beside the compute stream (libtorch's
//! "current" stream); an [`Event`] marks a point on one stream that another can wait for:
//!
//! - compute waits for a copy: record an event on the copy stream after the copy, then
//!   [`Event::block_current`] before using the destination;
//! - a copy waits for compute: record an event on the current stream
//!   ([`Event::record_current`]) after the last kernel that reads a buffer, then
//!   [`CopyStream::wait`] before overwriting it;
//! - a host buffer may be refilled once the copy out of it is done: [`Event::query`] or
//!   [`Event::synchronize`].
//!
//! The calls go through a C++ shim (shim/stream.cpp) written against libtorch's
//! device-generic stream and event API, so no CUDA headers are needed to build it. Without
//! a CUDA device every constructor returns [`StreamError::NoDevice`], and the CPU paths of
//! the loaders never construct one.

use std::ffi::{c_char, c_int, c_void};

use tch::{Device, Tensor};

unsafe extern "C" {
    fn arbiter_shim_last_error(buf: *mut c_char, len: usize) -> usize;
    fn arbiter_empty_pinned(bytes: i64, out: *mut *mut torch_sys::C_tensor) -> c_int;
    fn arbiter_stream_new(device: c_int, high_priority: c_int, out: *mut *mut c_void) -> c_int;
    fn arbiter_stream_free(stream: *mut c_void);
    fn arbiter_stream_copy(
        stream: *mut c_void,
        dst: *mut torch_sys::C_tensor,
        src: *const torch_sys::C_tensor,
    ) -> c_int;
    fn arbiter_stream_synchronize(stream: *mut c_void) -> c_int;
    fn arbiter_stream_wait_event(stream: *mut c_void, event: *mut c_void) -> c_int;
    fn arbiter_event_new(device: c_int, out: *mut *mut c_void) -> c_int;
    fn arbiter_event_free(event: *mut c_void);
    fn arbiter_event_record(event: *mut c_void, stream: *mut c_void) -> c_int;
    fn arbiter_event_block_current(event: *mut c_void) -> c_int;
    fn arbiter_event_synchronize(event: *mut c_void) -> c_int;
    fn arbiter_event_query(event: *mut c_void, done: *mut c_int) -> c_int;
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StreamError {
    #[error("no CUDA device in this process: streams and events exist only on a GPU")]
    NoDevice,
    #[error("streams and events are CUDA's; {0:?} is not a CUDA device")]
    NotCuda(Device),
    #[error("libtorch refused {call}: {message}")]
    Refused { call: &'static str, message: String },
}

/// The CUDA device index of `device`, if this process has that device.
fn cuda_index(device: Device) -> Result<c_int, StreamError> {
    let Device::Cuda(index) = device else {
        return Err(StreamError::NotCuda(device));
    };
    // The CUDA build of libtorch registers its CUDA backend even on a machine without a
    // GPU, so ask tch whether the device is really there before calling into the shim.
    if !tch::Cuda::is_available() {
        return Err(StreamError::NoDevice);
    }
    let index = c_int::try_from(index).map_err(|_| StreamError::NotCuda(device))?;
    if i64::from(index) >= tch::Cuda::device_count() {
        return Err(StreamError::NotCuda(device));
    }
    Ok(index)
}

/// Turns the shim's return code into a result, with the C++ message when it threw.
fn check(call: &'static str, code: c_int) -> Result<(), StreamError> {
    if code == 0 {
        return Ok(());
    }
    let mut buf = [0u8; 512];
    // SAFETY: the shim writes at most `buf.len()` bytes, NUL-terminated, into `buf`.
    unsafe { arbiter_shim_last_error(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Err(StreamError::Refused {
        call,
        message: String::from_utf8_lossy(&buf[..end]).into_owned(),
    })
}

/// A uint8 CPU tensor of `bytes` in page-locked (pinned) memory, which the GPU copies from
/// at full speed (51-54 GB/s on the GPU host, against 6.5 GB/s from pageable memory).
/// libtorch's pinned allocator rounds every block up to a power of two and keeps freed
/// blocks cached for reuse, so ask for powers of two. Needs a CUDA device (`device` names
/// which one the memory is for).
pub fn empty_pinned(bytes: usize, device: Device) -> Result<Tensor, StreamError> {
    cuda_index(device)?;
    let bytes = i64::try_from(bytes).map_err(|_| StreamError::Refused {
        call: "pinned allocation",
        message: format!("{bytes} bytes is too large"),
    })?;
    let mut raw = std::ptr::null_mut();
    // SAFETY: `raw` is a valid out-pointer; the shim catches every C++ exception.
    check("pinned allocation", unsafe {
        arbiter_empty_pinned(bytes, &mut raw)
    })?;
    // SAFETY: on success the shim stored a heap-allocated at::Tensor (torch-sys's
    // `C_tensor`), whose ownership passes to the returned tch tensor, which frees it once.
    Ok(unsafe { Tensor::from_ptr(raw) })
}

/// The host-to-device copy rate in GB/s of a `bytes` tensor, from pinned or (touched)
/// pageable memory, the best of `repeat` copies after a first one: the limit a GPU load is
/// held against (`arbiter-loadbench`, `arbiter-video compare-encoders`).
pub fn host_to_device_rate(
    bytes: usize,
    device: Device,
    pinned: bool,
    repeat: usize,
) -> Result<f64, String> {
    let torch = |e: tch::TchError| e.to_string();
    let index = cuda_index(device).map_err(|e| e.to_string())?;
    let size = i64::try_from(bytes).map_err(|_| format!("{bytes} bytes is too large"))?;
    let mut host = if pinned {
        empty_pinned(bytes, device).map_err(|e| e.to_string())?
    } else {
        Tensor::f_empty([size], (tch::Kind::Uint8, Device::Cpu)).map_err(torch)?
    };
    // Touch every page, so the pageable copy does not count page faults.
    let _filled = host.f_fill_(1).map_err(torch)?;
    let mut dst = Tensor::f_empty([size], (tch::Kind::Uint8, device)).map_err(torch)?;
    dst.f_copy_(&host).map_err(torch)?;
    tch::Cuda::synchronize(i64::from(index));
    let mut best = 0.0f64;
    for _ in 0..repeat.max(1) {
        let started = std::time::Instant::now();
        dst.f_copy_(&host).map_err(torch)?;
        tch::Cuda::synchronize(i64::from(index));
        best = best.max(bytes as f64 / started.elapsed().as_secs_f64() / 1e9);
    }
    Ok(best)
}

/// A CUDA stream from libtorch's pool, for copies that run beside the compute stream.
/// Pool streams do not synchronise with the legacy default stream; order them against
/// other work with [`Event`]s.
#[derive(Debug)]
pub struct CopyStream {
    raw: *mut c_void,
    device: Device,
}

// SAFETY: the handle is a heap-allocated c10::Stream (a device index and a stream id), which
// libtorch lets any thread use; nothing in it is tied to the creating thread.
unsafe impl Send for CopyStream {}

impl CopyStream {
    /// A stream on `device` (a CUDA device). High-priority streams are scheduled ahead of
    /// normal ones, for copies that compute is about to wait for.
    pub fn new(device: Device, high_priority: bool) -> Result<Self, StreamError> {
        let index = cuda_index(device)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the shim catches every C++ exception.
        check("stream creation", unsafe {
            arbiter_stream_new(index, c_int::from(high_priority), &mut raw)
        })?;
        Ok(Self { raw, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Queues `dst.copy_(src)` on this stream and returns without waiting (from pinned host
    /// memory; from pageable memory the driver copies synchronously). libtorch's allocators
    /// are told the tensors are in use on this stream, so dropping a device tensor or a
    /// source from libtorch's pinned allocator early is safe; host memory registered some
    /// other way (`crate::pinned`) must outlive the copy: synchronize first. Reading `dst`
    /// on another stream before the copy ends is not safe either: record an [`Event`] and
    /// wait for it.
    pub fn copy_async(&self, dst: &Tensor, src: &Tensor) -> Result<(), StreamError> {
        // SAFETY: both pointers are live at::Tensor handles owned by tch for the duration of
        // the call; `copy_` mutates the data of `dst`, not the handle, so the shared borrow
        // is the right one (tch's own `copy_` takes `&mut` only by convention).
        check("copy_", unsafe {
            arbiter_stream_copy(self.raw, dst.as_ptr().cast_mut(), src.as_ptr())
        })
    }

    /// Work queued on this stream from now on waits for `event`.
    pub fn wait(&self, event: &Event) -> Result<(), StreamError> {
        // SAFETY: both handles are live; the shim catches every C++ exception.
        check("stream wait", unsafe {
            arbiter_stream_wait_event(self.raw, event.raw)
        })
    }

    /// Blocks the calling thread until everything queued on this stream has completed.
    pub fn synchronize(&self) -> Result<(), StreamError> {
        // SAFETY: the handle is live; the shim catches every C++ exception.
        check("stream synchronize", unsafe {
            arbiter_stream_synchronize(self.raw)
        })
    }
}

impl Drop for CopyStream {
    fn drop(&mut self) {
        // SAFETY: `raw` came from arbiter_stream_new and is freed once. Pool streams outlive
        // the handle, so work still queued on the stream is unaffected.
        unsafe { arbiter_stream_free(self.raw) }
    }
}

/// A CUDA event: a point in one stream's work that the host or another stream can wait for.
/// Until it is first recorded, it counts as completed.
#[derive(Debug)]
pub struct Event {
    raw: *mut c_void,
    device: Device,
}

// SAFETY: the handle is a heap-allocated c10::Event (a cudaEvent_t created on first record),
// which CUDA lets any thread record, query and wait on.
unsafe impl Send for Event {}

impl Event {
    pub fn new(device: Device) -> Result<Self, StreamError> {
        let index = cuda_index(device)?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the shim catches every C++ exception.
        check("event creation", unsafe {
            arbiter_event_new(index, &mut raw)
        })?;
        Ok(Self { raw, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Marks the current end of `stream`'s queue.
    pub fn record(&mut self, stream: &CopyStream) -> Result<(), StreamError> {
        // SAFETY: both handles are live; the shim catches every C++ exception.
        check("event record", unsafe {
            arbiter_event_record(self.raw, stream.raw)
        })
    }

    /// Marks the current end of the compute stream (libtorch's current stream on this
    /// event's device), e.g. after the last kernel that reads a buffer about to be refilled.
    pub fn record_current(&mut self) -> Result<(), StreamError> {
        // SAFETY: the handle is live; a null stream means the current one.
        check("event record", unsafe {
            arbiter_event_record(self.raw, std::ptr::null_mut())
        })
    }

    /// Work queued on the compute stream from now on waits for this event, e.g. for a copy
    /// into weights the next kernel reads.
    pub fn block_current(&self) -> Result<(), StreamError> {
        // SAFETY: the handle is live; the shim catches every C++ exception.
        check("event wait", unsafe {
            arbiter_event_block_current(self.raw)
        })
    }

    /// Blocks the calling thread until the recorded work has completed.
    pub fn synchronize(&self) -> Result<(), StreamError> {
        // SAFETY: the handle is live; the shim catches every C++ exception.
        check("event synchronize", unsafe {
            arbiter_event_synchronize(self.raw)
        })
    }

    /// Whether the recorded work has completed, without blocking.
    pub fn query(&self) -> Result<bool, StreamError> {
        let mut done: c_int = 0;
        // SAFETY: the handle is live and `done` a valid out-pointer.
        check("event query", unsafe {
            arbiter_event_query(self.raw, &mut done)
        })?;
        Ok(done != 0)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: `raw` came from arbiter_event_new and is freed once; destroying a CUDA
        // event with work still pending is allowed (its resources go when the work ends).
        unsafe { arbiter_event_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_gpu_streams_and_events_say_why_not() {
        assert_eq!(
            CopyStream::new(Device::Cpu, false).err(),
            Some(StreamError::NotCuda(Device::Cpu))
        );
        assert_eq!(
            Event::new(Device::Cpu).err(),
            Some(StreamError::NotCuda(Device::Cpu))
        );
        assert!(host_to_device_rate(1 << 20, Device::Cpu, true, 1).is_err());
        if !tch::Cuda::is_available() {
            assert_eq!(
                CopyStream::new(Device::Cuda(0), true).err(),
                Some(StreamError::NoDevice)
            );
            assert_eq!(
                Event::new(Device::Cuda(0)).err(),
                Some(StreamError::NoDevice)
            );
        }
    }

    #[test]
    fn the_shim_turns_libtorch_exceptions_into_errors() {
        if tch::Cuda::is_available() {
            return;
        }
        // Past the Rust-side check, straight into libtorch, which throws without a GPU.
        let mut raw = std::ptr::null_mut();
        // SAFETY: a valid out-pointer; on failure nothing is written to it.
        let code = unsafe { arbiter_stream_new(0, 0, &mut raw) };
        let err = check("stream creation", code).unwrap_err();
        assert!(
            matches!(&err, StreamError::Refused { message, .. } if !message.is_empty()),
            "{err}"
        );
        assert!(raw.is_null());
    }

    #[test]
    fn on_a_gpu_compute_waits_for_a_side_stream_copy() {
        if !tch::Cuda::is_available() {
            return;
        }
        let gpu = Device::Cuda(0);
        let stream = CopyStream::new(gpu, true).unwrap();
        let mut copied = Event::new(gpu).unwrap();
        assert!(
            copied.query().unwrap(),
            "an unrecorded event counts as done"
        );
        let mut host = empty_pinned(4 << 24, gpu)
            .unwrap()
            .view_dtype(tch::Kind::Float);
        host.copy_(&Tensor::arange(1 << 24, (tch::Kind::Float, Device::Cpu)));
        let dst = Tensor::zeros([1 << 24], (tch::Kind::Float, gpu));
        let mut ready = Event::new(gpu).unwrap();
        ready.record_current().unwrap();
        stream.wait(&ready).unwrap();
        stream.copy_async(&dst, &host).unwrap();
        copied.record(&stream).unwrap();
        copied.block_current().unwrap();
        let sum = dst.sum(tch::Kind::Double).double_value(&[]);
        let n = f64::from(1u32 << 24);
        assert_eq!(sum, n * (n - 1.0) / 2.0);
        copied.synchronize().unwrap();
        assert!(copied.query().unwrap());
        stream.synchronize().unwrap();
        assert_eq!(
            CopyStream::new(Device::Cuda(99), false).err(),
            Some(StreamError::NotCuda(Device::Cuda(99)))
        );
    }
}
