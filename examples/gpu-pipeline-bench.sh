#!/usr/bin/env bash
# The staged pipeline on a real GPU: generates the `ltx-half` pipeline (LTX-2.3's layout at
# half the bytes, random weights), measures the machine's limits in the same run (page-cache
# read rate, pinned and pageable host-to-device copies, arbiter-torch's loader), then runs one
# job per placement with `arbiter-video generate`, sampling NVML every 50 ms:
#   gpu     every component loaded for its stages and freed after;
#   stream  the text encoder streamed block by block from pinned host memory;
#   auto    text encoder and transformer `auto` under a 16 GiB lease (the transformer alone
#           is ~18 GB, so auto streams it).
# Runs from the repository root on the GPU host (../shared/gpu-host.md) with the release
# binaries in $SHIP (default ship/); results go to $RESULTS, and packed into $OUT/bench.tgz
# when $OUT is set (the device tool's output folder).
set -euo pipefail
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/arbiter-bench}"
pack() { if [ -n "${OUT:-}" ]; then tar czf "$OUT/bench.tgz" -C "$out" .; fi; }
trap pack EXIT
work="${WORK:-/tmp/arbiter-work}"
preset="${PRESET:-ltx-half}"
mkdir -p "$out" "$work"
LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv"
date -u +%FT%TZ >"$out/date.txt"

if [ ! -f "$work/$preset/manifest.toml" ]; then
    /usr/bin/time -f '%e s, max RSS %M KiB' "$ship/arbiter-video" make-pipeline --preset "$preset" \
        --out "$work/$preset" --device cuda >"$out/make.log" 2>&1
fi
"$ship/arbiter-video" inspect "$work/$preset" >"$out/inspect-gpu.txt"
"$ship/arbiter-video" inspect "$work/$preset" --placement text_encoder=stream >"$out/inspect-stream.txt"
"$ship/arbiter-video" inspect "$work/$preset" --json >"$out/inspect.json"

if [ "${LOADBENCH:-1}" = 1 ]; then
    "$ship/arbiter-loadbench" "$work/$preset/text_encoder.safetensors" --read-threads 1,8,16 \
        --load-threads 8,16 --repeat 2 --json "$out/limits.json" >"$out/limits.txt" 2>&1 || true
fi

prompt="a lighthouse at dusk, waves breaking on the rocks"
for run in ${RUNS:-gpu stream auto}; do
    case "$run" in
        gpu) placement=() ;;
        stream) placement=(--placement text_encoder=stream) ;;
        auto) placement=(--placement text_encoder=auto --placement transformer=auto --lease 16GiB) ;;
        *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 50 \
        >"$out/nvml-$run.csv" &
    smi=$!
    sleep 0.5
    start=$(date +%s%N)
    RUST_LOG=info "$ship/arbiter-video" generate --pipeline "$work/$preset" --prompt "$prompt" \
        --negative-prompt "blurry, low quality" --seed 7 "${placement[@]}" --out "$work/out-$run" \
        >"$out/run-$run.log" 2>&1 || echo "run $run failed" >>"$out/failures.txt"
    end=$(date +%s%N)
    sleep 0.5
    kill "$smi" 2>/dev/null || true
    echo "$run $(((end - start) / 1000000)) ms" >>"$out/wall.txt"
    cp "$work/out-$run/metadata.json" "$out/metadata-$run.json" 2>/dev/null || true
    rm -rf "$work/out-$run/frames"
done
