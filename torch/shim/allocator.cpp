// What tch does not expose about libtorch's caching allocator: emptying its cache and
// reading its statistics. C entry points only; no C++ exception may cross them, so every
// call is wrapped and failures become return codes (-1: no accelerator or not initialised,
// -2: libtorch threw).
#include <ATen/DeviceAccelerator.h>

#include <cstdint>

namespace {
template <typename F>
int guarded(F body) {
  try {
    if (!at::accelerator::getAccelerator(false).has_value()) {
      return -1;
    }
    body();
    return 0;
  } catch (...) {
    return -2;
  }
}
}  // namespace

extern "C" int arbiter_empty_cache() {
  return guarded([] { at::accelerator::emptyCache(); });
}

// out: allocated current, allocated peak, reserved current, reserved peak (bytes).
extern "C" int arbiter_memory_stats(int device, int64_t* out) {
  return guarded([&] {
    auto stats = at::accelerator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    const auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    out[0] = stats.allocated_bytes[all].current;
    out[1] = stats.allocated_bytes[all].peak;
    out[2] = stats.reserved_bytes[all].current;
    out[3] = stats.reserved_bytes[all].peak;
  });
}

extern "C" int arbiter_reset_peak(int device) {
  return guarded([&] { at::accelerator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); });
}
