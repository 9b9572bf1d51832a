#!/usr/bin/env bash
# arbiter-tts on the GPU host: time to first audio (TTFA) and real-time factor (RTF) of the
# eSpeak NG voice and of TorchScript voices on the GPU, each next to a bare no-op call
# (grpc.health Check) on the same server in the same run (tts-service/benches/speech.rs).
#
# Runs from the repository root on the GPU host (../shared/gpu-host.md) with what
# scripts/ship-tts.sh put in $SHIP (default ship/): arbiter-tts, tts-speech-bench, lib/ (eSpeak
# NG and a stub pcaudio), espeak-ng-data/, and arbiter-supervisor (and arbiter-video, which it
# names as its worker; no job is run). Needs python3 with torch (the host's) for the voices.
#
# The TorchScript voices are held on the GPU under a real lease: a supervisor runs on the card
# through NVML and the bench waits until it lists the server's lease. Runs ($RUNS, in order):
#   espeak     the eSpeak NG voice (CPU; no lease)
#   test-gpu   scripts/make-test-voice.py's voice as it writes it (32 channels, ~20k
#              parameters): the serving path's floor on the GPU
#   wide-gpu   the same model at $WIDE_CHANNELS channels (default 2048: ~26M parameters, the
#              size of a Piper/VITS voice; its compute is still far below VITS's, which has a
#              HiFi-GAN decoder this test model lacks), random weights like the other
#   test-cpu, wide-cpu  the same voices with CUDA hidden (CUDA_VISIBLE_DEVICES=), on this
#              host's CPUs, for comparison
# Results go to $RESULTS (default /tmp/tts-bench): <run>.md (the bench's table), <run>.json
# (figures and every sample), server-<run>.log, nvml-<run>.csv (GPU memory every 100 ms),
# supervisor.log, summary.md; packed into $OUT/tts-bench.tgz when $OUT is set.
# ROUNDS (default 30) and WARMUP (default 3) set the rounds of each run. To try the script on a
# machine without a GPU: REQUIRE_GPU=0 (the -gpu runs then run on the CPU) and
# SUPERVISOR_ARGS="--simulated-gpus 80GiB --simulated-dir DIR" (flags added to the supervisor's).
set -euo pipefail
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/tts-bench}"
work="${WORK:-/tmp/tts-bench-work}"
rounds="${ROUNDS:-30}"
warmup="${WARMUP:-3}"
wide="${WIDE_CHANNELS:-2048}"
runs="${RUNS:-espeak test-gpu wide-gpu test-cpu wide-cpu}"
mkdir -p "$out" "$work"
supervisor_pid=""
smi_pid=""
finish() {
    if [ -n "$smi_pid" ]; then kill "$smi_pid" 2>/dev/null || true; fi
    if [ -n "$supervisor_pid" ]; then
        kill -TERM "$supervisor_pid" 2>/dev/null || true
        wait "$supervisor_pid" 2>/dev/null || true
    fi
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/tts-bench.tgz" -C "$out" . || true; fi
}
trap finish EXIT

for f in arbiter-tts tts-speech-bench arbiter-supervisor lib/libespeak-ng.so.1 espeak-ng-data/phontab; do
    [ -e "$ship/$f" ] || { echo "$ship/$f is missing: run scripts/ship-tts.sh on the build machine" >&2; exit 2; }
done
torch_lib="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH="$PWD/$ship/lib:$torch_lib"
# libespeak-ng reads $ESPEAK_DATA_PATH/espeak-ng-data (the host has no eSpeak NG of its own).
export ESPEAK_DATA_PATH="$PWD/$ship"

date -u +%FT%TZ >"$out/date.txt"
git rev-parse HEAD >"$out/commit.txt" 2>/dev/null || true
git status --short >>"$out/commit.txt" 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1 || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >"$out/torch.txt" 2>&1 || true
"$ship/arbiter-tts" info >"$out/info.txt" 2>&1 || true

# The voices (random weights; the audio is noise of the right length, not speech).
voices="$work/voices"
python3 scripts/make-test-voice.py "$voices/test-voice" --name test-voice >"$out/voices.txt" 2>&1
python3 scripts/make-test-voice.py "$voices/wide-voice" --name "wide-voice" >>"$out/voices.txt" 2>&1
# The same model, wider: make-test-voice.py has no size flag, so its class is built here.
python3 - "$voices" "$wide" >>"$out/voices.txt" 2>&1 <<'EOF'
import importlib.util, json, os, sys
import torch
voices, channels = sys.argv[1], int(sys.argv[2])
spec = importlib.util.spec_from_file_location("make_test_voice", "scripts/make-test-voice.py")
mtv = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mtv)
torch.manual_seed(0)
config = json.load(open(os.path.join(voices, "wide-voice", "voice.json")))
model = mtv.TinyVits(config["num_symbols"], config["hop_length"], channels=channels).eval()
scripted = torch.jit.script(model)
scripted.save(os.path.join(voices, "wide-voice", "voice.ts.pt"))
config["note"] += f"; {channels} channels (examples/gpu-tts-bench.sh)"
json.dump(config, open(os.path.join(voices, "wide-voice", "voice.json"), "w"), indent=2)
with torch.no_grad():
    ids, lengths = torch.tensor([[1, 0, 10, 0, 2]]), torch.tensor([5])
    scales = torch.tensor([0.667, 1.0, 0.8])
    audio = scripted(ids, lengths, scales)
    assert audio.shape[-1] == int(scripted.durations(ids, lengths, scales).sum()) * config["hop_length"]
for name in ("test-voice", "wide-voice"):
    m = torch.jit.load(os.path.join(voices, name, "voice.ts.pt"))
    n = sum(p.numel() for p in m.parameters())
    print(f"{name}: {n} parameters ({n * 4 / 2**20:.1f} MiB fp32)")
EOF

# The supervisor, on the real card through NVML.
sup="$work/supervisor.sock"
rm -rf "$work/state" "$sup"
mkdir -p "$work/pipelines"
"$ship/arbiter-supervisor" --socket "$sup" --state-dir "$work/state" --pipelines-dir "$work/pipelines" \
    --worker "$PWD/$ship/arbiter-video" --sample-interval 100ms ${SUPERVISOR_ARGS:-} >"$out/supervisor.log" 2>&1 &
supervisor_pid=$!
for _ in $(seq 100); do [ -S "$sup" ] && break; sleep 0.1; done
if [ ! -S "$sup" ]; then
    echo "the supervisor did not start (the -gpu runs will fail): $(tail -3 "$out/supervisor.log")" |
        tee -a "$out/failures.txt" >&2
fi
"$ship/arbiter-supervisor" status --address "$sup" >"$out/supervisor-status.txt" 2>&1 || true

# The -gpu runs fail when the voice did not land on the GPU (REQUIRE_GPU=0: measure anyway).
gpu=(--require-gpu)
[ "${REQUIRE_GPU:-1}" = 0 ] && gpu=()
for run in $runs; do
    env_args=()
    case "$run" in
        espeak) args=() ;;
        test-gpu) args=(--voice-dir "$voices/test-voice" --supervisor "$sup" "${gpu[@]}") ;;
        wide-gpu) args=(--voice-dir "$voices/wide-voice" --supervisor "$sup" "${gpu[@]}") ;;
        test-cpu) args=(--voice-dir "$voices/test-voice"); env_args=(CUDA_VISIBLE_DEVICES=) ;;
        wide-cpu) args=(--voice-dir "$voices/wide-voice"); env_args=(CUDA_VISIBLE_DEVICES=) ;;
        *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    echo "== $run" >&2
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 100 \
        >"$out/nvml-$run.csv" 2>/dev/null &
    smi_pid=$!
    if ! env "${env_args[@]}" "$ship/tts-speech-bench" --server "$ship/arbiter-tts" \
        --rounds "$rounds" --warmup "$warmup" --label "$run" --json "$out/$run.json" \
        --server-log "$out/server-$run.log" "${args[@]}" >"$out/$run.md" 2>"$out/$run.err"; then
        echo "run $run failed: $(tail -1 "$out/$run.err")" | tee -a "$out/failures.txt" >&2
    fi
    kill "$smi_pid" 2>/dev/null || true
    wait "$smi_pid" 2>/dev/null || true
    smi_pid=""
    cat "$out/$run.md" >&2
done

"$ship/arbiter-supervisor" status --address "$sup" >>"$out/supervisor-status.txt" 2>&1 || true
{
    echo "# arbiter-tts speech bench, $(cat "$out/date.txt")"
    echo
    sed 1d "$out/gpu.csv" 2>/dev/null || true
    grep '^torch' "$out/torch.txt" 2>/dev/null || true
    grep -E '^(wrote|[a-z-]+: [0-9]+ parameters)' "$out/voices.txt" 2>/dev/null || true
    for run in $runs; do echo; cat "$out/$run.md" 2>/dev/null || true; done
    if [ -f "$out/failures.txt" ]; then echo; cat "$out/failures.txt"; fi
} >"$out/summary.md"
echo "results in $out (summary.md)" >&2
