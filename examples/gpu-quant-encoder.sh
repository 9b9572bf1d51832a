#!/usr/bin/env bash
# Issue #16, part 4: the quantized text encoder, as the seed runs it, on the GPU host. Two
# phases (PHASES, both by default, in this order; run them as separate calls when one call's
# time is short: every step is skipped when its files are there already):
#
#   encoders  ltx-full's text encoder (Gemma-3-12B-sized, 60 blocks) generated alone three
#             times from the same seed (make-pipeline --only text_encoder): bf16, fp8-e4m3 and
#             nf4. `arbiter-video compare-encoders` then loads and runs each on the GPU, one
#             after the other, warm in the page cache: stored bytes, load time and GB/s as a
#             ratio to the pinned host-to-device rate measured first in the same process,
#             first and median forward time (batch of two prompts, 256 tokens), the forward's
#             peak memory, and max-abs and relative error against the bf16 output.
#             arbiter-loadbench on the nf4 file gives the page-cache and loader limits beside
#             them. The bf16 and fp8 encoders (42 GB) are deleted afterwards (KEEP=1 keeps
#             them), so that the next phase fits the host's 64 GiB disk.
#   lease     the seed's edge case: the whole ltx-full pipeline with the nf4 encoder, as one
#             job of a supervisor whose budget is narrowed (--reserve) to a CARD (24GiB) card,
#             under a LEASE_MIB (20 GiB) lease: the pipeline's manifest copied with
#             memory.peak = lease - margin, text encoder and transformer `auto` (the 7.3 GB
#             encoder fits, the 35.5 GB transformer streams), and the supervisor's overuse
#             action `kill` (OVERUSE), so that a job using more than its lease fails instead
#             of passing. Recorded: the job's wall time, its metadata.json (per stage:
#             placement, load, compute, allocator peaks), the supervisor's per-process NVML
#             samples, and nvidia-smi's every 100 ms.
#
# THE WEIGHTS ARE RANDOM: the errors say how closely each format reproduces the bf16
# encoder's arithmetic, nothing about the quality of a real model's embeddings.
#
# Runs from the repository root on the GPU host (../shared/gpu-host.md) with the release
# binaries in $SHIP (scripts/ship.sh); results in $RESULTS, packed into $OUT/quant-encoder.tgz,
# with summary.txt. SIZE is ltx-full (default) or tiny, the sizes with -nf4 and -fp8 presets.
# As a smoke test without a GPU: SIZE=tiny MAKE_DEVICE=cpu LEASE_MIB=1024
# MARGIN_MIB=64 SUPERVISOR_ARGS="--simulated-gpus 2GiB --simulated-dir /tmp/sim-gpu".
set -euo pipefail
size="${SIZE:-ltx-full}"
export PRESET="$size-nf4"
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup quant-encoder
phases="${PHASES:-encoders lease}"
lease_mib="${LEASE_MIB:-20480}"
margin_mib="${MARGIN_MIB:-2048}"
card="${CARD:-24GiB}"
overuse="${OVERUSE:-kill}"
prompt="$seed_prompt"
make_device="${MAKE_DEVICE:-cuda}"
df -h "$work" >"$out/disk.txt" 2>&1 || true

# summary: the tables of summary.txt, from what the phases left (also when one failed).
summary() {
    python3 - "$out" "$lease_mib" >"$out/summary.txt" 2>&1 <<'PY' || true
import glob, json, os, sys
out, lease_mib = sys.argv[1], int(sys.argv[2])
gb = lambda b: f"{b / 1e9:.2f} GB"
path = f"{out}/compare.json"
if os.path.exists(path):
    c = json.load(open(path))
    pinned = c.get("pinned_gb_per_s")
    print(f"text encoders on {c['device']}; pinned host-to-device "
          f"{f'{pinned:.2f} GB/s' if pinned else 'not measured'} (random weights: the errors say nothing about quality)")
    print("| dtype | stored | x smaller | load | GB/s | of pinned | load x faster | first fwd | fwd (median) | fwd peak | max abs | relative | min cos |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ref = c["encoders"][0]
    for e in c["encoders"]:
        err = e.get("error") or {}
        of_pinned = f"{e['load_gb_per_s'] / pinned:.2f}" if pinned else "-"
        print(f"| {e['dtype']} | {gb(e['file_bytes'])} | {ref['file_bytes'] / e['file_bytes']:.2f} | "
              f"{e['load_s']:.3f} s | {e['load_gb_per_s']:.2f} | {of_pinned} | {ref['load_s'] / e['load_s']:.2f} | "
              f"{e['first_call_ms']:.1f} ms | {e['forward_ms_median']:.1f} ms | {gb(e['forward_peak_bytes'])} | "
              f"{err.get('max_abs', float('nan')):.4f} | {err.get('relative', float('nan')):.5f} | "
              f"{err.get('min_cosine', float('nan')):.5f} |")
for path in sorted(glob.glob(f"{out}/metadata-lease.json")):
    m = json.load(open(path))
    wall = open(f"{out}/wall-ms.txt").read().split()[-2] if os.path.exists(f"{out}/wall-ms.txt") else "0"
    print(f"\n{m['pipeline']} (the nf4 encoder) under a {m['lease_bytes'] / 2**30:.2f} GiB lease "
          f"(asked {lease_mib} MiB): job wall {int(wall) / 1000:.1f} s, worker total {m['total_ms'] / 1000:.1f} s, "
          f"device {m['device']}")
    print("| stage | component | placement | load | compute | peak allocated | peak reserved |")
    print("|---|---|---|---:|---:|---:|---:|")
    for s in m["pipeline_stages"]:
        print(f"| {s['stage']} | {s['component']} | {s['placement']} | {s['load_ms'] / 1000:.2f} s | "
              f"{s['compute_ms'] / 1000:.2f} s | {s['peak_allocated_bytes'] / 2**30:.2f} GiB | "
              f"{s['peak_reserved_bytes'] / 2**30:.2f} GiB |")
path = f"{out}/nvml.csv"
if os.path.exists(path):
    used = [float(l.split(",")[1]) for l in open(path) if l.count(",") == 1 and l.split(",")[1].strip()]
    if used:
        print(f"\nnvidia-smi memory.used (the whole card): {min(used):.0f} MiB at least, {max(used):.0f} MiB "
              f"at most (the job's lease: {lease_mib} MiB)")
if os.path.exists(f"{out}/failures.txt"):
    print("\nFAILURES:\n" + open(f"{out}/failures.txt").read())
PY
    cat "$out/summary.txt" || true
}
trap 'summary; gpu_finish' EXIT

# encoder DTYPE PRESET [MAKE-ARGS...]: the text encoder alone, in $work/enc-DTYPE.
encoder() {
    local dir="$work/enc-$1" preset="$2"
    shift 2
    if [ ! -f "$dir/components.toml" ]; then
        rm -rf "$dir"
        /usr/bin/time -f "$(basename "$dir"): %e s, max RSS %M KiB" "$video" make-pipeline \
            --preset "$preset" "$@" --only text_encoder --device "$make_device" --out "$dir" \
            >>"$out/make-encoders.log" 2>&1
    fi
    "$video" prewarm "$dir" >>"$out/prewarm.txt"
}

if [[ " $phases " == *" encoders "* ]]; then
    # The bf16 reference is the base preset's encoder (--text-encoder-dtype bf16 also makes
    # the f32 `tiny` one bf16, for the smoke test).
    encoder bf16 "$size" --text-encoder-dtype bf16
    encoder fp8-e4m3 "$size-fp8"
    encoder nf4 "$size-nf4"
    df -h "$work" >>"$out/disk.txt" 2>&1 || true
    # The limits beside the loads: page cache, pinned and pageable copies, the loader.
    "$ship/arbiter-loadbench" "$work/enc-nf4/text_encoder.safetensors" --read-threads 1,16 \
        --load-threads 16 --repeat 2 --json "$out/loadbench.json" >"$out/loadbench.txt" 2>&1 || true
    RUST_LOG=warn "$video" compare-encoders "$work/enc-bf16" "$work/enc-fp8-e4m3" "$work/enc-nf4" \
        --prompt "$prompt" --negative-prompt "blurry, low quality" --repeat "${REPEAT:-5}" \
        --json "$out/compare.json" >"$out/compare.txt" 2>"$out/compare.log" ||
        echo "compare-encoders failed" >>"$out/failures.txt"
    cat "$out/compare.txt" || true
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$work/enc-bf16" "$work/enc-fp8-e4m3" "$work/enc-nf4"; fi
fi

if [[ " $phases " == *" lease "* ]]; then
    gpu_pipeline
    # The pipeline once more under a capped lease: its files linked, its manifest renamed with
    # memory.peak = lease - margin (so the supervisor leases exactly LEASE_MIB).
    name="$preset-lease"
    capped="$work/pipelines/$name"
    rm -rf "$capped"
    mkdir -p "$capped"
    for f in "$pipeline"/*.pt "$pipeline"/*.safetensors; do ln -s "$f" "$capped/"; done
    sed -e "s/^name = .*/name = \"$name\"/" \
        -e "s/^margin = .*/margin = \"${margin_mib}MiB\"/" \
        -e "/^\[memory\]$/a peak = \"$((lease_mib - margin_mib))MiB\"" \
        "$pipeline/manifest.toml" >"$capped/manifest.toml"
    auto=(--placement text_encoder=auto --placement transformer=auto)
    "$video" inspect "$capped" "${auto[@]}" >"$out/inspect-lease.txt"
    "$video" inspect "$capped" "${auto[@]}" --json >"$out/inspect-lease.json"
    # The budget of a CARD card: the capacity less everything above it.
    reserve_args=()
    if total_mib="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)" &&
        [ -n "$total_mib" ]; then
        card_mib="$(python3 -c "import re,sys; v,u=re.fullmatch(r'([0-9.]+)\s*(GiB|MiB|GB)', sys.argv[1]).groups(); print(int(float(v)*{'GiB':1024,'MiB':1,'GB':1e9/2**20}[u]))" "$card")"
        reserve_args=(--reserve "$((total_mib - card_mib))MiB")
        echo "card ${total_mib} MiB, budget narrowed to $card (${card_mib} MiB): ${reserve_args[*]}" >"$out/budget.txt"
    fi
    SUPERVISOR_ARGS="${reserve_args[*]} --sample-interval 100ms ${SUPERVISOR_ARGS:-}" \
        SUPERVISOR_JOBS="overuse_action = \"$overuse\"" gpu_supervisor
    "$S" status --address "$sock" >"$out/status-before.txt" 2>&1 || true
    "$S" events --address "$sock" --record "$out/samples.csv" >/dev/null 2>&1 &
    events=$!
    smi=""
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 100 \
            >"$out/nvml.csv" 2>/dev/null &
        smi=$!
    fi
    start=$(date +%s%N)
    "$S" generate --address "$sock" --pipeline "$name" --prompt "$prompt" \
        --negative-prompt "blurry, low quality" --seed 7 "${auto[@]}" >"$out/job.txt" 2>&1 ||
        echo "the $name job failed (see job.txt, supervisor.log)" >>"$out/failures.txt"
    end=$(date +%s%N)
    echo "$name $(((end - start) / 1000000)) ms" >"$out/wall-ms.txt"
    sleep 1
    kill $events $smi 2>/dev/null || true
    wait $events $smi 2>/dev/null || true
    "$S" jobs --address "$sock" >"$out/jobs.txt" 2>&1 || true
    "$S" status --address "$sock" >"$out/status-after.txt" 2>&1 || true
    gpu_keep_metadata "$state" lease
fi

