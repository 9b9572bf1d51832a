#!/usr/bin/env bash
# The seed article's table, measured on the GPU host with the generated `ltx-half` pipeline
# (random weights): for each approach, idle VRAM, peak VRAM, and the first call with the
# weights cold (dropped from the page cache with `arbiter-video prewarm --evict`) and warm,
# each as the wall time of the process that serves it (CUDA context, loads, compute, output).
#   persistent  one long-lived process, every component `resident`: 3 calls, 5 s apart
#               (call 1 cold; calls 2-3 are what a persistent server answers with);
#   cold        a process per call, every component `gpu` (loaded per stage, freed after);
#   cold-stream the same with the text encoder streamed block by block;
#   cold-auto   the same with text encoder and transformer `auto` under a 16 GiB lease.
# Also: the limits in the same run (cold disk read, page-cache read, pinned copy) and NVML
# per-process samples every 100 ms for the plots. Results: $RESULTS, packed into
# $OUT/seed-table.tgz. Runs from the repository root with the release binaries in $SHIP.
# PRESET=ltx-full (on the H200) measures the full-size pipeline; AUTO_LEASE sizes the auto
# row's lease; WARM_ONLY=1 skips the cold rows, for a WORK directory on tmpfs (/dev/shm),
# whose files cannot be dropped from memory (the full pipeline does not fit the host's disk).
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/seed-table}"
work="${WORK:-/tmp/arbiter-work}"
preset="${PRESET:-ltx-half}"
auto_lease="${AUTO_LEASE:-16GiB}"
pipeline="$work/$preset"
mkdir -p "$out" "$work"
pack() { if [ -n "${OUT:-}" ]; then tar czf "$OUT/seed-table.tgz" -C "$out" .; fi; }
trap pack EXIT
LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv"
date -u +%FT%TZ >"$out/date.txt"
video="$ship/arbiter-video"

if [ ! -f "$pipeline/manifest.toml" ]; then
    "$video" make-pipeline --preset "$preset" --out "$pipeline" --device cuda >"$out/make.log" 2>&1
fi
"$video" inspect "$pipeline" --json >"$out/inspect.json"

# Limits: a cold read of the pipeline (after eviction), then a warm one.
"$video" prewarm "$pipeline" --evict >"$out/limits.txt"
"$video" prewarm "$pipeline" >>"$out/limits.txt"
"$video" prewarm "$pipeline" >>"$out/limits.txt"
"$ship/arbiter-loadbench" "$pipeline/transformer.safetensors" --read-threads 16 --load-threads 16 \
    --repeat 1 --json "$out/loadbench.json" >>"$out/limits.txt" 2>&1 || true

prompt="$seed_prompt"

# run NAME CACHE(cold|warm) ARGS...: one process, sampled, timed.
run() {
    local name="$1" cache="$2"
    shift 2
    if [ "$cache" = cold ] && [ "${WARM_ONLY:-0}" = 1 ]; then
        return
    fi
    if [ "$cache" = cold ]; then
        "$video" prewarm "$pipeline" --evict >/dev/null
    else
        "$video" prewarm "$pipeline" >/dev/null
    fi
    nvidia-smi --query-compute-apps=timestamp,pid,process_name,used_memory \
        --format=csv,noheader,nounits -lms 100 >"$out/apps-$name.csv" &
    local apps=$!
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 100 \
        >"$out/gpu-$name.csv" &
    local smi=$!
    sleep 1
    local start end
    start=$(date +%s%N)
    RUST_LOG=info "$video" generate --pipeline "$pipeline" --prompt "$prompt" \
        --negative-prompt "blurry, low quality" --seed 7 --out "$work/out-$name" "$@" \
        >"$out/run-$name.log" 2>&1 || echo "$name failed" >>"$out/failures.txt"
    end=$(date +%s%N)
    sleep 1
    kill "$apps" "$smi" 2>/dev/null || true
    wait "$apps" "$smi" 2>/dev/null || true
    echo "$name $(((end - start) / 1000000))" >>"$out/wall-ms.txt"
    find "$work/out-$name" -name metadata.json | while read -r m; do
        cp "$m" "$out/metadata-$name-$(basename "$(dirname "$m")").json"
    done
    rm -rf "$work/out-$name"
}

if [ "${WARM_ONLY:-0}" = 1 ]; then
    run persistent warm "${all_resident[@]}" --repeat 3 --pause 5s
else
    run persistent cold "${all_resident[@]}" --repeat 3 --pause 5s
fi
run cold cold
run cold-warm warm
run stream cold --placement text_encoder=stream
run stream-warm warm --placement text_encoder=stream
run auto cold --placement text_encoder=auto --placement transformer=auto --lease "$auto_lease"
run auto-warm warm --placement text_encoder=auto --placement transformer=auto --lease "$auto_lease"
