#!/usr/bin/env bash
# Everything the GPU test host runs (../shared/gpu-host.md), built here and put into ship/
# (gitignored; the device tool carries it with `carry: ["ship"]`): release, stripped
# arbiter-supervisor, arbiter-video and arbiter-loadbench, then arbiter-tts, its speech bench,
# libespeak-ng and its data (scripts/ship-tts.sh), and in ship/wheels the Python wheels
# examples/gpu-loader-compare.sh puts beside the host's torch (~3.3 MB). The examples/gpu-*.sh
# scripts run from it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/tch-target}"
ship="${SHIP:-ship}"
mkdir -p "$ship"
cargo build --release -p arbiter-supervisor -p arbiter-video -p arbiter-torch --bins
for bin in arbiter-supervisor arbiter-video arbiter-loadbench; do
    cp "$CARGO_TARGET_DIR/release/$bin" "$ship/$bin"
    strip "$ship/$bin"
done
SHIP="$ship" bash scripts/ship-tts.sh
# For the host's python (CPython 3.12, x86-64, glibc 2.39; no network there): fastsafetensors
# (its one dependency, typer, serves its command line; the loader never imports it) and
# safetensors, used only where the host has none. Downloaded once; kept while present.
mkdir -p "$ship/wheels"
for spec in fastsafetensors==0.5.0 safetensors==0.8.0; do
    if ! ls "$ship/wheels/${spec%%==*}-${spec##*==}-"*.whl >/dev/null 2>&1; then
        pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux2014_x86_64 --dest "$ship/wheels" "$spec"
    fi
done
du -sh "$ship"
