#!/usr/bin/env bash
# Spawn-to-first-step on the GPU host: video jobs that a supervisor on the real card spawns
# (one worker process per job, every component `gpu`, weights warm in the page cache)
# against bare CUDA context starts of the same binary (`arbiter-video cuda-start`) in the
# same run. Both are timed from the spawn (ARBITER_SPAWNED_AT_NS: the supervisor stamps its
# workers, this script stamps the bare starts). Each job's metadata.json gives spawn_ms,
# startup_ms, cuda_context_ms, first_step_ms and first_step_overhead_ms (the first step
# less the weight loads and model compute of the stages before it). For comparison in the same
# run, SHELL_RUNS (default 1) jobs of the same kind run from this shell with `arbiter-video
# generate` before the supervisor's jobs and as many after them: the components' first
# forwards (first_call_ms) of both kinds of process, side by side.
#
# Run from the repository root on the GPU host with ship/ filled by scripts/ship.sh; results
# in $RESULTS, packed into $OUT/spawn-overhead.tgz. As a smoke test on a machine without a
# GPU: PRESET=tiny MAKE_DEVICE=cpu BARE=0 SUPERVISOR_ARGS="--simulated-gpus 80GiB --simulated-dir /tmp/sim-gpu".
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup spawn-overhead
gpu_pipeline

# The floor: the same binary starting a CUDA context and nothing else, with the GPU named
# the way the supervisor names it to its workers.
if [ "${BARE:-1}" = 1 ]; then
    uuid="$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)"
    for _ in $(seq "${BARE_RUNS:-6}"); do
        ARBITER_SPAWNED_AT_NS="$(date +%s%N)" CUDA_VISIBLE_DEVICES="$uuid" \
            "$video" cuda-start >>"$out/cuda-start.jsonl"
    done
fi

# The same request from this shell instead of the supervisor: metadata-shell-WHEN-N.json.
shell_runs() {
    local when="$1"
    for i in $(seq "${SHELL_RUNS:-1}"); do
        ARBITER_SPAWNED_AT_NS="$(date +%s%N)" "$video" generate --pipeline "$pipeline" \
            --prompt "shell $when $i: a harbour at dawn" \
            --out "$work/shell-out" >"$out/shell-$when-$i.log" 2>&1 ||
            echo "shell run $when $i failed" >>"$out/failures.txt"
        gpu_keep_metadata "$work/shell-out" "shell-$when-$i"
        rm -rf "$work/shell-out"
    done
}
shell_runs before

gpu_supervisor
for i in $(seq "${JOBS:-4}"); do
    # A new prompt each time, so the text encoder runs (no embedding-cache hit).
    "$S" generate --address "$sock" --pipeline "$preset" --prompt "spawn test $i: a harbour at dawn" \
        >"$out/job-$i.txt" 2>&1 || echo "job $i failed" >>"$out/failures.txt"
done
shell_runs after
find "$state" -name metadata.json | while read -r m; do
    cp "$m" "$out/metadata-$(basename "$(dirname "$(dirname "$m")")").json"
done
gpu_summary
