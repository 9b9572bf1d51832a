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
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup first-forward
order="${ORDER:-shell shell workerenv job shell workerenv job job shell}"
env | sort >"$out/env.txt"
caches() {
    for d in "${HOME:-/nonexistent}/.nv" "${HOME:-/nonexistent}/.cache" "${XDG_CACHE_HOME:-/nonexistent}" \
        "${CUDA_CACHE_PATH:-/nonexistent}" /tmp; do
        if [ -e "$d" ]; then du -a -d 3 "$d" 2>/dev/null | sort -k2 | head -50 || true; fi
    done
}
caches >"$out/caches-before.txt"
gpu_pipeline
uuid="$(nvidia-smi --query-gpu=uuid --format=csv,noheader 2>/dev/null | head -1 || true)"
gpu_supervisor

# The variables job::spawn passes through, when set here.
passed=()
for k in PATH HOME LANG RUST_LOG LD_LIBRARY_PATH TMPDIR CUDA_CACHE_MAXSIZE CUDA_CACHE_DISABLE; do
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
            before="$(find "$state" -name metadata.json 2>/dev/null | sort)"
            "$S" generate --address "$sock" --pipeline "$preset" --prompt "$prompt" \
                >"$out/$name.log" 2>&1 || echo "$name failed" >>"$out/failures.txt"
            comm -13 <(echo "$before") <(find "$state" -name metadata.json | sort) |
                head -1 | while read -r m; do cp "$m" "$out/metadata-$name.json"; done
            ;;
    esac
    gpu_keep_metadata "$work/ff-out" "$name"
    rm -rf "$work/ff-out"
done
caches >"$out/caches-after.txt"
gpu_summary
