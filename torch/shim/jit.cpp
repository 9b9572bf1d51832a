// What tch does not expose about the TorchScript executor: turning its graph optimizer off.
// The profiling executor re-optimises a graph after its first runs (fusion, specialisation),
// which for a component with dozens of unrolled blocks costs seconds per fresh process and
// gains nothing for large matmuls; a per-job worker pays that cost on every job. C entry
// point only; no C++ exception crosses it.
#include <torch/csrc/jit/python/update_graph_executor_opt.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

extern "C" int arbiter_jit_plain_executor() {
  try {
    torch::jit::setGraphExecutorOptimize(false);
    torch::jit::getProfilingMode() = false;
    return 0;
  } catch (...) {
    return -2;
  }
}
