#!/usr/bin/env bash
# Issue #14's levers, in one run: time to first audio of a GPU voice in arbiter-tts (p50, p95,
# p99) while video jobs run back to back beside it (every component `gpu`, a process per job:
# examples/gpu-tts-beside-video.sh's "cold" approach), for each way of giving the voice the
# GPU's time first, against the same voice on an idle card. Each video job's wall time is
# recorded too, for what the lever costs the video.
#
# Levers (APPROACHES, in this order by default):
#   idle        no video: the limit the others are held against
#   none        video beside the voice, nothing done (today)
#   yield       the compute gate: the supervisor's [compute] gate, arbiter-tts marks its GPU
#               work, the video job pauses between blocks meanwhile
#   mps         NVIDIA MPS (control daemon started here), both processes its clients
#   mps-limit   MPS, the video client at CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$MPS_VIDEO_PCT (50)
#   mps-prio    MPS, the video client at CUDA_MPS_CLIENT_PRIORITY=1 (below normal)
#   mps-yield   MPS and the gate together
#   managed-idle, managed
#               the shipped configuration: a second supervisor with [compute.mps] enabled
#               (its own MPS control daemon as its child, workers at client priority 1) and
#               yielding off; the voice alone, then beside video jobs submitted to that
#               supervisor (`arbiter-supervisor generate`: spawned, leased and verified by it)
# The driver's compute time-slice (`nvidia-smi compute-policy --set-timeslice`) is a change
# to the GPU's settings, which this host's rules forbid; it is not run here.
#
# Run from the repository root on the GPU host with ship/ filled by scripts/ship.sh; results
# in $RESULTS, packed into $OUT/voice-priority.tgz, with summary.txt (the table).
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/voice-priority}"
work="${WORK:-/tmp/arbiter-work}"
preset="${PRESET:-ltx-half}"
rounds="${ROUNDS:-100}"
interval="${INTERVAL:-200}"
approaches="${APPROACHES:-idle none yield mps mps-limit mps-prio mps-yield}"
managed="${MANAGED:-managed-idle managed}"
pipeline="$work/$preset"
mkdir -p "$out" "$work"
pids=()
mps_pipe="$work/mps/pipe"
mps_log="$work/mps/log"
mps_stop() {
    if [ -S "$mps_pipe/control" ] || pgrep -f nvidia-cuda-mps-control >/dev/null 2>&1; then
        echo quit | CUDA_MPS_PIPE_DIRECTORY="$mps_pipe" nvidia-cuda-mps-control >/dev/null 2>&1 || true
        sleep 1
    fi
}
finish() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    mps_stop
    python3 - "$out" >"$out/summary.txt" 2>&1 <<'PY' || true
import glob, json, os, sys
out = sys.argv[1]
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p * (len(v) - 1))))] if v else float("nan")
rows = {}
for path in sorted(glob.glob(f"{out}/tts-*.json")):
    name = os.path.basename(path)[4:-5]
    j = json.load(open(path))
    raw = j.get("samples_ms", {}).get("time_to_first_audio") or []
    rows[name] = [x for x in raw]
times = {}
for path in glob.glob(f"{out}/video-*.times"):
    name = os.path.basename(path)[6:-6]
    times[name] = [float(x) for x in open(path).read().split()]
idle = rows.get("idle")
base = pct(idle, 0.95) if idle else None
vbase = None
if times.get("none"):
    vbase = sorted(times["none"])[len(times["none"]) // 2]
print("| lever | first audio p50 | p95 | p99 | p95 / idle p95 | video jobs | video job p50 | / none |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in ["idle", "none", "yield", "mps", "mps-limit", "mps-prio", "mps-yield", "managed-idle", "managed"]:
    if name not in rows:
        continue
    v = rows[name]
    t = times.get(name, [])
    tp50 = sorted(t)[len(t) // 2] if t else None
    ratio = f"{pct(v, 0.95) / base:.2f}" if base else "-"
    vr = f"{tp50 / vbase:.3f}" if (tp50 and vbase) else "-"
    print(f"| {name} | {pct(v, 0.5):.2f} ms | {pct(v, 0.95):.2f} ms | {pct(v, 0.99):.2f} ms | {ratio} | "
          f"{len(t)} | {f'{tp50 / 1000:.2f} s' if tp50 else '-'} | {vr} |")
for path in sorted(glob.glob(f"{out}/metadata-*.json")):
    m = json.load(open(path))
    pauses = sum((s.get("yield_pauses") or 0) for s in m.get("pipeline_stages", []))
    paused = sum((s.get("yield_paused_ms") or 0) for s in m.get("pipeline_stages", []))
    print(f"{os.path.basename(path)}: total {m.get('total_ms', 0) / 1000:.2f} s, {pauses} pauses, {paused:.1f} ms paused")
PY
    cat "$out/summary.txt" >&2 || true
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/voice-priority.tgz" -C "$out" . || true; fi
}
trap finish EXIT

torch_lib="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$PWD/$ship/lib:$torch_lib"
export ESPEAK_DATA_PATH="$PWD/$ship"
video="$ship/arbiter-video"
date -u +%FT%TZ >"$out/date.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode --format=csv >"$out/gpu.csv" 2>&1 || true
command -v nvidia-cuda-mps-control >"$out/mps-binary.txt" 2>&1 || echo "no nvidia-cuda-mps-control on PATH" >"$out/mps-binary.txt"

gpu_pipeline
voice="$work/voices/wide-voice"
if [ ! -f "$voice/voice.json" ]; then
    python3 scripts/make-test-voice.py "$voice" --name wide-voice >"$out/voice.txt" 2>&1
fi

# The supervisor makes the compute gate (yield_to_interactive is on by default); the levers
# that do not yield switch it off on both sides (the video gets no ARBITER_COMPUTE_GATE,
# the voice --compute-gate off).
sup="$work/priority.sock"
rm -rf "$work/priority-state" "$sup"
"$ship/arbiter-supervisor" --socket "$sup" --state-dir "$work/priority-state" \
    --sample-interval 100ms ${SUPERVISOR_ARGS:-} >"$out/supervisor.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -S "$sup" ] && break; sleep 0.1; done
"$ship/arbiter-supervisor" events --address "$sup" --record "$out/samples.csv" >/dev/null 2>&1 &
pids+=($!)
"$ship/arbiter-supervisor" status --address "$sup" >"$out/status.txt" 2>&1 || true
gate="$(ls "$work"/priority-state/compute/*.gate 2>/dev/null | head -1)"
echo "gate: $gate" >>"$out/status.txt"

gpu=(--require-gpu)
[ "${REQUIRE_GPU:-1}" = 0 ] && gpu=()
[ -n "${LEASE_BYTES:-}" ] && gpu+=(--lease-bytes "$LEASE_BYTES")

# Video jobs of one lever, back to back, until killed; each job's wall time in ms.
video_loop() {
    local lever="$1" n=0
    local env=()
    case "$lever" in
        yield | mps-yield) env+=("ARBITER_COMPUTE_GATE=$gate") ;;
        *) env+=("ARBITER_COMPUTE_GATE=") ;;
    esac
    case "$lever" in
        mps-limit) env+=("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=${MPS_VIDEO_PCT:-50}") ;;
        mps-prio) env+=("CUDA_MPS_CLIENT_PRIORITY=1") ;;
    esac
    while true; do
        local started ended
        started=$(date +%s%N)
        if env "${env[@]}" "$video" generate --pipeline "$pipeline" --prompt "$seed_prompt" --seed 7 \
            --out "$work/prio-$lever" >>"$out/video-$lever.log" 2>&1; then
            ended=$(date +%s%N)
            echo $(((ended - started) / 1000000)) >>"$out/video-$lever.times"
            n=$((n + 1))
            [ "$n" -le 2 ] && find "$work/prio-$lever" -name metadata.json -exec cp {} "$out/metadata-$lever-$n.json" \;
        fi
        rm -rf "$work/prio-$lever"
    done
}

for lever in $approaches; do
    echo "== $lever" >&2
    case "$lever" in
        mps*)
            if ! command -v nvidia-cuda-mps-control >/dev/null; then
                echo "$lever: no nvidia-cuda-mps-control" >>"$out/failures.txt"
                continue
            fi
            mkdir -p "$mps_pipe" "$mps_log"
            export CUDA_MPS_PIPE_DIRECTORY="$mps_pipe" CUDA_MPS_LOG_DIRECTORY="$mps_log"
            nvidia-cuda-mps-control -d >>"$out/mps.txt" 2>&1 || echo "$lever: the MPS daemon did not start" >>"$out/failures.txt"
            sleep 1
            ;;
        *) unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ;;
    esac
    case "$lever" in
        yield | mps-yield) export ARBITER_TTS_COMPUTE_GATE="$gate" ;;
        *) export ARBITER_TTS_COMPUTE_GATE=off ;;
    esac
    loop=""
    if [ "$lever" != idle ]; then
        video_loop "$lever" &
        loop=$!
        sleep "${SETTLE:-5}"
    fi
    echo "$lever $(date +%s%N)" >>"$out/marks.txt"
    "$ship/tts-speech-bench" --server "$PWD/$ship/arbiter-tts" --voice-dir "$voice" \
        --supervisor "$sup" "${gpu[@]}" --rounds "$rounds" --interval "$interval" --warmup 3 --label "$lever" \
        --server-log "$out/tts-server-$lever.log" --json "$out/tts-$lever.json" >"$out/tts-$lever.txt" 2>&1 ||
        echo "$lever: the speech bench failed" >>"$out/failures.txt"
    case "$lever" in
        mps*)
            {
                echo "== $lever"
                nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
                echo get_server_list | nvidia-cuda-mps-control
            } >>"$out/mps-processes.txt" 2>&1 || true
            ;;
    esac
    if [ -n "$loop" ]; then
        kill "$loop" 2>/dev/null || true
        pkill -f "prio-$lever" 2>/dev/null || true
        wait "$loop" 2>/dev/null || true
    fi
    case "$lever" in mps*) mps_stop ;; esac
    "$ship/arbiter-supervisor" status --address "$sup" >"$out/status-after-$lever.txt" 2>&1 || true
done

# The shipped configuration, managed by a supervisor of its own.
if [ -n "$managed" ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
    pids=()
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY ARBITER_TTS_COMPUTE_GATE
    printf '[jobs]\nframes_without_ffmpeg = true\n[compute]\nyield_to_interactive = false\n[compute.mps]\nenabled = true\nworker_priority = 1\n' >"$work/managed.toml"
    sup="$work/managed.sock"
    rm -rf "$work/managed-state" "$sup"
    "$ship/arbiter-supervisor" --config "$work/managed.toml" --socket "$sup" --state-dir "$work/managed-state" \
        --pipelines-dir "$work/pipelines" --worker "$PWD/$video" --sample-interval 100ms ${SUPERVISOR_ARGS:-} \
        >"$out/supervisor-managed.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$sup" ] && break; sleep 0.1; done
    "$ship/arbiter-supervisor" events --address "$sup" --record "$out/samples-managed.csv" >/dev/null 2>&1 &
    pids+=($!)
    "$ship/arbiter-supervisor" status --address "$sup" >"$out/status-managed.txt" 2>&1 || true
    for lever in $managed; do
        echo "== $lever" >&2
        loop=""
        if [ "$lever" = managed ]; then
            (
                n=0
                while true; do
                    started=$(date +%s%N)
                    if "$ship/arbiter-supervisor" generate --address "$sup" --pipeline "$preset" \
                        --prompt "$seed_prompt" >>"$out/video-$lever.log" 2>&1; then
                        ended=$(date +%s%N)
                        echo $(((ended - started) / 1000000)) >>"$out/video-$lever.times"
                        n=$((n + 1))
                        if [ "$n" -le 2 ]; then
                            m=$(ls -t "$work"/managed-state/outputs/*/output/metadata.json 2>/dev/null | head -1)
                            [ -n "$m" ] && cp "$m" "$out/metadata-$lever-$n.json"
                        fi
                    else
                        sleep 1
                    fi
                done
            ) &
            loop=$!
            sleep "${SETTLE:-5}"
        fi
        echo "$lever $(date +%s%N)" >>"$out/marks.txt"
        "$ship/tts-speech-bench" --server "$PWD/$ship/arbiter-tts" --voice-dir "$voice" \
            --supervisor "$sup" "${gpu[@]}" --rounds "$rounds" --interval "$interval" --warmup 3 --label "$lever" \
            --server-log "$out/tts-server-$lever.log" --json "$out/tts-$lever.json" >"$out/tts-$lever.txt" 2>&1 ||
            echo "$lever: the speech bench failed" >>"$out/failures.txt"
        {
            echo "== $lever"
            nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv
        } >>"$out/mps-processes.txt" 2>&1 || true
        "$ship/arbiter-supervisor" status --address "$sup" >"$out/status-during-$lever.txt" 2>&1 || true
        if [ -n "$loop" ]; then
            kill "$loop" 2>/dev/null || true
            wait "$loop" 2>/dev/null || true
        fi
    done
    "$ship/arbiter-supervisor" jobs --address "$sup" >"$out/jobs-managed.txt" 2>&1 || true
    # The supervisor's shutdown tells its MPS daemon to quit.
    kill -TERM "${pids[0]}" 2>/dev/null || true
    wait "${pids[0]}" 2>/dev/null || true
    pgrep -af nvidia-cuda-mps >"$out/mps-left-after-shutdown.txt" 2>&1 || echo "none" >"$out/mps-left-after-shutdown.txt"
fi
echo "done $(date +%s%N)" >>"$out/marks.txt"
