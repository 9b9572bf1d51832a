#!/usr/bin/env bash
# The operator's five minutes, exactly as README.md shows them: tests/readme.rs checks that
# the README's block is this file's body, and runs it on a simulated GPU. Runs anywhere
# scripts/setup.sh has run, with the binaries (and the Python client) installed or on PATH.
# ARBITER_SOCKET, ARBITER_STATE_DIR and METRICS choose where things go.
set -euo pipefail
state="${ARBITER_STATE_DIR:-$(mktemp -d)}"
export ARBITER_SOCKET="${ARBITER_SOCKET:-$state/supervisor.sock}"
metrics="${METRICS:-127.0.0.1:9464}"
# --- the five minutes ---
# Start it (a simulated 24 GiB GPU here; on a GPU host systemd runs it on NVML:
# deploy/systemd/arbiter-supervisor.service), with Prometheus metrics on.
printf '[metrics]\nlisten = "%s"\n' "$metrics" > "$state/supervisor.toml"
arbiter-supervisor --config "$state/supervisor.toml" --simulated-gpus 24GiB \
  --state-dir "$state" --simulated-dir "$state/gpus" 2> "$state/supervisor.log" &
trap 'kill $!' EXIT
until arbiter-supervisor status > /dev/null 2>&1; do sleep 0.2; done

# What is on each GPU: budget, grants, processes, queue; and who you are to it.
arbiter-supervisor status

# What Prometheus scrapes (deploy/grafana/arbiter.json is a dashboard of it).
curl -s "http://$metrics/metrics" | grep '^arbiter_gpu_budget_bytes'

# A lease from Python (pip install ./clients/python), held for a with-block.
python3 -c '
import arbiter
with arbiter.lease("4GiB", holder="notebook") as lease:
    print("holding", lease.bytes, "bytes as", lease.lease_id)
'

# Any command under a lease, for its lifetime: it sees the GPU and the lease.
arbiter-supervisor run --bytes 2GiB -- sh -c 'echo "GPU $CUDA_VISIBLE_DEVICES, lease $ARBITER_LEASE_ID"'

# A video job on the built-in tiny pipeline, followed to its end.
arbiter-supervisor generate --prompt "a lighthouse at dusk"
arbiter-supervisor jobs

# Logs: the supervisor's (under systemd: journalctl -u arbiter-supervisor).
tail -n 3 "$state/supervisor.log"
