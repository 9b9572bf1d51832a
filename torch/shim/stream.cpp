// What tch does not expose about CUDA streams and events: a side stream for host-to-device
// copies, events to order it against the compute stream. Written against libtorch's
// device-generic API (c10::Stream, c10::Event, c10::StreamGuard, VirtualGuardImpl), which
// dispatches to the CUDA backend registered by libtorch_cuda at run time, so building it
// needs no CUDA toolkit headers.
//
// C entry points only; no C++ exception may cross them: every call is wrapped and failures
// become return codes (-2: libtorch threw; the message is kept per thread for
// arbiter_shim_last_error). Tensors arrive as torch-sys's `tensor`, an `at::Tensor*`.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

namespace {
thread_local std::string last_error;

template <typename F>
int guarded(F body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -2;
  } catch (...) {
    last_error = "unknown C++ exception";
    return -2;
  }
}

c10::Device cuda(int device) {
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(device));
}

c10::Stream current_stream(c10::Device device) {
  return c10::impl::VirtualGuardImpl(device.type()).getStream(device);
}

// An event plus the device it belongs to: c10::Event learns its device only when first
// recorded, but "make the current stream wait" must know whose current stream.
struct Event {
  c10::Event event;
  c10::Device device;
};
}  // namespace

// Copies the message of this thread's last failed call into buf (NUL-terminated, cut to
// len); returns the message's full length.
extern "C" size_t arbiter_shim_last_error(char* buf, size_t len) {
  if (buf != nullptr && len > 0) {
    const size_t n = std::min(len - 1, last_error.size());
    std::memcpy(buf, last_error.data(), n);
    buf[n] = '\0';
  }
  return last_error.size();
}

// A new uint8 CPU tensor of `bytes` in page-locked memory from libtorch's pinned host
// allocator (which rounds each block up to a power of two and caches freed blocks), handed
// over as an at::Tensor* that tch takes ownership of.
extern "C" int arbiter_empty_pinned(int64_t bytes, at::Tensor** out) {
  return guarded([&] {
    auto options = at::TensorOptions().dtype(at::kByte).device(c10::kCPU).pinned_memory(true);
    *out = new at::Tensor(at::empty({bytes}, options));
  });
}

extern "C" int arbiter_stream_new(int device, int high_priority, void** out) {
  return guarded([&] {
    const auto dev = cuda(device);
    auto stream = c10::impl::VirtualGuardImpl(dev.type())
                      .getStreamFromGlobalPool(dev, high_priority != 0);
    *out = new c10::Stream(stream);
  });
}

extern "C" void arbiter_stream_free(void* stream) {
  delete static_cast<c10::Stream*>(stream);
}

// dst.copy_(src, non_blocking=true) issued on `stream`. The caching allocator is told that
// the destination (and a device source) is in use on that stream, so freeing either before
// the copy ends cannot hand its memory to other work early. A host source from libtorch's
// pinned allocator is kept alive by that allocator, which records the copy itself; host
// memory registered by other means (shim/pinned.cpp) must be kept alive by the caller.
extern "C" int arbiter_stream_copy(void* stream, at::Tensor* dst, const at::Tensor* src) {
  return guarded([&] {
    const auto& s = *static_cast<c10::Stream*>(stream);
    c10::StreamGuard guard(s);
    dst->copy_(*src, /*non_blocking=*/true);
    const c10::impl::VirtualGuardImpl impl(s.device_type());
    if (dst->device() == s.device()) {
      impl.recordDataPtrOnStream(dst->storage().data_ptr(), s);
    }
    if (src->device() == s.device()) {
      impl.recordDataPtrOnStream(src->storage().data_ptr(), s);
    }
  });
}

extern "C" int arbiter_stream_synchronize(void* stream) {
  return guarded([&] { static_cast<c10::Stream*>(stream)->synchronize(); });
}

// Work queued on `stream` from now on waits until `event` has completed.
extern "C" int arbiter_stream_wait_event(void* stream, void* event) {
  return guarded([&] {
    static_cast<Event*>(event)->event.block(*static_cast<c10::Stream*>(stream));
  });
}

extern "C" int arbiter_event_new(int device, void** out) {
  return guarded([&] {
    const auto dev = cuda(device);
    *out = new Event{c10::Event(dev.type()), dev};
  });
}

extern "C" void arbiter_event_free(void* event) {
  delete static_cast<Event*>(event);
}

// Records `event` on `stream`, or on its device's current stream when `stream` is null.
extern "C" int arbiter_event_record(void* event, void* stream) {
  return guarded([&] {
    auto* e = static_cast<Event*>(event);
    if (stream == nullptr) {
      e->event.record(current_stream(e->device));
    } else {
      e->event.record(*static_cast<c10::Stream*>(stream));
    }
  });
}

// Work queued on the event's device's current stream from now on waits for `event`.
extern "C" int arbiter_event_block_current(void* event) {
  return guarded([&] {
    auto* e = static_cast<Event*>(event);
    e->event.block(current_stream(e->device));
  });
}

extern "C" int arbiter_event_synchronize(void* event) {
  return guarded([&] { static_cast<Event*>(event)->event.synchronize(); });
}

// *done: 1 when the work the event captured has completed (or it was never recorded).
extern "C" int arbiter_event_query(void* event, int* done) {
  return guarded([&] { *done = static_cast<Event*>(event)->event.query() ? 1 : 0; });
}
