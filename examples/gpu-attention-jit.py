"""Which attention backend a fresh process uses, and what its first call costs.

The generated pipelines' text encoder and transformer call scaled_dot_product_attention
(head size 128, bf16; the text encoder with a mask). This times, in one fresh process, the
first and the steady-state call of each shape with PyTorch's default choice or one backend
forced, and records which backend the default picks (torch._fused_sdp_choice). Run it in
several processes, varying the environment and the working directory, to see whether the
first call's cost is a per-process compile and what its on-disk cache is keyed on.

    python3 examples/gpu-attention-jit.py BACKEND OUT.json   # default|cudnn|efficient|flash|math
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "math": SDPBackend.MATH,
}


def timed(fn, repeat=1):
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / repeat


def main():
    backend, out = sys.argv[1], sys.argv[2]
    torch.zeros(1, device="cuda")
    bf, d = torch.bfloat16, "cuda"
    # Text encoder: 2 prompts (guidance), 256 tokens, 21 heads, padding masked.
    tq = torch.randn(2, 21, 256, 128, device=d, dtype=bf)
    mask = torch.zeros(2, 1, 1, 256, device=d, dtype=bf)
    mask[:, :, :, 200:] = float("-inf")
    # Transformer: 6144 latent tokens, 23 heads; cross-attention to 600 context tokens.
    xq = torch.randn(2, 23, 6144, 128, device=d, dtype=bf)
    cq = torch.randn(2, 23, 600, 128, device=d, dtype=bf)
    shapes = [
        ("text, masked", lambda: F.scaled_dot_product_attention(tq, tq, tq, attn_mask=mask), (tq, tq, tq, mask)),
        ("self-attention", lambda: F.scaled_dot_product_attention(xq, xq, xq), (xq, xq, xq, None)),
        ("cross-attention", lambda: F.scaled_dot_product_attention(xq, cq, cq), (xq, cq, cq, None)),
    ]
    report = {"backend": backend, "torch": torch.__version__, "cudnn": torch.backends.cudnn.version(), "calls": []}
    for name, fn, (q, k, v, m) in shapes:
        chosen = None
        try:
            chosen = SDPBackend(torch._fused_sdp_choice(q, k, v, attn_mask=m)).name
        except Exception as error:  # the private helper may move between releases
            chosen = f"unknown ({error})"
        try:
            if backend == "default":
                first, steady = timed(fn), timed(fn, 10)
            else:
                with sdpa_kernel([BACKENDS[backend]]):
                    first, steady = timed(fn), timed(fn, 10)
            report["calls"].append({"shape": name, "default_choice": chosen, "first_ms": first, "steady_ms": steady})
        except Exception as error:
            report["calls"].append({"shape": name, "default_choice": chosen, "error": str(error)[:200]})
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
