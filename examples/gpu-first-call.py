"""What a fresh process pays on its first CUDA calls, op by op, on the GPU host.

A worker process per job runs every kernel for the first time: with CUDA's lazy module
loading each new kernel loads its module then, cuBLAS creates its handle and workspace on
the first matmul, and the caching allocator asks the driver for every block. This times the
first and the second call of the ops the generated pipelines use (bf16, sizes like a text
encoder's), in one fresh process, after the CUDA context exists. Writes JSON to argv[1].

    python3 examples/gpu-first-call.py OUT.json
"""

import json
import sys
import time

import torch
import torch.nn.functional as F


def timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def main():
    out = sys.argv[1]
    t0 = time.perf_counter()
    torch.zeros(1, device="cuda")
    torch.cuda.synchronize()
    report = {"context_ms": (time.perf_counter() - t0) * 1e3, "ops": []}
    bf = torch.bfloat16
    d = "cuda"
    x = torch.randn(2, 256, 2048, device=d, dtype=bf)
    w = torch.randn(2048, 2048, device=d, dtype=bf)
    q = torch.randn(2, 16, 256, 128, device=d, dtype=bf)
    v = torch.randn(1, 32, 4, 16, 16, device=d, dtype=bf)
    k3 = torch.randn(32, 32, 3, 3, 3, device=d, dtype=bf)
    ids = torch.randint(0, 256, (2, 256), device=d)
    table = torch.randn(256, 2048, device=d, dtype=bf)
    ops = [
        ("linear (cuBLAS)", lambda: F.linear(x, w)),
        ("rms norm (rsqrt, mean, mul)", lambda: x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(bf)),
        ("silu", lambda: F.silu(x)),
        ("gelu", lambda: F.gelu(x, approximate="tanh")),
        ("scaled_dot_product_attention", lambda: F.scaled_dot_product_attention(q, q, q)),
        ("embedding", lambda: F.embedding(ids, table)),
        ("conv3d (cuDNN)", lambda: F.conv3d(v, k3, padding=1)),
        ("interpolate", lambda: F.interpolate(v.float(), scale_factor=2.0, mode="nearest")),
        ("cat", lambda: torch.cat([x, x], 1)),
        ("allocate 4 GiB", lambda: torch.empty(4 << 30, dtype=torch.uint8, device=d)),
    ]
    for name, fn in ops:
        first = timed(fn)
        second = timed(fn)
        report["ops"].append({"op": name, "first_ms": first, "second_ms": second})
    report["first_total_ms"] = sum(o["first_ms"] for o in report["ops"])
    report["second_total_ms"] = sum(o["second_ms"] for o in report["ops"])
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
