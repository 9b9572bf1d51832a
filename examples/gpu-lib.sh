# Shared by the examples/gpu-*.sh scripts that run video jobs on the GPU host (sourced, not
# run). They run from the repository root with the release binaries in
# $SHIP (scripts/ship.sh) and leave their results in $out, packed into $OUT/NAME.tgz.

# The seed table's request, and the placements of its persistent approach (every component
# resident), for the scripts that run it.
seed_prompt="a lighthouse at dusk, waves breaking on the rocks"
all_resident=()
for c in text_encoder audio_encoder image_encoder transformer upsampler vae_decoder; do
    all_resident+=(--placement "$c=resident")
done

# gpu_setup NAME: the settings every script shares ($ship, $out, $work, $preset, $pipeline,
# $video, $S), libtorch on the loader path, the date and the GPU noted, and the results packed
# (and the supervisor stopped) however the script ends.
gpu_setup() {
    gpu_name="$1"
    ship="${SHIP:-ship}"
    out="${RESULTS:-/tmp/$gpu_name}"
    work="${WORK:-/tmp/arbiter-work}"
    preset="${PRESET:-ltx-half}"
    pipeline="$work/$preset"
    mkdir -p "$out" "$work/pipelines"
    sup_pid=""
    trap gpu_finish EXIT
    LD_LIBRARY_PATH="$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib"
    export LD_LIBRARY_PATH
    video="$PWD/$ship/arbiter-video"
    S="$ship/arbiter-supervisor"
    date -u +%FT%TZ >"$out/date.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.csv" 2>&1 || true
}

gpu_finish() {
    if [ -n "$sup_pid" ]; then kill -TERM "$sup_pid" 2>/dev/null || true; wait "$sup_pid" 2>/dev/null || true; fi
    if [ -n "${OUT:-}" ]; then tar czf "$OUT/$gpu_name.tgz" -C "$out" . || true; fi
}

# gpu_pipeline: the generated $preset pipeline (made on the GPU unless MAKE_DEVICE says
# otherwise), served from $work/pipelines and read into the page cache.
gpu_pipeline() {
    if [ ! -f "$pipeline/manifest.toml" ]; then
        "$video" make-pipeline --preset "$preset" --out "$pipeline" --device "${MAKE_DEVICE:-cuda}" \
            >"$out/make.log" 2>&1
    fi
    mkdir -p "$work/pipelines"
    ln -sfn "$pipeline" "$work/pipelines/$preset"
    "$video" prewarm "$pipeline" >"$out/prewarm.txt"
}

# gpu_supervisor: a supervisor on the card serving $work/pipelines (PNG frames, since the host
# has no ffmpeg; SUPERVISOR_ARGS added, and SUPERVISOR_JOBS's lines to its [jobs] table), state
# in $work/$gpu_name-state, socket in $sock.
gpu_supervisor() {
    printf '[jobs]\nframes_without_ffmpeg = true\n%b\n' "${SUPERVISOR_JOBS:-}" >"$work/$gpu_name.toml"
    sock="$work/$gpu_name.sock"
    state="$work/$gpu_name-state"
    rm -rf "$state" "$sock"
    # shellcheck disable=SC2086 # SUPERVISOR_ARGS is a list of arguments
    "$S" --config "$work/$gpu_name.toml" --socket "$sock" --state-dir "$state" \
        --pipelines-dir "$work/pipelines" --worker "$video" ${SUPERVISOR_ARGS:-} \
        >"$out/supervisor.log" 2>&1 &
    sup_pid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
}

# gpu_keep_metadata DIR NAME: copies the metadata.json under DIR to $out/metadata-NAME.json.
gpu_keep_metadata() {
    [ -d "$1" ] || return 0
    find "$1" -name metadata.json | head -1 | while read -r m; do
        cp "$m" "$out/metadata-$2.json"
    done
}

# gpu_summary: one line per kept metadata file (and per bare CUDA start, if any): start-up
# and each large component's first forward, for reading a run at a glance.
gpu_summary() {
    python3 - "$out" >"$out/summary.txt" <<'PY' || true
import glob, json, sys
out = sys.argv[1]
for path in glob.glob(f"{out}/cuda-start.jsonl"):
    for line in open(path):
        print(f"bare cuda-start: spawn to ready {json.loads(line)['spawn_to_ready_ms']:.0f} ms")
for path in sorted(glob.glob(f"{out}/metadata-*.json")):
    m = json.load(open(path))
    stages = {s["stage"]: s for s in m.get("pipeline_stages", [])}
    first = lambda stage: stages.get(stage, {}).get("first_call_ms") or 0
    load = lambda stage: stages.get(stage, {}).get("load_ms") or 0
    name = path.rsplit("/", 1)[-1][len("metadata-"):-len(".json")]
    print(
        f"{name:22} spawn {m.get('spawn_ms') or 0:4.0f} ms, first step {m.get('first_step_ms') or 0:5.0f} ms, "
        f"overhead {m.get('first_step_overhead_ms') or 0:4.0f} ms; first forwards: text {first('text'):5.0f} ms, "
        f"denoise {first('denoise'):5.0f} ms (loads {load('text'):.0f} / {load('denoise'):.0f} ms)"
    )
PY
    cat "$out/summary.txt"
}
