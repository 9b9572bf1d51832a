#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), builds every binary,
# and runs every test in the workspace: units, property tests, and the whole-system tests
# that start the real binaries on a simulated GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --workspace --bins --locked
# The Python client, built from proto/ and installed into the venv before the tests: its
# suite runs after cargo's, and the example external pipeline that a cargo test runs uses it.
python="$ARBITER_CACHE/venv/bin/python"
"$python" -m pip install -q --disable-pip-version-check ./clients/python
log="$(mktemp)"
pylog="$(mktemp)"
trap 'rm -f "$log" "$pylog"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# The Python client's tests, against the real binaries just built.
"$python" -m pytest -p no:cacheprovider clients/python/tests 2>&1 | tee "$pylog"
pystatus=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo ends on its last crate's doc tests), with
# pytest's counts (its closing line: "N failed, M passed, ... in Ts"; errors count as failed).
awk 'FILENAME == ARGV[1] && /^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     FILENAME == ARGV[2] && /^=* ?[0-9]+ [a-z]+.* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed,?$/) p += $(i-1); if ($i ~ /^(failed|errors?),?$/) f += $(i-1) } }
     END { printf "workspace: %d passed, %d failed\n", p, f }' "$log" "$pylog"
if [ "$status" -ne 0 ]; then exit "$status"; fi
exit "$pystatus"
