#!/usr/bin/env bash
# Runs examples/gpu-attention-jit.py in fresh processes on the GPU host: for each backend
# (BACKENDS), twice as it is, once with one more environment variable, once from a new
# working directory; after each, the size of CUDA's JIT cache (~/.nv/ComputeCache). A first
# call that is slow again with another environment or directory is compiled per process
# with a cache keyed on them. Results in $RESULTS (summary.txt), packed into $OUT/attention-jit.tgz.
set -euo pipefail
out="${RESULTS:-/tmp/attention-jit}"
mkdir -p "$out"
trap '[ -n "${OUT:-}" ] && tar czf "$OUT/attention-jit.tgz" -C "$out" . || true' EXIT
probe="$PWD/examples/gpu-attention-jit.py"
cache="${HOME}/.nv/ComputeCache"
: >"$out/runs.txt"
for backend in ${BACKENDS:-cudnn efficient default}; do
    for how in again-1 again-2 env cwd; do
        label="$backend-$how"
        case "$how" in
            env) ARBITER_PROBE_NONCE="$RANDOM$RANDOM" python3 "$probe" "$backend" "$out/$label.json" ;;
            cwd) mkdir -p "/tmp/probe-$label" && (cd "/tmp/probe-$label" && python3 "$probe" "$backend" "$out/$label.json") ;;
            *) python3 "$probe" "$backend" "$out/$label.json" ;;
        esac >/dev/null 2>>"$out/stderr.txt" || echo "$label failed" >>"$out/runs.txt"
        echo "$label jit-cache $(du -sk "$cache" 2>/dev/null | cut -f1 || echo 0) KiB" >>"$out/runs.txt"
    done
done
python3 - "$out" >"$out/summary.txt" <<'PY'
import glob, json, sys
out = sys.argv[1]
sizes = dict(l.split(" jit-cache ") for l in open(f"{out}/runs.txt").read().splitlines() if " jit-cache " in l)
for path in sorted(glob.glob(f"{out}/*.json"), key=lambda p: p):
    r = json.load(open(path))
    label = path.rsplit("/", 1)[-1][:-5]
    calls = "; ".join(
        f"{c['shape']}: " + (f"first {c['first_ms']:.0f} ms, steady {c['steady_ms']:.2f} ms" if "first_ms" in c else c["error"][:60])
        + f" [default {c['default_choice']}]"
        for c in r["calls"])
    print(f"{label:18} cache {sizes.get(label, '?'):>9}  {calls}")
PY
cat "$out/summary.txt"
