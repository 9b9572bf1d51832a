#!/usr/bin/env bash
# Everything the GPU test host runs (../shared/gpu-host.md), built here and put into ship/
# (gitignored; the device tool carries it with `carry: ["ship"]`): release, stripped
# arbiter-supervisor, arbiter-video and arbiter-loadbench, then arbiter-tts, its speech bench,
# libespeak-ng and its data (scripts/ship-tts.sh). The examples/gpu-*.sh scripts run from it.
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
du -sh "$ship"
