// Page-locked host memory without libtorch's pinned allocator: anonymous memory backed by
// 2 MiB pages where the kernel allows, filled in (faulted) by the caller's own threads and
// then registered with the CUDA driver (cudaHostRegister). Pinning is what makes block
// streaming copy at the PCIe rate, and the allocator's way (cudaHostAlloc, rounded up to a
// power of two) pinned ~1.5 GB/s on the H100 host: 8-14 s for one large component.
//
// The CUDA runtime's entry points are looked up at run time (dlsym in the process's global
// scope, where libtorch_cuda's libcudart already is), so this builds with no CUDA headers
// and fails cleanly (-1) on a machine without them. The tensor's deleter unregisters and
// unmaps, so the memory lives exactly as long as the last view of it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <dlfcn.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <memory>

namespace {
using Register = int (*)(void*, size_t, unsigned int);
using Unregister = int (*)(void*);

Register host_register() {
  static Register f = reinterpret_cast<Register>(dlsym(RTLD_DEFAULT, "cudaHostRegister"));
  return f;
}
Unregister host_unregister() {
  static Unregister f = reinterpret_cast<Unregister>(dlsym(RTLD_DEFAULT, "cudaHostUnregister"));
  return f;
}
constexpr size_t kHuge = size_t{2} << 20;
}  // namespace

// Maps `bytes` (rounded up to 2 MiB) of anonymous memory with huge-page advice. The caller
// fills it, then calls arbiter_host_pin. Returns null on failure.
extern "C" void* arbiter_host_map(size_t bytes) {
  const size_t len = (bytes + kHuge - 1) / kHuge * kHuge;
  void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return nullptr;
  }
  madvise(p, len, MADV_HUGEPAGE);
  return p;
}

extern "C" void arbiter_host_unmap(void* p, size_t bytes) {
  const size_t len = (bytes + kHuge - 1) / kHuge * kHuge;
  munmap(p, len);
}

// Registers the mapping with CUDA and wraps it in a uint8 tensor of `bytes` that unregisters
// and unmaps when freed. -1: no CUDA runtime in the process; -2: the driver refused (the
// mapping is unmapped); -3: libtorch threw (unregistered and unmapped).
extern "C" int arbiter_host_pin(void* p, size_t bytes, at::Tensor** out) {
  const Register reg = host_register();
  const Unregister unreg = host_unregister();
  if (reg == nullptr || unreg == nullptr) {
    return -1;
  }
  const size_t len = (bytes + kHuge - 1) / kHuge * kHuge;
  // cudaHostRegisterPortable (1): pinned for every CUDA context, not only the current one.
  if (reg(p, len, 1) != 0) {
    munmap(p, len);
    return -2;
  }
  // Once a tensor owns the memory its deleter frees it, also when a later step throws and
  // the tensor is destroyed while unwinding; the flag keeps the catch from freeing twice.
  auto released = std::make_shared<bool>(false);
  try {
    auto deleter = [unreg, len, released](void* q) {
      unreg(q);
      munmap(q, len);
      *released = true;
    };
    auto options = at::TensorOptions().dtype(at::kByte).device(c10::kCPU);
    *out = new at::Tensor(at::from_blob(p, {static_cast<int64_t>(bytes)}, deleter, options));
    return 0;
  } catch (...) {
    if (!*released) {
      unreg(p);
      munmap(p, len);
    }
    return -3;
  }
}

// Host memory that another owner mapped (the weight pool's sealed pages): registered with the
// driver in place, never copied. cudaHostRegisterReadOnly (8) is what lets the driver pin a
// PROT_READ mapping; Portable (1) as above. Returns the CUDA error code (0: registered), or
// -1 without a CUDA runtime in the process.
extern "C" int arbiter_host_register(void* p, size_t len, unsigned int flags) {
  const Register reg = host_register();
  if (reg == nullptr) {
    return -1;
  }
  return reg(p, len, flags);
}

extern "C" int arbiter_host_unregister(void* p) {
  const Unregister unreg = host_unregister();
  return unreg == nullptr ? -1 : unreg(p);
}

// Wraps `bytes` at `p` in a uint8 CPU tensor whose deleter calls release(ctx) when its last
// view goes: the caller's owner of the memory lives exactly as long as the tensors. 0: `out`
// holds the tensor (and release will be called once); -3: libtorch threw (release was not
// called; the caller still owns ctx).
extern "C" int arbiter_host_wrap(void* p, size_t bytes, void (*release)(void*), void* ctx,
                                 at::Tensor** out) {
  auto released = std::make_shared<bool>(false);
  try {
    auto deleter = [release, ctx, released](void*) {
      release(ctx);
      *released = true;
    };
    auto options = at::TensorOptions().dtype(at::kByte).device(c10::kCPU);
    *out = new at::Tensor(at::from_blob(p, {static_cast<int64_t>(bytes)}, deleter, options));
    return 0;
  } catch (...) {
    // Released while unwinding means the owner is gone already: report success's opposite
    // without a second release.
    return *released ? -4 : -3;
  }
}
