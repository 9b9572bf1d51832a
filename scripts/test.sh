#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), builds every binary,
# and runs every test in the workspace: units, property tests, and the whole-system tests
# that start the real binaries on a simulated GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
source scripts/env.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
