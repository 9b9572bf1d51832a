#!/usr/bin/env bash
# The main job, on a simulated GPU (no NVIDIA card needed): a supervisor owns a 96 GiB
# card (the seed's RTX PRO 6000), a foreign process shrinks its budget, the TTS stack holds
# its models under leases, arbiter-tts speaks a sentence, a real video job runs in its own leased worker process (a
# generated staged pipeline, `make-pipeline --preset tiny`: LTX-shaped components with random weights, on the CPU) with
# that speech as its soundtrack, and its memory is checked back before the lease is returned; then big jobs queue for what is left, and a critical request makes the
# preemptible lip-sync model give memory back. Every step prints the supervisor's view.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build -q --workspace --bins
bin="$PWD/target/debug/arbiter-supervisor"

work="$(mktemp -d)"
sock="$work/supervisor.sock"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
status() { "$bin" status --address "$sock"; }
hold() { "$bin" hold --address "$sock" "$@" >>"$work/holders.log" 2>&1 & pids+=($!); }
settle() { sleep "${1:-0.5}"; }

video="$PWD/target/debug/arbiter-video"
step "0. A staged pipeline to serve: LTX-shaped TorchScript components with RANDOM weights (its video is noise)"
"$video" make-pipeline --preset tiny --out "$work/pipelines/tiny-ltx" 2>"$work/make-pipeline.log"
"$video" inspect "$work/pipelines/tiny-ltx"

step "1. A supervisor on a simulated 96 GiB GPU (512 MiB reserve)"
"$bin" --simulated-gpus 96GiB --simulated-dir "$work/gpu" --state-dir "$work/state" --socket "$sock" \
    --pipelines-dir "$work/pipelines" --sample-interval 200ms 2>"$work/supervisor.log" &
supervisor=$!
pids+=($supervisor)
for _ in $(seq 100); do [ -S "$sock" ] && "$bin" status --address "$sock" >/dev/null 2>&1 && break; sleep 0.1; done
"$bin" events --address "$sock" >"$work/events.log" 2>&1 &
pids+=($!)
status

step "2. A process Arbiter does not know takes 2 GiB: the budget shrinks by as much"
sleep 600 &
foreign=$!
pids+=($foreign)
echo $((2 << 30)) >"$work/gpu/0/$foreign"
settle
status

step "3. The TTS stack: voices (4 GiB, interactive) and lip-sync (2.4 GiB, batch, preemptible)"
hold --holder "tts voices" --bytes 4GiB --priority interactive
hold --holder "tts lip-sync" --bytes 2.4GiB --priority batch --preemptible
settle
status

step "4. arbiter-tts speaks the soundtrack (eSpeak NG voice, streamed a sentence at a time)"
"$PWD/target/debug/arbiter-tts" serve --socket "$work/tts.sock" 2>"$work/tts.log" &
pids+=($!)
for _ in $(seq 100); do [ -S "$work/tts.sock" ] && break; sleep 0.1; done
sleep 0.3
"$PWD/target/debug/arbiter-tts" say --socket "$work/tts.sock" --out "$work/voice.wav" \
    --text "Welcome to Arbiter. One card, many models, and no memory errors."

step "5. A video job with that soundtrack: its own arbiter-video process under a lease sized from the pipeline"
echo "(stages load one component at a time; the text encoder is streamed block by block)"
"$bin" generate --address "$sock" --pipeline tiny-ltx --prompt "a lighthouse at dusk, waves" \
    --audio "@$work/voice.wav" --width 256 --height 192 --frames 17 --fps 8 --steps 6 --seed 42 \
    --placement text_encoder=stream
status

step "6. Video job 1 asks for its cold-start peak, 39.5 GiB: granted"
hold --holder "video job 1 (cold start)" --bytes 39.5GiB
job1=$!
settle
step "7. Video job 2 (batch) asks for 50 GiB: it does not fit beside job 1, so it waits in line"
hold --holder "video job 2" --bytes 50GiB --priority batch
settle
status

step "8. Job 1 ends (its process exits): its lease frees at once and job 2 is granted"
{ kill -9 "$job1" && wait "$job1"; } 2>/dev/null || true
settle
status

step "9. A critical request for 38.5 GiB: the lip-sync model is asked to give 1.4 GiB back"
hold --holder "urgent render" --bytes 38.5GiB --priority critical
settle 1
status

step "10. The foreign process exits: its 2 GiB return to the budget"
kill "$foreign"
settle
status

step "What the holders saw"
cat "$work/holders.log"
step "The event feed (arbiter-supervisor events)"
cat "$work/events.log"

step "11. SIGTERM: the supervisor revokes every lease, tells the holders, and exits cleanly"
kill -TERM "$supervisor"
wait "$supervisor" && echo "supervisor exited with status 0"
tail -n 3 "$work/supervisor.log"
echo
echo "logs kept in $work"
