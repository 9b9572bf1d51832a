#!/usr/bin/env bash
# Issue #16, part 1, on the GPU host: the supervisor's host weight pool.
#   1. A supervisor with `[pool]` (HOST_BYTES, 64GiB) serving the generated $PRESET (ltx-half)
#      pipeline and, through allow_dirs, a SIZE_GIB (16) GiB bench file: its prefill (files,
#      bytes, seconds, huge pages or not, locked or not) from its log.
#   2. arbiter-loadbench --pool on the bench file, in one process: the pinned copy rate (the
#      limit), then per repeat fetch+map, registering the pool's pages with the driver, and
#      the copy from them; and beside it `load_pinned` from the file, what a streamed
#      component pays without the pool. Registration is given as GB/s and in pinned copies of
#      the same bytes.
#   3. `arbiter-video generate` warm (the files in the page cache), a process per call, with
#      and without ARBITER_POOL_SOCKET: every component `gpu`, and the text encoder streamed;
#      plus the persistent reference in the same run (every component resident, 3 calls: 2
#      and 3 are what a resident server answers with). Per call: wall time and metadata.json
#      (per stage: load source, register ms, load ms, first forward).
#   4. Park and wake: the persistent process again with the pool, parking its resident
#      components after each call and waking them before the next (`generate --park`):
#      park.json has each park and wake, the wake rate against the pinned copy rate measured
#      in the same process, and the process's NVML bytes loaded, parked and woken.
# THE WEIGHTS ARE RANDOM (generated pipeline): only bytes and times mean anything.
# Results in $RESULTS, packed into $OUT/weight-pool.tgz. Runs from the repository root with
# the release binaries in $SHIP (scripts/ship.sh).
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup weight-pool
size_gib="${SIZE_GIB:-16}"
host_bytes="${HOST_BYTES:-64GiB}"
gpu_pipeline
# The same file examples/gpu-loader-compare.sh measures (it reuses it): one 16 GiB file of
# 128 MiB tensors, so that both fit the host's disk beside the pipeline.
bench="$work/loader-compare"
weights="$bench/weights-${size_gib}g.safetensors"
mkdir -p "$bench"
if [ ! -f "$weights" ]; then
    "$ship/arbiter-loadbench" --make "$size_gib" --tensor-gib 0.125 --out "$weights" \
        >"$out/make-bench.txt" 2>&1
fi
free -g >"$out/free.txt"
grep -i -E "hugepages|mlock|locked" /proc/meminfo >"$out/meminfo.txt" || true
cat /sys/kernel/mm/transparent_hugepage/shmem_enabled >"$out/thp-shmem.txt" 2>/dev/null || true
ulimit -l >"$out/ulimit-l.txt" || true

SUPERVISOR_JOBS="[pool]\nhost_bytes = \"$host_bytes\"\nthreads = 16\nallow_dirs = [\"$bench\"]\n"
gpu_supervisor
pool_sock="$work/pool.sock"
for _ in $(seq 600); do
    grep -q "weight pool prefilled" "$out/supervisor.log" && break
    sleep 0.5
done
grep -E "pool" "$out/supervisor.log" >"$out/pool-log.txt" || true

"$ship/arbiter-loadbench" "$weights" --read-threads 16 --load-threads 16 --repeat 3 \
    --pool "$pool_sock" --json "$out/loadbench-pool.json" >"$out/loadbench-pool.txt" 2>&1 ||
    echo "loadbench failed" >>"$out/failures.txt"

# call NAME POOL(on|off) ARGS...: one generate process, warm, timed from outside.
call() {
    local name="$1" pool="$2"
    shift 2
    "$video" prewarm "$pipeline" >/dev/null
    local env=() start end
    if [ "$pool" = on ]; then env=(ARBITER_POOL_SOCKET="$pool_sock"); fi
    start=$(date +%s%N)
    env "${env[@]}" RUST_LOG=info "$video" generate --pipeline "$pipeline" --prompt "$seed_prompt" \
        --negative-prompt "blurry, low quality" --seed 7 --out "$work/out-$name" "$@" \
        >"$out/run-$name.log" 2>&1 || echo "$name failed" >>"$out/failures.txt"
    end=$(date +%s%N)
    echo "$name $(((end - start) / 1000000))" >>"$out/wall-ms.txt"
    find "$work/out-$name" -name metadata.json | while read -r m; do
        cp "$m" "$out/metadata-$name-$(basename "$(dirname "$m")").json"
    done
    if [ -f "$work/out-$name/park.json" ]; then cp "$work/out-$name/park.json" "$out/park-$name.json"; fi
    rm -rf "$work/out-$name"
}

call persistent off "${all_resident[@]}" --repeat 3 --pause 1s
call persistent-park on "${all_resident[@]}" --repeat 3 --pause 1s --park
call gpu off
call gpu-pool on
call gpu-pool-2 on
call stream off --placement text_encoder=stream
call stream-pool on --placement text_encoder=stream

"$S" status --address "$sock" >"$out/status.txt" 2>&1 || true
python3 - "$out" >"$out/pool-summary.txt" <<'PY' || true
import glob, json, sys
out = sys.argv[1]
for path in sorted(glob.glob(f"{out}/metadata-*.json")):
    m = json.load(open(path))
    name = path.rsplit("/", 1)[-1][len("metadata-"):-len(".json")]
    parts = []
    for s in m.get("pipeline_stages", []):
        if s.get("load_ms"):
            parts.append(
                f"{s['stage']}:{s.get('load_source', '?')} {s['load_ms']:.0f}ms"
                + (f" (reg {s['register_ms']:.0f})" if s.get("register_ms") is not None else "")
            )
    print(f"{name:34} total {m.get('total_ms') or 0:6.0f} ms  " + ", ".join(parts))
PY
cat "$out/wall-ms.txt" "$out/pool-summary.txt" "$out/loadbench-pool.txt" 2>/dev/null || true
