#!/usr/bin/env bash
# Why is a component's first forward slower in some processes? The same video request, warm
# in the page cache, run by processes started three ways, interleaved: from this shell
# (`shell`), from this shell with exactly the environment the supervisor gives its workers
# (`workerenv`: env -i with the variables job::spawn passes), and as a job of a supervisor
# (`job`). Each process's metadata.json has every component's first forward
# (first_call_ms, synchronized); summary.txt puts them side by side. Also kept: this shell's
# environment and the per-user caches CUDA and PyTorch keep on disk, before and after.
#
# Run from the repository root on the GPU host with ship/ filled by scripts/ship.sh; results
# in $RESULTS, packed into $OUT/first-forward.tgz. ORDER lists the runs. As a smoke test on a
# machine without a GPU: PRESET=tiny MAKE_DEVICE=cpu SUPERVISOR_ARGS="--simulated-gpus 80GiB
# --simulated-dir /tmp/sim-gpu".
set -euo pipefail
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/first-forward}"
work="${WORK:-/tmp/arbiter-work}"
preset="${PRESET:-ltx-half}"
order="${ORDER:-shell shell workerenv job shell workerenv job job shell}"
pipeline="$work/$preset"
mkdir -p "$out" "$work/pipelines"
sup_pid=""
finish() {
    if [ -n "$sup_pid" ]; then kill -TERM "$sup_pid" 2>/dev/null || true; wait "$sup_pid" 2>/dev/null || true; fi
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/first-forward.tgz" -C "$out" . || true; fi
}
trap finish EXIT
LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH
video="$PWD/$ship/arbiter-video"
S="$ship/arbiter-supervisor"
date -u +%FT%TZ >"$out/date.txt"
env | sort >"$out/env.txt"
caches() {
    for d in "${HOME:-/nonexistent}/.nv" "${HOME:-/nonexistent}/.cache" "${XDG_CACHE_HOME:-/nonexistent}" \
        "${CUDA_CACHE_PATH:-/nonexistent}" /tmp; do
        if [ -e "$d" ]; then du -a -d 3 "$d" 2>/dev/null | sort -k2 | head -50 || true; fi
    done
}
caches >"$out/caches-before.txt"

if [ ! -f "$pipeline/manifest.toml" ]; then
    "$video" make-pipeline --preset "$preset" --out "$pipeline" --device "${MAKE_DEVICE:-cuda}" >"$out/make.log" 2>&1
fi
ln -sfn "$pipeline" "$work/pipelines/$preset"
"$video" prewarm "$pipeline" >"$out/prewarm.txt"
uuid="$(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null | head -1 || true)"

cat >"$work/first-forward.toml" <<TOML
[jobs]
frames_without_ffmpeg = true
TOML
sock="$work/first-forward.sock"
rm -rf "$work/first-forward-state" "$sock"
"$S" --config "$work/first-forward.toml" --socket "$sock" --state-dir "$work/first-forward-state" \
    --pipelines-dir "$work/pipelines" --worker "$video" ${SUPERVISOR_ARGS:-} >"$out/supervisor.log" 2>&1 &
sup_pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done

# The variables job::spawn passes through, when set here.
passed=()
for k in PATH HOME LANG RUST_LOG LD_LIBRARY_PATH TMPDIR; do
    [ -n "${!k:-}" ] && passed+=("$k=${!k}")
done
n=0
for how in $order; do
    n=$((n + 1))
    name="$(printf '%02d' "$n")-$how"
    prompt="first forward $n: a harbour at dawn"
    case "$how" in
        shell)
            "$video" generate --pipeline "$pipeline" --prompt "$prompt" --out "$work/ff-out" \
                >"$out/$name.log" 2>&1 || echo "$name failed" >>"$out/failures.txt"
            ;;
        workerenv)
            (cd "$work" && env -i "${passed[@]}" CUDA_VISIBLE_DEVICES="$uuid" setsid "$video" generate \
                --pipeline "$pipeline" --prompt "$prompt" --out "$work/ff-out" </dev/null \
                >"$out/$name.log" 2>&1) || echo "$name failed" >>"$out/failures.txt"
            ;;
        job)
            before="$(find "$work/first-forward-state" -name metadata.json 2>/dev/null | sort)"
            "$S" generate --address "$sock" --pipeline "$preset" --prompt "$prompt" \
                >"$out/$name.log" 2>&1 || echo "$name failed" >>"$out/failures.txt"
            comm -13 <(echo "$before") <(find "$work/first-forward-state" -name metadata.json | sort) |
                head -1 | while read -r m; do cp "$m" "$out/metadata-$name.json"; done
            ;;
    esac
    if [ -d "$work/ff-out" ]; then
        find "$work/ff-out" -name metadata.json | head -1 | while read -r m; do cp "$m" "$out/metadata-$name.json"; done
        rm -rf "$work/ff-out"
    fi
done
caches >"$out/caches-after.txt"
python3 - "$out" >"$out/summary.txt" <<'PY' || true
import glob, json, sys
out = sys.argv[1]
for path in sorted(glob.glob(f"{out}/metadata-*.json")):
    m = json.load(open(path))
    first = {s["stage"]: s.get("first_call_ms") for s in m.get("pipeline_stages", [])}
    load = {s["stage"]: s.get("load_ms") for s in m.get("pipeline_stages", [])}
    name = path.rsplit("/", 1)[-1][len("metadata-"):-len(".json")]
    print(
        f"{name:14} first forward: text {first.get('text') or 0:6.0f} ms, audio {first.get('audio') or 0:5.0f} ms, "
        f"denoise {first.get('denoise') or 0:6.0f} ms, decode {first.get('decode') or 0:5.0f} ms "
        f"(loads: text {load.get('text') or 0:.0f} ms, denoise {load.get('denoise') or 0:.0f} ms)"
    )
PY
cat "$out/summary.txt"
