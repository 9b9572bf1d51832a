#!/usr/bin/env bash
# Safetensors loaders side by side on the GPU host (issue #16): safetensors' load_file,
# fastsafetensors 0.5.0 (no GDS; O_DIRECT, its default, and buffered) and Arbiter's loader, on
# one 16 GiB file of 128 MiB bf16 tensors, warm and cold, against the limits measured in the
# same run (examples/gpu-loader-compare.py says how). Runs from the repository root with
# the release binaries and the wheels in $SHIP (scripts/ship.sh puts fastsafetensors, and
# safetensors in case the host lacks it, into ship/wheels). The wheels are unpacked into
# $WORK/loader-compare/pylib (a wheel without scripts or data is its files; no pip, no
# network, nothing installed system-wide) and put on PYTHONPATH beside the host's torch.
#
# Results: results.json and results.md in $OUT (and everything in $OUT/loader-compare.tgz).
# Settings: SIZE_GIB (16), TENSOR_MIB (128), WARM_REPEAT (3), COLD_REPEAT (3), LOADERS
# (all four), DEVICE (cuda; cpu for a dry run), WHEELS ($SHIP/wheels), WORK, RESULTS.
# About 6 minutes on the H100 host with a 16 GiB file: writing it ~15 s (reused if there), the
# limits ~35 s (two cold reads), 12 warm runs ~1.8 min (fastsafetensors with O_DIRECT reads the
# disk even when the file is cached), 12 cold runs ~3.2 min (each a 16 GiB disk read).
set -euo pipefail
ship="${SHIP:-ship}"
out="${RESULTS:-/tmp/loader-compare}"
work="${WORK:-/tmp/arbiter-work}/loader-compare"
wheels="${WHEELS:-$ship/wheels}"
pylib="$work/pylib"
mkdir -p "$out" "$work"
pack() {
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        cp "$out"/results.json "$out"/results.md "$OUT"/ 2>/dev/null || true
        tar czf "$OUT/loader-compare.tgz" -C "$out" . || true
    fi
}
trap pack EXIT
LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
export LD_LIBRARY_PATH
date -u +%FT%TZ >"$out/date.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1 || true

# The wheels for this python (cp312 on the host), unpacked.
tag=$(python3 -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
rm -rf "$pylib"
mkdir -p "$pylib"
unpack() { python3 -m zipfile -e "$1" "$pylib"; echo "unpacked $(basename "$1")" >>"$out/wheels.txt"; }
: >"$out/wheels.txt"
fst=$(ls "$wheels"/fastsafetensors-0.5.0-"$tag"-*.whl 2>/dev/null | head -1 || true)
[ -n "$fst" ] || { echo "no fastsafetensors 0.5.0 wheel for $tag in $wheels (scripts/ship.sh)" >&2; exit 1; }
unpack "$fst"
if python3 -c 'import safetensors' 2>/dev/null; then
    echo "safetensors from the host: $(python3 -c 'import safetensors; print(safetensors.__version__, safetensors.__file__)')" >>"$out/wheels.txt"
else
    st=$(ls "$wheels"/safetensors-*.whl 2>/dev/null | head -1 || true)
    [ -n "$st" ] || { echo "the host has no safetensors and $wheels no wheel of it" >&2; exit 1; }
    unpack "$st"
fi
export PYTHONPATH="$pylib${PYTHONPATH:+:$PYTHONPATH}"

# fastsafetensors dlopen()s "libcudart.so", unversioned; torch's pip wheels bring only
# libcudart.so.13 (under site-packages/nvidia), so without a CUDA toolkit on the loader path
# it finds no GPU. Then a link to the libcudart torch itself loads, in a directory of ours put
# first on LD_LIBRARY_PATH for this run: the same runtime, nothing changed on the host.
if ! python3 -c 'import ctypes; ctypes.CDLL("libcudart.so")' 2>/dev/null; then
    cudart=$(python3 -c "import torch; print(sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libcudart.so' in l})[0])" 2>/dev/null || true)
    if [ -n "$cudart" ]; then
        mkdir -p "$work/cudart"
        ln -sfn "$cudart" "$work/cudart/libcudart.so"
        LD_LIBRARY_PATH="$work/cudart:$LD_LIBRARY_PATH"
        echo "libcudart.so -> $cudart (for fastsafetensors)" >>"$out/wheels.txt"
    else
        echo "no libcudart loaded by torch: fastsafetensors will find no GPU" >>"$out/wheels.txt"
    fi
fi

# shellcheck disable=SC2086 # LOADERS is a list of names
python3 examples/gpu-loader-compare.py run --out "$out" \
    --file "$work/weights-${SIZE_GIB:-16}g.safetensors" --size-gib "${SIZE_GIB:-16}" \
    --tensor-mib "${TENSOR_MIB:-128}" --loadbench "$ship/arbiter-loadbench" \
    --device "${DEVICE:-cuda}" --warm-repeat "${WARM_REPEAT:-3}" --cold-repeat "${COLD_REPEAT:-3}" \
    ${LOADERS:+--loaders $LOADERS} 2>&1 | tee "$out/run.log"
