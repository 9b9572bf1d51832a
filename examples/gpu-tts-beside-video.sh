#!/usr/bin/env bash
# The seed table's last column: time to first audio of a GPU voice in arbiter-tts (holding
# its lease from a supervisor on the card) while video jobs of each approach run beside it,
# against the same voice on an idle GPU. For each approach a loop runs video jobs with
# `arbiter-video generate` (the same requests as examples/gpu-seed-table.sh, files warm in the
# page cache) while the speech bench measures the voice; the GPU's memory is sampled
# throughout. Approaches: idle, persistent (one process, every component resident), cold
# (a process per job, every component gpu), stream (text encoder streamed), auto (AUTO_LEASE,
# default 16 GiB).
#
# Run from the repository root on the GPU host with ship/ filled by scripts/ship.sh; results in $RESULTS, packed into $OUT/tts-beside.tgz.
# As a smoke test on a machine without a GPU: PRESET=tiny MAKE_DEVICE=cpu REQUIRE_GPU=0 ROUNDS=5
# LEASE_BYTES=1GiB SUPERVISOR_ARGS="--simulated-gpus 80GiB --simulated-dir /tmp/sim-gpu".
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/tts-beside}"
work="${WORK:-/tmp/arbiter-work}"
preset="${PRESET:-ltx-half}"
rounds="${ROUNDS:-120}"
# A pause between speech rounds, so they spread over whole video jobs (stages, loads, exits).
interval="${INTERVAL:-200}"
approaches="${APPROACHES:-idle persistent cold stream auto}"
pipeline="$work/$preset"
mkdir -p "$out" "$work"
pids=()
finish() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/tts-beside.tgz" -C "$out" . || true; fi
}
trap finish EXIT

torch_lib="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$PWD/$ship/lib:$torch_lib"
export ESPEAK_DATA_PATH="$PWD/$ship"
video="$ship/arbiter-video"
date -u +%FT%TZ >"$out/date.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1 || true

gpu_pipeline
voice="$work/voices/wide-voice"
if [ ! -f "$voice/voice.json" ]; then
    python3 scripts/make-test-voice.py "$voice" --name wide-voice >"$out/voice.txt" 2>&1
fi

sup="$work/beside.sock"
rm -rf "$work/beside-state" "$sup"
"$ship/arbiter-supervisor" --socket "$sup" --state-dir "$work/beside-state" \
    --sample-interval 100ms ${SUPERVISOR_ARGS:-} >"$out/supervisor.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$sup" ] && break; sleep 0.1; done
"$ship/arbiter-supervisor" events --address "$sup" --record "$out/samples.csv" >/dev/null 2>&1 &
pids+=($!)

gpu=(--require-gpu)
[ "${REQUIRE_GPU:-1}" = 0 ] && gpu=()
# Without a GPU (smoke test, simulated supervisor) the voice needs a lease size given.
[ -n "${LEASE_BYTES:-}" ] && gpu+=(--lease-bytes "$LEASE_BYTES")
prompt="$seed_prompt"

# Video jobs of one approach, back to back, until killed.
video_loop() {
    local approach="$1"
    local args=()
    case "$approach" in
        persistent) args=("${all_resident[@]}" --repeat 1000) ;;
        cold) args=() ;;
        stream) args=(--placement text_encoder=stream) ;;
        auto) args=(--placement text_encoder=auto --placement transformer=auto --lease "${AUTO_LEASE:-16GiB}") ;;
    esac
    while true; do
        "$video" generate --pipeline "$pipeline" --prompt "$prompt" --seed 7 \
            --out "$work/beside-$approach" "${args[@]}" >>"$out/video-$approach.log" 2>&1 || true
        rm -rf "$work/beside-$approach"
    done
}

for approach in $approaches; do
    echo "== $approach" >&2
    loop=""
    if [ "$approach" != idle ]; then
        video_loop "$approach" &
        loop=$!
        sleep "${SETTLE:-5}"
    fi
    echo "$approach $(date +%s%N)" >>"$out/marks.txt"
    "$ship/tts-speech-bench" --server "$PWD/$ship/arbiter-tts" --voice-dir "$voice" \
        --supervisor "$sup" "${gpu[@]}" --rounds "$rounds" --interval "$interval" --warmup 3 --label "$approach" \
        --json "$out/tts-$approach.json" >"$out/tts-$approach.txt" 2>&1 ||
        echo "$approach: the speech bench failed" >>"$out/failures.txt"
    if [ -n "$loop" ]; then
        kill "$loop" 2>/dev/null || true
        pkill -f "beside-$approach" 2>/dev/null || true
        wait "$loop" 2>/dev/null || true
    fi
done
echo "done $(date +%s%N)" >>"$out/marks.txt"
