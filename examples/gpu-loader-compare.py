"""Safetensors loaders side by side on one file, warm and cold, against the limits measured
in the same run (issue #16): `safetensors.torch.load_file(device="cuda")`, fastsafetensors'
no-GDS path (`SafeTensorsFileLoader(..., nogds=True)`; by default it reads with O_DIRECT on a
local file system, so it is also run with FASTSAFETENSORS_ODIRECT=0, buffered, which is the
only way it can use the page cache) and Arbiter's loader (`arbiter-loadbench --once`).

    python3 examples/gpu-loader-compare.py run --out DIR [--file F] [--size-gib 16] ...

(examples/gpu-loader-compare.sh runs it on the GPU host.) Steps:
1. The file: `arbiter-loadbench --make` writes SIZE GiB of bf16 tensors of TENSOR_MIB each
   (kept and reused when one of that shape is there).
2. Reference checksums of a few tensors (first, last, some between), of the file's bytes, on
   the CPU.
3. Limits: the file dropped from the page cache (posix_fadvise DONTNEED, as
   `arbiter-video prewarm --evict` does: no root, no system setting), then `arbiter-loadbench
   FILE` (its first read of the file is the cold buffered disk rate, 16 threads; then the
   page-cache rate, 8 and 16 threads, and the pinned host-to-device copy rate), and a cold
   O_DIRECT read (16 threads, 16 MiB pieces) here.
4. Each loader, warm (file in the page cache) then cold (file dropped before each run),
   REPEAT times, interleaved, each run in a fresh process that makes its CUDA context before
   the clock starts. The time is from the call to every tensor on the device (synchronized).
   Each run checks the tensor count, dtypes and shapes against the header and the checksums
   (same formula as arbiter-loadbench's `checksum`, computed on the device) against step 2;
   the page-cache residency of the file (mincore) is recorded before each run.
5. DIR/results.json (written after every run) and DIR/results.md: GB/s (10^9 bytes of the
   data section per second) per run, the best and median, and the best as a ratio to its
   limit: warm to min(page-cache rate, pinned copy rate), cold to the best cold disk read.

`--device cpu` is a dry run without a GPU (no pinned copy; loads to host memory), to check
the script end to end on a small file; its figures mean nothing.
"""

import argparse
import ctypes
import json
import mmap
import os
import statistics
import struct
import subprocess
import sys
import threading
import time

GIB = 1 << 30
PIECE = 16 << 20  # checksum pieces, in bytes
MOD = 65521

LOADERS = ["safetensors", "fastsafetensors", "fastsafetensors-buffered", "arbiter"]


# ----- the file -----------------------------------------------------------------------------


def read_header(path):
    """(data_start, {name: (dtype, shape, begin, end)}) in data order."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    entries = sorted(
        ((k, v["dtype"], v["shape"], *v["data_offsets"]) for k, v in header.items()),
        key=lambda e: e[3],
    )
    return 8 + n, entries


def verify_names(entries, count):
    """`count` tensors spread over the file: the first, the last and some between."""
    if count <= 0 or not entries:
        return []
    if count == 1:
        return [entries[0][0]]
    picks = sorted({round(i * (len(entries) - 1) / (count - 1)) for i in range(count)})
    return [entries[i][0] for i in picks]


def checksum(t):
    """Sum of b_i * (i % 65521 + 1) over the tensor's bytes b_i, exact in int64, on the
    tensor's device: what arbiter-loadbench's `checksum` computes."""
    import torch

    b = t.contiguous().reshape(-1).view(torch.uint8)
    total = 0
    for s in range(0, b.numel(), PIECE):
        e = min(b.numel(), s + PIECE)
        w = torch.arange(s, e, dtype=torch.int64, device=b.device).remainder_(MOD).add_(1)
        total += int((b[s:e].to(torch.int64) * w).sum())
    return total


def reference_checksums(path, names):
    """On the CPU, from the file's bytes: apart from every loader, and no CUDA context held by
    this process while the runs go."""
    import torch

    data_start, entries = read_header(path)
    by_name = {e[0]: e for e in entries}
    sums = {}
    fd = os.open(path, os.O_RDONLY)
    try:
        for name in names:
            _, _, _, begin, end = by_name[name]
            buf = bytearray(end - begin)
            got = os.preadv(fd, [buf], data_start + begin)
            assert got == len(buf), f"short read of {name}"
            t = torch.frombuffer(buf, dtype=torch.uint8)
            sums[name] = checksum(t)
    finally:
        os.close(fd)
    return sums


def make_file(loadbench, path, size_gib, tensor_mib):
    """Reuses a file of the asked shape, else writes one with arbiter-loadbench --make."""
    want = round(size_gib * GIB)
    if os.path.exists(path):
        try:
            data_start, entries = read_header(path)
            size = os.path.getsize(path) - data_start
            if size == want and all(e[4] - e[3] == tensor_mib << 20 for e in entries[:-1]):
                return {"reused": True, "bytes": size, "tensors": len(entries)}
        except (OSError, ValueError, KeyError):
            pass
        os.remove(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    free = os.statvfs(os.path.dirname(os.path.abspath(path)))
    if free.f_bavail * free.f_frsize < want + GIB:
        sys.exit(f"not enough disk for {size_gib} GiB at {path}")
    started = time.perf_counter()
    proc = subprocess.run(
        [loadbench, "--make", str(size_gib), "--tensor-gib", str(tensor_mib / 1024), "--out", path],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"arbiter-loadbench --make failed: {proc.stderr}")
    seconds = time.perf_counter() - started
    data_start, entries = read_header(path)
    return {
        "reused": False,
        "bytes": os.path.getsize(path) - data_start,
        "tensors": len(entries),
        "seconds": seconds,
        "gb_per_s": os.path.getsize(path) / seconds / 1e9,
        "log": proc.stdout.strip(),
    }


# ----- the page cache -----------------------------------------------------------------------


def evict(path):
    """Drops the file's pages from the page cache: posix_fadvise(DONTNEED), no root needed.
    Only clean pages go, which is all a file written and synced long ago has."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident(path):
    """The fraction of the file's pages in the page cache (mincore over a mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return sum(v & 1 for v in vec) / pages
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def read_all(path, threads=16, piece=16 << 20, direct=False):
    """Reads the whole file with `threads` threads into page-aligned buffers and throws it
    away: with O_DIRECT a disk read that bypasses the page cache, else a read through it
    (which also leaves the file in it). Returns GB/s, or None if O_DIRECT is refused."""
    size = os.path.getsize(path)
    flags = os.O_RDONLY | (os.O_DIRECT if direct else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    offsets = list(range(0, size, piece))
    lock = threading.Lock()
    failed = []

    def reader():
        buf = mmap.mmap(-1, piece)
        while True:
            with lock:
                if not offsets or failed:
                    return
                off = offsets.pop(0)
            n = min(piece, size - off)
            # O_DIRECT wants whole blocks: the last piece is read rounded up (the kernel stops
            # at the end of the file).
            want = (n + 4095) // 4096 * 4096 if direct else n
            try:
                got = os.preadv(fd, [memoryview(buf)[:want]], off)
                if got < n:
                    raise OSError(f"short read at {off}")
            except OSError as e:
                failed.append(e)
                return

    started = time.perf_counter()
    pool = [threading.Thread(target=reader) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    seconds = time.perf_counter() - started
    os.close(fd)
    if failed:
        if direct:
            return None
        raise failed[0]
    return size / seconds / 1e9


# ----- one load, in a fresh process ---------------------------------------------------------


def child(args):
    """One load by one loader; prints one JSON line."""
    import_start = time.perf_counter()
    import torch

    report = {"loader": args.loader, "import_torch_s": time.perf_counter() - import_start}
    device = "cuda:0" if args.device == "cuda" else "cpu"
    if args.device == "cuda":
        started = time.perf_counter()
        torch.zeros(1, device=device)
        torch.cuda.synchronize()
        report["context_ms"] = (time.perf_counter() - started) * 1e3

    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    keep = []
    if args.loader == "safetensors":
        import safetensors
        from safetensors.torch import load_file

        report["version"] = safetensors.__version__
        sync()
        started = time.perf_counter()
        tensors = load_file(args.file, device="cuda" if args.device == "cuda" else "cpu")
        sync()
        seconds = time.perf_counter() - started
    elif args.loader.startswith("fastsafetensors"):
        import fastsafetensors
        from fastsafetensors import SafeTensorsFileLoader

        report["version"] = fastsafetensors.__version__
        report["odirect_env"] = os.environ.get("FASTSAFETENSORS_ODIRECT")
        sync()
        started = time.perf_counter()
        # Its documented single-device use: pg=None, no GDS (pread into pinned bounce buffers,
        # then copies to the device), its default bounce buffer (16 MiB) and threads (16).
        loader = SafeTensorsFileLoader(None, device, nogds=True)
        loader.add_filenames({0: [args.file]})
        buffers = loader.copy_files_to_device()
        tensors = {name: buffers.get_tensor(name) for name in loader.get_keys()}
        sync()
        seconds = time.perf_counter() - started
        keep = [buffers, loader]
        report["copier"] = loader.copier_class.__name__  # NoGdsFileCopier: the no-GDS path
    else:
        sys.exit(f"unknown loader {args.loader}")

    data_start, entries = read_header(args.file)
    report["bytes"] = os.path.getsize(args.file) - data_start
    report["seconds"] = seconds
    report["gb_per_s"] = report["bytes"] / seconds / 1e9
    report["tensors"] = len(tensors)
    report["checksums"] = {name: checksum(tensors[name]) for name in args.checksum if name in tensors}
    report["problems"] = shape_problems(tensors, entries, args.device)
    for k in keep:
        k.close()
    print(json.dumps(report))


DTYPES = {"BF16": "torch.bfloat16", "F16": "torch.float16", "F32": "torch.float32"}


def shape_problems(tensors, entries, device):
    problems = []
    if len(tensors) != len(entries):
        problems.append(f"{len(tensors)} tensors loaded, the file has {len(entries)}")
    for name, dtype, shape, _, _ in entries:
        t = tensors.get(name)
        if t is None:
            problems.append(f"{name} missing")
        elif list(t.shape) != list(shape) or (dtype in DTYPES and str(t.dtype) != DTYPES[dtype]):
            problems.append(f"{name}: {t.dtype} {list(t.shape)}, file says {dtype} {shape}")
        elif t.device.type != device:
            problems.append(f"{name} on {t.device}")
    return problems[:5]


def run_one(args, loader, names):
    env = dict(os.environ)
    if loader == "arbiter":
        cmd = [args.loadbench, "--once", args.file, "--load-threads", str(args.arbiter_threads)]
        if names:
            cmd += ["--checksum", ",".join(names)]
        if args.device == "cpu":
            cmd.append("--cpu")
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "child", "--loader", loader,
               "--file", args.file, "--device", args.device]
        if names:
            cmd += ["--checksum", *names]
        if loader == "fastsafetensors-buffered":
            env["FASTSAFETENSORS_ODIRECT"] = "0"
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.run_timeout} s"}
    wall = time.perf_counter() - started
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}"}
    report = json.loads(lines[-1])
    report["process_wall_s"] = wall
    if proc.stderr.strip():
        report["stderr_tail"] = proc.stderr.strip()[-500:]
    return report


# ----- the run ------------------------------------------------------------------------------


def limits(args):
    """The limits of this run: cold disk reads (buffered through arbiter-loadbench's first
    read, and O_DIRECT here), page-cache reads and pinned copies (arbiter-loadbench)."""
    evict(args.file)
    before = resident(args.file)
    bench_json = os.path.join(args.out, "loadbench-limits.json")
    cmd = [args.loadbench, args.file, "--read-threads", "8,16", "--load-threads", str(args.arbiter_threads),
           "--repeat", "3", "--copy-gib", "2", "--json", bench_json]
    if args.device == "cpu":
        cmd.append("--cpu")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with open(os.path.join(args.out, "loadbench-limits.txt"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        sys.exit(f"arbiter-loadbench failed: {proc.stderr}")
    bench = json.load(open(bench_json))
    evict(args.file)
    direct_before = resident(args.file)
    direct = read_all(args.file, threads=16, direct=True)
    cold_buffered = bench["prewarm"]["bytes"] / bench["prewarm"]["seconds"] / 1e9
    page_cache = max(r["gb_per_s"] for r in bench["page_cache"])
    pinned = bench.get("h2d_pinned_gb_per_s")
    out = {
        "cold_buffered_16_threads_gb_per_s": cold_buffered,
        "cold_buffered_resident_before": before,
        "cold_odirect_16_threads_gb_per_s": direct,
        "cold_odirect_resident_before": direct_before,
        "page_cache_gb_per_s": {str(r["threads"]): r["gb_per_s"] for r in bench["page_cache"]},
        "h2d_pinned_gb_per_s": pinned,
        "h2d_pageable_gb_per_s": bench.get("h2d_pageable_gb_per_s"),
        "loadbench_in_process_load": bench.get("load"),
    }
    out["warm_limit_gb_per_s"] = min(page_cache, pinned) if pinned else page_cache
    out["warm_limit_is"] = "pinned copy" if pinned and pinned < page_cache else "page-cache read"
    out["cold_limit_gb_per_s"] = max(cold_buffered, direct or 0.0)
    out["cold_limit_is"] = "O_DIRECT read" if (direct or 0.0) > cold_buffered else "buffered read"
    return out


def summarize(results):
    rows = []
    lim = results["limits"]
    for cache in ("warm", "cold"):
        for loader in results["loaders"]:
            runs = [r for r in results["runs"] if r["cache"] == cache and r["loader"] == loader]
            if not runs:
                continue
            ok = [r["gb_per_s"] for r in runs if "gb_per_s" in r and r.get("verified")]
            limit = lim["warm_limit_gb_per_s" if cache == "warm" else "cold_limit_gb_per_s"]
            rows.append({
                "cache": cache,
                "loader": loader,
                "runs": len(runs),
                "verified": sum(1 for r in runs if r.get("verified")),
                "gb_per_s": [round(r["gb_per_s"], 2) if "gb_per_s" in r else None for r in runs],
                "best_gb_per_s": max(ok) if ok else None,
                "median_gb_per_s": statistics.median(ok) if ok else None,
                "best_of_limit": max(ok) / limit if ok and limit else None,
                "median_of_limit": statistics.median(ok) / limit if ok and limit else None,
                "resident_before": [r.get("resident_before") for r in runs],
                "errors": [r["error"][:300] for r in runs if "error" in r],
                "copiers": sorted({r["copier"] for r in runs if r.get("copier")}),
            })
    return rows


def markdown(results):
    lim = results["limits"]
    f = lambda v, d=2: "-" if v is None else f"{v:.{d}f}"
    lines = [
        f"# Loaders side by side ({results['date']}, {results['gpu']})",
        "",
        f"File: {results['file']} ({results['file_info']['bytes'] / GIB:.2f} GiB of data, "
        f"{results['file_info']['tensors']} bf16 tensors of {results['tensor_mib']} MiB); device {results['device']}; "
        f"repeats: {results['warm_repeat']} warm, {results['cold_repeat']} cold, each a fresh process.",
        "",
        "Limits measured in this run:",
        f"- pinned host-to-device copy: {f(lim['h2d_pinned_gb_per_s'])} GB/s (pageable {f(lim['h2d_pageable_gb_per_s'])})",
        "- page-cache read (arbiter-loadbench, small buffers): "
        + ", ".join(f"{k} threads {v:.2f}" for k, v in lim["page_cache_gb_per_s"].items()) + " GB/s",
        f"- cold disk read, 16 threads: buffered {f(lim['cold_buffered_16_threads_gb_per_s'])} GB/s, "
        f"O_DIRECT {f(lim['cold_odirect_16_threads_gb_per_s'])} GB/s",
        f"- warm limit: **{f(lim['warm_limit_gb_per_s'])} GB/s** ({lim['warm_limit_is']}); "
        f"cold limit: **{f(lim['cold_limit_gb_per_s'])} GB/s** ({lim['cold_limit_is']})",
        "",
        "| cache | loader | GB/s per run | best | median | best / limit | median / limit | verified |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["summary"]:
        lines.append(
            f"| {r['cache']} | {r['loader']} | {', '.join(f(v) for v in r['gb_per_s'])} | {f(r['best_gb_per_s'])} | "
            f"{f(r['median_gb_per_s'])} | {f(r['best_of_limit'])} | {f(r['median_of_limit'])} | "
            f"{r['verified']}/{r['runs']} |"
        )
    lines += ["", "Loaders: " + "; ".join(f"{k}: {v}" for k, v in results["loader_notes"].items())]
    copiers = sorted({c for r in results["summary"] for c in r["copiers"]})
    if copiers:
        lines += ["", f"fastsafetensors ran with: {', '.join(copiers)}."]
    errors = [(r["cache"], r["loader"], e) for r in results["summary"] for e in r["errors"]]
    if errors:
        lines += ["", "Errors:"] + [f"- {c} {l}: {e}" for c, l, e in errors]
    if results["device"] == "cpu":
        lines += ["", "**Dry run on the CPU: these figures mean nothing** (safetensors' load_file to the "
                  "CPU only maps the file; its bytes are read by the checksums, after the clock)."]
    return "\n".join(lines) + "\n"


def run(args):
    os.makedirs(args.out, exist_ok=True)
    args.file = os.path.abspath(args.file)
    args.loadbench = os.path.abspath(args.loadbench)
    t0 = time.perf_counter()
    gpu = "cpu (dry run)"
    if args.device == "cuda":
        try:
            gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout.strip()
        except OSError:
            gpu = "?"
    results = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "gpu": gpu,
        "device": args.device,
        "file": args.file,
        "tensor_mib": args.tensor_mib,
        "warm_repeat": args.warm_repeat,
        "cold_repeat": args.cold_repeat,
        "loaders": args.loaders,
        "loader_notes": {
            "safetensors": 'safetensors.torch.load_file(path, device="cuda")',
            "fastsafetensors": "SafeTensorsFileLoader(None, 'cuda:0', nogds=True), add_filenames, "
            "copy_files_to_device, get_tensor for every key; its defaults (16 threads, 16 MiB of "
            "pinned bounce buffers, O_DIRECT on a local file system); the bounce buffers' "
            "allocation is timed, as Arbiter's staging ring is",
            "fastsafetensors-buffered": "the same with FASTSAFETENSORS_ODIRECT=0 (buffered reads, through the page cache)",
            "arbiter": f"arbiter-loadbench --once --load-threads {args.arbiter_threads} (arbiter_torch::load, "
            "the worker's 16 readers, 8 MiB chunks, 16 pinned staging slots)",
        },
        "runs": [],
    }
    out_json = os.path.join(args.out, "results.json")

    def save():
        results["summary"] = summarize(results) if "limits" in results else []
        results["elapsed_s"] = time.perf_counter() - t0
        with open(out_json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(out_json + ".tmp", out_json)

    def log(msg):
        print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

    results["file_info"] = make_file(args.loadbench, args.file, args.size_gib, args.tensor_mib)
    log(f"file: {results['file_info']}")
    _, entries = read_header(args.file)
    names = verify_names(entries, args.verify)
    results["reference_checksums"] = reference_checksums(args.file, names)
    log(f"reference checksums of {len(names)} tensors")
    results["limits"] = limits(args)
    log(f"limits: {json.dumps({k: v for k, v in results['limits'].items() if k != 'loadbench_in_process_load'})}")
    save()

    for cache, repeat in (("warm", args.warm_repeat), ("cold", args.cold_repeat)):
        if cache == "warm" and repeat:
            rate = read_all(args.file, threads=16)
            log(f"warmed the file into the page cache ({rate:.2f} GB/s, resident {resident(args.file):.3f})")
        for index in range(repeat):
            for loader in args.loaders:
                if cache == "cold":
                    evict(args.file)
                before = resident(args.file)
                report = run_one(args, loader, names)
                report.update(cache=cache, loader=loader, repeat=index, resident_before=before)
                if "checksums" in report:
                    report["verified"] = (
                        report["checksums"] == results["reference_checksums"] and not report.get("problems")
                    )
                results["runs"].append(report)
                save()
                log(f"{cache} {loader} #{index}: "
                    + (f"{report['gb_per_s']:.2f} GB/s, verified {report['verified']}, resident before {before:.3f}"
                       if "gb_per_s" in report else report.get("error", "?")[:300]))
    save()
    md = markdown(results)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md)
    print(md)
    bad = [r for r in results["runs"] if not r.get("verified")]
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="the whole comparison")
    r.add_argument("--out", required=True)
    r.add_argument("--file", default="/tmp/arbiter-work/loader-compare/weights.safetensors")
    r.add_argument("--size-gib", type=float, default=16)
    r.add_argument("--tensor-mib", type=int, default=128)
    r.add_argument("--loadbench", default="ship/arbiter-loadbench")
    r.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    r.add_argument("--loaders", nargs="+", choices=LOADERS, default=LOADERS)
    r.add_argument("--warm-repeat", type=int, default=3)
    r.add_argument("--cold-repeat", type=int, default=3)
    r.add_argument("--verify", type=int, default=4, help="tensors to checksum per run")
    r.add_argument("--arbiter-threads", type=int, default=16)
    r.add_argument("--run-timeout", type=int, default=180)
    c = sub.add_parser("child", help="one load, in this process (run uses it)")
    c.add_argument("--loader", required=True)
    c.add_argument("--file", required=True)
    c.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    c.add_argument("--checksum", nargs="*", default=[])
    args = p.parse_args()
    if args.command == "child":
        child(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
