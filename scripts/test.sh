#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), builds every binary,
# and runs every test in the workspace: units, property tests, and the whole-system tests
# that start the real binaries on a simulated GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --workspace --bins --locked
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo ends on its last crate's doc tests).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
