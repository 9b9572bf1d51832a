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
# GPU: PRESET=tiny BARE=0 SUPERVISOR_ARGS="--simulated-gpus 80GiB --simulated-dir /tmp/sim-gpu".
set -euo pipefail
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/spawn-overhead}"
work="${WORK:-/tmp/arbiter-work}"
preset="${PRESET:-ltx-half}"
jobs="${JOBS:-4}"
pipeline="$work/$preset"
mkdir -p "$out" "$work/pipelines"
sup_pid=""
finish() {
    if [ -n "$sup_pid" ]; then kill -TERM "$sup_pid" 2>/dev/null || true; wait "$sup_pid" 2>/dev/null || true; fi
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/spawn-overhead.tgz" -C "$out" . || true; fi
}
trap finish EXIT
LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH
video="$PWD/$ship/arbiter-video"
S="$ship/arbiter-supervisor"
date -u +%FT%TZ >"$out/date.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1 || true

if [ ! -f "$pipeline/manifest.toml" ]; then
    "$video" make-pipeline --preset "$preset" --out "$pipeline" >"$out/make.log" 2>&1
fi
ln -sfn "$pipeline" "$work/pipelines/$preset"
"$video" prewarm "$pipeline" >"$out/prewarm.txt"

# The floor: the same binary starting a CUDA context and nothing else, with the GPU named
# the way the supervisor names it to its workers.
if [ "${BARE:-1}" = 1 ]; then
    uuid="$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)"
    for _ in $(seq "${BARE_RUNS:-6}"); do
        ARBITER_SPAWNED_AT_NS="$(date +%s%N)" CUDA_VISIBLE_DEVICES="$uuid" \
            "$video" cuda-start >>"$out/cuda-start.jsonl"
    done
fi

cat >"$work/spawn.toml" <<TOML
[jobs]
frames_without_ffmpeg = true
TOML
# The same request from this shell instead of the supervisor: metadata-shell-WHEN-N.json.
shell_runs() {
    local when="$1"
    for i in $(seq "${SHELL_RUNS:-1}"); do
        ARBITER_SPAWNED_AT_NS="$(date +%s%N)" "$video" generate --pipeline "$pipeline" \
            --prompt "shell $when $i: a harbour at dawn" \
            --out "$work/shell-out" >"$out/shell-$when-$i.log" 2>&1 ||
            echo "shell run $when $i failed" >>"$out/failures.txt"
        find "$work/shell-out" -name metadata.json | head -1 | while read -r m; do
            cp "$m" "$out/metadata-shell-$when-$i.json"
        done
        rm -rf "$work/shell-out"
    done
}
shell_runs before

sock="$work/spawn.sock"
rm -rf "$work/spawn-state" "$sock"
"$S" --config "$work/spawn.toml" --socket "$sock" --state-dir "$work/spawn-state" \
    --pipelines-dir "$work/pipelines" --worker "$video" ${SUPERVISOR_ARGS:-} \
    >"$out/supervisor.log" 2>&1 &
sup_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
for i in $(seq "$jobs"); do
    # A new prompt each time, so the text encoder runs (no embedding-cache hit).
    "$S" generate --address "$sock" --pipeline "$preset" --prompt "spawn test $i: a harbour at dawn" \
        >"$out/job-$i.txt" 2>&1 || echo "job $i failed" >>"$out/failures.txt"
done
shell_runs after
find "$work/spawn-state" -name metadata.json | while read -r m; do
    cp "$m" "$out/metadata-$(basename "$(dirname "$(dirname "$m")")").json"
done
# One line per job and per bare start, for reading the run at a glance.
python3 - "$out" >"$out/summary.txt" <<'PY' || true
import glob, json, sys
out = sys.argv[1]
for line in open(f"{out}/cuda-start.jsonl") if glob.glob(f"{out}/cuda-start.jsonl") else []:
    bare = json.loads(line)
    print(f"bare cuda-start: spawn to ready {bare['spawn_to_ready_ms']:.0f} ms")
for path in sorted(glob.glob(f"{out}/metadata-*.json")):
    m = json.load(open(path))
    first = {s["stage"]: s.get("first_call_ms") for s in m.get("pipeline_stages", [])}
    name = path.rsplit("/", 1)[-1][len("metadata-"):-len(".json")]
    print(
        f"{name}: spawn {m.get('spawn_ms', 0):.0f} ms, first step {m.get('first_step_ms', 0):.0f} ms, "
        f"overhead {m.get('first_step_overhead_ms', 0):.0f} ms; first calls: "
        f"text {first.get('text') or 0:.0f} ms, denoise {first.get('denoise') or 0:.0f} ms"
    )
PY
cat "$out/summary.txt"
