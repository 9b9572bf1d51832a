#!/usr/bin/env bash
# The lip-sync model's lease on a real GPU: arbiter-tts with a generated lip-sync model
# (random weights) under its own preemptible lease from a supervisor on the card. Renders a
# face to a WAV with `arbiter-tts lip-sync`: twice on the GPU under the lease; then a
# higher-class hold that cannot fit beside it makes the supervisor reclaim the lease (the
# model leaves the GPU, its cache emptied) and a render falls back to the CPU; the hold ends
# and the next render brings the model back. The supervisor's budget is narrowed with
# --reserve so that the hold and the lease cannot fit together (BUDGET_RESERVE, LEASE, HOLD).
# Each render's report (device, leased, timings, the service's status) is a JSON file; the
# supervisor's per-process NVML samples are in samples.csv for `arbiter-supervisor plot`.
#
# Run from the repository root on the GPU host with ship/ filled by scripts/ship.sh; results
# in $RESULTS, packed into $OUT/lipsync.tgz. As a smoke test on a machine without a GPU:
# BUDGET_RESERVE=0B HOLD=4GiB SUPERVISOR_ARGS="--simulated-gpus 5GiB --simulated-dir /tmp/sim-gpu".
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup lipsync
export LD_LIBRARY_PATH="$PWD/$ship/lib:$LD_LIBRARY_PATH"
export ESPEAK_DATA_PATH="$PWD/$ship"
tts_pid=""
hold_pid=""
events_pid=""
feed_pid=""
stop_all() {
    for pid in $hold_pid $tts_pid $events_pid $feed_pid; do kill "$pid" 2>/dev/null || true; done
    # The reclaim end to end, step by step, from the event feed and the service's log.
    python3 - "$out/events.txt" "$out/tts.log" >"$out/reclaim-steps.txt" 2>&1 <<'PY' || true
import re, sys, datetime
events, tts = open(sys.argv[1]).read().splitlines(), open(sys.argv[2]).read()
def at(line):
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
def first(pattern):
    return next((l for l in events if re.search(pattern, l)), None)
steps = [("reclaim asked", r" reclaim  "), ("lip-sync lease released", r" released .*arbiter-tts/lipsync"),
         ("NVML shows it free (Returned)", r" returned .*arbiter-tts/lipsync"),
         ("waiter granted", r" granted .* to a big video job")]
found = [(name, first(p)) for name, p in steps]
t0 = at(found[0][1]) if found[0][1] else None
print(f"{'step':<32} {'ms after the reclaim':>22}")
for name, line in found:
    print(f"{name:<32} {'-' if line is None or t0 is None else f'{(at(line) - t0) * 1e3:.2f}':>22}")
m = re.search(r"took_ms=(\d+).*?offload_ms=([\d.]+)", tts)
if m:
    print(f"service: model off the GPU in {float(m.group(2)):.2f} ms, reclaim answered (Release returned) in {m.group(1)} ms")
for name, line in found:
    if line: print("  ", line)
for line in events:
    if " unverified " in line or " returned " in line: print("  ", line)
PY
    gpu_finish
}
trap stop_all EXIT

model="$work/lipsync-model"
if [ ! -f "$model/lipsync.json" ]; then
    python3 scripts/make-test-lipsync.py "$model" --face-size "${FACE_SIZE:-96}" --fps 25 \
        --channels "${CHANNELS:-256}" >"$out/make-model.txt" 2>&1
fi
# A face (PNG) and 2 s of speech-like audio (WAV), from the standard library.
python3 - "$work/face.png" "$work/speech.wav" <<'PY'
import math, struct, sys, wave, zlib
face, speech = sys.argv[1], sys.argv[2]
w = h = 128
rows = b"".join(b"\x00" + bytes(v for x in range(w) for v in (x * 2, y * 2, 128)) for y in range(h))
chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(face, "wb").write(png)
rate = 16000
with wave.open(speech, "wb") as out:
    out.setnchannels(1); out.setsampwidth(2); out.setframerate(rate)
    out.writeframes(b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 180 * i / rate)
        * (0.5 + 0.5 * math.sin(2 * math.pi * 3 * i / rate)))) for i in range(2 * rate)))
PY

SUPERVISOR_ARGS="--reserve ${BUDGET_RESERVE:-75GiB} --sample-interval 100ms ${SUPERVISOR_ARGS:-}"
gpu_supervisor
"$S" events --address "$sock" --record "$out/samples.csv" >/dev/null 2>&1 &
events_pid=$!
"$S" events --address "$sock" >"$out/events.txt" 2>&1 &
feed_pid=$!
tts_sock="$work/lipsync-tts.sock"
rm -f "$tts_sock"
"$ship/arbiter-tts" serve --socket "$tts_sock" --supervisor "$sock" --lipsync-dir "$model" \
    --lipsync-lease-bytes "${LEASE:-2GiB}" --lipsync-wait-ms 300 >"$out/tts.log" 2>&1 &
tts_pid=$!
for _ in $(seq 100); do [ -S "$tts_sock" ] && break; sleep 0.1; done
sleep "${SETTLE:-2}"

# render NAME: one lip-sync render, its frames discarded, its report kept.
render() {
    "$ship/arbiter-tts" lip-sync --socket "$tts_sock" --face "$work/face.png" \
        --audio "$work/speech.wav" --out "$work/frames-$1" --json "$out/render-$1.json" |
        tee -a "$out/renders.txt" || echo "render $1 failed" >>"$out/failures.txt"
    rm -rf "$work/frames-$1"
}
echo "$(date +%s.%N) start" >>"$out/marks.txt"
render 1-first
render 2-warm
echo "$(date +%s.%N) hold" >>"$out/marks.txt"
"$S" hold --address "$sock" --bytes "${HOLD:-3GiB}" --priority interactive --holder "a big video job" \
    --max-wait 20s >"$out/hold.log" 2>&1 &
hold_pid=$!
sleep "${HOLD_SETTLE:-3}"
"$S" leases --address "$sock" >"$out/leases-during-hold.txt" 2>&1 || true
render 3-reclaimed
echo "$(date +%s.%N) release" >>"$out/marks.txt"
kill -INT "$hold_pid" 2>/dev/null || true
wait "$hold_pid" 2>/dev/null || true
hold_pid=""
sleep 1
render 4-back
render 5-warm-again
echo "$(date +%s.%N) done" >>"$out/marks.txt"
sleep 1
