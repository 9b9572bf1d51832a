#!/usr/bin/env bash
# Issue #16, parts 1 and 2 together, on the GPU host: video jobs of the generated $PRESET
# (ltx-half) pipeline through a supervisor on the real card, weights warm in the page cache,
# every component `gpu`, JOBS (3) jobs per setting, each with a new prompt (no embedding-cache
# hit):
#   spawned          [jobs] standby = false, no pool: a fresh process per job (the baseline);
#   standby          a pre-started worker per job (process, libtorch and TorchScript ready
#                    before the request; CUDA context and first kernels on a second thread);
#   standby-pool     the same with the host weight pool ([pool] host_bytes = HOST_BYTES);
#   standby-pool-s   the same with the text encoder streamed (from the pool's pages).
# Per job: metadata.json (prestarted, handoff_to_claim_ms, spawn_ms, first_step_ms, per stage
# load source and ms), and the client's wall time. Beside them, in the same run, the
# persistent reference: one `generate` process, every component resident, 3 calls (calls 2
# and 3 are what a resident server answers with). THE WEIGHTS ARE RANDOM: only times mean
# anything. Results in $RESULTS, packed into $OUT/prestart.tgz.
set -euo pipefail
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup prestart
host_bytes="${HOST_BYTES:-64GiB}"
gpu_pipeline

"$video" generate --pipeline "$pipeline" --prompt "$seed_prompt" --seed 7 \
    --out "$work/persistent" "${all_resident[@]}" --repeat 3 >"$out/persistent.log" 2>&1 ||
    echo "persistent failed" >>"$out/failures.txt"
for run in 1 2 3; do gpu_keep_metadata "$work/persistent/run-$run" "persistent-$run"; done
rm -rf "$work/persistent"

# setting NAME JOBS_LINES [PLACEMENT ARGS...]: a supervisor with those [jobs]/[pool] lines,
# JOBS jobs through it, then stopped.
setting() {
    local name="$1" lines="$2"
    shift 2
    SUPERVISOR_JOBS="$lines" gpu_supervisor
    # A standby (when on) and the pool's prefill (when on) are ready before the first job.
    for _ in $(seq 300); do
        local ready=1
        case "$lines" in *"standby = true"*) grep -q "standby worker ready" "$out/supervisor.log" || ready=0 ;; esac
        case "$lines" in *"[pool]"*) grep -q "weight pool prefilled" "$out/supervisor.log" || ready=0 ;; esac
        [ "$ready" = 1 ] && break
        sleep 0.5
    done
    for i in $(seq "${JOBS:-3}"); do
        local start end
        start=$(date +%s%N)
        "$S" generate --address "$sock" --pipeline "$preset" --prompt "$name $i: a harbour at dawn" "$@" \
            >"$out/job-$name-$i.txt" 2>&1 || echo "job $name $i failed" >>"$out/failures.txt"
        end=$(date +%s%N)
        echo "$name-$i $(((end - start) / 1000000))" >>"$out/wall-ms.txt"
        # Let the next standby get ready, as it would between requests.
        sleep "${GAP_S:-3}"
    done
    kill -TERM "$sup_pid" 2>/dev/null || true
    wait "$sup_pid" 2>/dev/null || true
    sup_pid=""
    cp "$out/supervisor.log" "$out/supervisor-$name.log"
    find "$state" -name metadata.json | sort | while read -r m; do
        cp "$m" "$out/metadata-$name-$(basename "$(dirname "$(dirname "$m")")").json"
    done
}

pool="\n[pool]\nhost_bytes = \"$host_bytes\"\nthreads = 16\n"
setting spawned "standby = false\n"
setting standby "standby = true\n"
setting standby-pool "standby = true\n$pool"
setting standby-pool-s "standby = true\n$pool" --placement text_encoder=stream

python3 - "$out" >"$out/prestart-summary.txt" <<'PY' || true
import glob, json, sys
out = sys.argv[1]
wall = dict(l.split() for l in open(f"{out}/wall-ms.txt")) if glob.glob(f"{out}/wall-ms.txt") else {}
for path in sorted(glob.glob(f"{out}/metadata-*.json")):
    m = json.load(open(path))
    name = path.rsplit("/", 1)[-1][len("metadata-"):-len(".json")]
    loads = ", ".join(
        f"{s['stage']}:{s.get('load_source', '-')} {s['load_ms']:.0f}"
        for s in m.get("pipeline_stages", []) if s.get("load_ms")
    )
    print(
        f"{name:44} prestarted {str(m.get('prestarted', False)):5} handoff->claim {m.get('handoff_to_claim_ms') or 0:5.0f} "
        f"spawn {m.get('spawn_ms') or 0:5.0f} first step {m.get('first_step_ms') or 0:6.0f} "
        f"total {m.get('total_ms') or 0:6.0f} ms | {loads}"
    )
print("client wall ms:", wall)
PY
cat "$out/prestart-summary.txt"
