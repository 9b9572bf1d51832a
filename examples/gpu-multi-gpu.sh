#!/usr/bin/env bash
# Two (or more) GPUs under one supervisor, on the GPU host: one supervisor over every card
# (real NVML), and these checks, each PASS or FAIL with its numbers in results.md and
# results.json (in $OUT beside the packed results, and in them):
#
#   gpu-count             nvidia-smi lists 2 or more cards (on fewer the script stops at
#                         once, saying so, and exits non-zero)
#   supervisor-sees-all   `status` (status-start.txt) lists every card nvidia-smi does, and
#                         the supervisor's log names the same uuid for each index
#   best-fit              card 1 is filled with a lease down to FILL_LEAVE (20GiB)
#                         available; an 8 GiB lease for any card goes to card 1 (best fit: the
#                         least available memory that fits, neither the emptiest card nor the
#                         lowest index), then a 16 GiB one, which no longer fits there, to
#                         another card (card 0 on a 2-GPU host)
#   jobs-concurrent       two video jobs of a generated pipeline (PRESET, default tiny) whose
#                         lease is raised to more than half the smaller card's free memory,
#                         submitted at once: the event feed grants each a card of its own,
#                         their lease intervals and their running intervals (timestamped
#                         `generate` output) overlap, and each worker's metadata.json names
#                         its lease's card
#   tts-best-fit          arbiter-tts with a TorchScript voice and --lease-bytes, no --gpu,
#                         card 1 filled down to 10 GiB: its lease is on card 1 (the best fit),
#                         `say` speaks with the voice, and nvidia-smi --query-compute-apps
#                         shows its pid on card 1's uuid and nowhere else
#   tts-gpu-flag          the same with --gpu 0: lease and process on card 0
#   foreign-one-card      a python process (torch) holding FOREIGN_BYTES (8GiB) on card
#                         FOREIGN_GPU (1) and nothing else: in `status` only that card's
#                         available memory shrinks, by at least that much; every other card's
#                         stays within 512 MiB
#
# Run from the repository root on a host with 2 GPUs (nvidia-h100-x2) with ship/ filled by
# scripts/ship.sh; results in $RESULTS, packed into $OUT/multi-gpu.tgz. Leaves the cards as
# it found them: every lease, job, service and foreign process it starts is stopped at exit.
set -euo pipefail
export PRESET="${PRESET:-tiny}"
# shellcheck source=examples/gpu-lib.sh
source "$(dirname "$0")/gpu-lib.sh"
gpu_setup multi-gpu
export LD_LIBRARY_PATH="$PWD/$ship/lib:$LD_LIBRARY_PATH"
export ESPEAK_DATA_PATH="$PWD/$ship"
GIB=$((1 << 30))
helper="$work/multi-gpu.py"
checks="$out/checks.tsv"
: >"$checks"
pids=()

# check NAME PASS|FAIL DETAILS: one row of the summary.
check() {
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$checks"
    echo "[$2] $1: $3" >&2
}

# wait_for SECONDS COMMAND...: runs COMMAND every 0.1 s until it succeeds; fails after SECONDS.
wait_for() {
    local tries=$(($1 * 10))
    shift
    for _ in $(seq "$tries"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    return 1
}

stop_all() {
    local rc=$?
    for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    sleep 0.5
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$rc" -ne 0 ] && ! grep -q "$(printf '\tFAIL\t')" "$checks"; then
        check script FAIL "stopped early (exit $rc): see the logs in the results"
    fi
    python3 "$helper" summary "$checks" "$out/results.md" "$out/results.json" || true
    if [ -n "${OUT:-}" ]; then cp "$out/results.md" "$out/results.json" "$OUT/" 2>/dev/null || true; fi
    cat "$out/results.md" 2>/dev/null || true
    gpu_finish
    if [ "$rc" -eq 0 ] && grep -q "$(printf '\tFAIL\t')" "$checks"; then rc=1; fi
    exit "$rc"
}
trap stop_all EXIT

# The parsing and the checks that need more than a comparison, in Python (the host's python3).
cat >"$helper" <<'PY'
import datetime, json, os, re, sys

STATES = ("queued", "starting", "running", "releasing", "succeeded", "failed", "cancelled")
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
ANSI = re.compile(r"\x1b\[[0-9;]*m")

def size(text):
    """A ByteSize as arbiter prints it (79.19GiB, 512MiB, 0B), or a plain count."""
    m = re.fullmatch(r"([\d.]+)\s*([KMGT]iB|B)?", text.strip())
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(round(float(m.group(1)) * UNITS[m.group(2) or "B"]))

def gib(n):
    return f"{n / (1 << 30):.2f} GiB"

def status(path):
    """The GPU table of `arbiter-supervisor status`: fixed columns, the name 28 wide."""
    gpus, inside = [], False
    for line in open(path):
        line = ANSI.sub("", line.rstrip("\n"))
        if line.startswith("GPU ") and "AVAILABLE" in line:
            inside = True
            continue
        if not inside:
            continue
        if not line.strip():
            break
        if not line[:4].strip().isdigit():
            continue
        cols = line[34:].split()
        keys = ["total", "used", "unleased", "budget", "granted", "available"]
        gpu = {"index": int(line[:4]), "name": line[5:33].strip()}
        gpu.update({k: size(v) for k, v in zip(keys, cols)})
        gpus.append(gpu)
    returns = any(l.startswith("GIVEN BACK") for l in open(path))
    return gpus, returns

def gpu(path, index):
    return next(g for g in status(path)[0] if g["index"] == index)

def sup_uuids(log):
    found = {}
    for line in open(log):
        m = re.search(r"GPU gpu=(\d+) uuid=(\S+)", ANSI.sub("", line))
        if m:
            found.setdefault(int(m.group(1)), m.group(2))
    return found

def smi_uuids(csv):
    return {int(r.split(",")[0]): r.split(",")[1].strip() for r in open(csv) if r.strip()}

def apps(csv, pid):
    """nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory (MiB) rows of pid."""
    rows = [[c.strip() for c in r.split(",")] for r in open(csv) if r.strip()]
    return {r[1]: int(r[2]) << 20 for r in rows if len(r) > 2 and r[0] == str(pid) and r[2].isdigit()}

def at(stamp):
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

def overlap(a, b):
    return None if None in (a[0], a[1], b[0], b[1]) else min(a[1], b[1]) - max(a[0], b[0])

def jobs(events, sup_log, *runs):
    """Two `generate` runs (timestamped lines): their cards, lease and running intervals."""
    uuids = sup_uuids(sup_log)
    feed = [ANSI.sub("", l).split() for l in open(events)]
    out = {"jobs": []}
    for run in runs:
        # "EPOCH JOB STATE ..." per state `generate` printed; "EPOCH metadata: PATH (SIZE)".
        lines = [l.split() for l in open(run) if l.strip()]
        job_lines = [l for l in lines if len(l) > 2 and not l[1].endswith(":") and l[2] in STATES]
        states = [(float(l[0]), l[2]) for l in job_lines]
        job = {"file": run, "id": job_lines[0][1] if job_lines else None}
        first = lambda names: next((t for t, s in states if s in names), None)
        job["running"] = [first(("running",)), first(("releasing", "succeeded", "failed", "cancelled"))]
        job["final"] = states[-1][1] if states else None
        meta = next((l[2] for l in lines if len(l) > 2 and l[1] == "metadata:"), None)
        job["metadata"] = meta
        try:
            m = json.load(open(meta))
            job["metadata_gpu_uuid"], job["metadata_device"] = m.get("gpu_uuid"), m.get("device")
        except Exception as error:
            job["metadata_gpu_uuid"], job["metadata_device"] = None, f"unreadable: {error}"
        holder = f"video job {job['id']}"
        job["gpu"] = job["lease"] = job["lease_bytes"] = None
        start = end = None
        for f in feed:
            text = " ".join(f)
            if len(f) > 7 and f[1] == "granted" and text.endswith(" to " + holder):
                job["lease"], job["lease_bytes"], job["gpu"], start = f[2], size(f[3]), int(f[6]), at(f[0])
            if len(f) > 3 and f[1] == "released" and f[2] == job["lease"] and end is None:
                end = at(f[0])
        job["lease_interval"] = [start, end]
        job["gpu_uuid"] = uuids.get(job["gpu"])
        out["jobs"].append(job)
    a, b = out["jobs"]
    out["lease_overlap_s"] = overlap(a["lease_interval"], b["lease_interval"])
    out["running_overlap_s"] = overlap(a["running"], b["running"])
    problems = []
    for j in (a, b):
        if j["final"] != "succeeded":
            problems.append(f"job {j['id']} ended {j['final']}")
        if j["gpu"] is None:
            problems.append(f"no grant to job {j['id']} in the feed")
        elif j["metadata_gpu_uuid"] != j["gpu_uuid"]:
            problems.append(f"job {j['id']}: metadata names {j['metadata_gpu_uuid']}, its lease is on GPU {j['gpu']} ({j['gpu_uuid']})")
        if os.environ.get("REQUIRE_GPU", "1") != "0" and not str(j["metadata_device"]).startswith("cuda"):
            problems.append(f"job {j['id']} ran on {j['metadata_device']}, not a GPU")
    if a["gpu"] is not None and a["gpu"] == b["gpu"]:
        problems.append(f"both jobs on GPU {a['gpu']}")
    if not (out["lease_overlap_s"] or 0) > 0:
        problems.append(f"lease intervals do not overlap ({out['lease_overlap_s']})")
    if not (out["running_overlap_s"] or 0) > 0:
        problems.append(f"running intervals do not overlap ({out['running_overlap_s']})")
    json.dump(out, open(os.path.join(os.path.dirname(os.path.abspath(runs[0])), "jobs.json"), "w"), indent=2)
    detail = "; ".join(
        f"job {j['id']} on GPU {j['gpu']} ({gib(j['lease_bytes'] or 0)} lease, device {j['metadata_device']})" for j in (a, b)
    ) + f"; leases overlap {out['lease_overlap_s'] or 0:.2f} s, running {out['running_overlap_s'] or 0:.2f} s"
    print(("FAIL" if problems else "PASS") + "\t" + detail + ("; " + "; ".join(problems) if problems else ""))

def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "size":
        print(size(args[0]))
    elif cmd == "avail":
        print(gpu(args[0], int(args[1]))["available"])
    elif cmd == "count":
        print(len(status(args[0])[0]))
    elif cmd == "quiet":
        gpus, returns = status(args[0])
        sys.exit(0 if gpus and not returns and all(g["granted"] == 0 for g in gpus) else 1)
    elif cmd == "uuids-agree":
        sup, smi = sup_uuids(args[0]), smi_uuids(args[1])
        count = int(args[2])
        ok = sup == smi and len(sup) == count
        print(("PASS" if ok else "FAIL") + f"\tstatus lists {count} GPUs, nvidia-smi {len(smi)}; supervisor "
              + ", ".join(f"{i}={u}" for i, u in sorted(sup.items())) + ("" if sup == smi else
              "; nvidia-smi " + ", ".join(f"{i}={u}" for i, u in sorted(smi.items()))))
    elif cmd == "uuid":
        print(sup_uuids(args[0])[int(args[1])])
    elif cmd == "apps":
        for uuid, used in sorted(apps(args[0], args[1]).items()):
            print(uuid, used)
    elif cmd == "shrank":
        before, after = gpu(args[0], int(args[2])), gpu(args[1], int(args[2]))
        sys.exit(0 if before["available"] - after["available"] >= int(args[3]) else 1)
    elif cmd == "foreign":
        before_path, after_path, card, held, apps_csv, pid, uuid = args
        card, held = int(card), int(held)
        before = {g["index"]: g for g in status(before_path)[0]}
        after = {g["index"]: g for g in status(after_path)[0]}
        drop = lambda key: {i: before[i][key] - after[i][key] for i in before if i in after}
        budget, available = drop("budget"), drop("available")
        seen = apps(apps_csv, pid)
        problems = []
        for name, drops in (("budget", budget), ("available", available)):
            if drops.get(card, 0) < held:
                problems.append(f"GPU {card}'s {name} shrank by {gib(drops.get(card, 0))}, less than the {gib(held)} held")
            for i, d in drops.items():
                if i != card and abs(d) > 512 << 20:
                    problems.append(f"GPU {i}'s {name} changed by {gib(d)} too")
        if set(seen) != {uuid}:
            problems.append(f"nvidia-smi shows pid {pid} on {sorted(seen) or 'no card'}, not only {uuid}")
        print(("FAIL" if problems else "PASS") + "\t" + f"pid {pid} holds {gib(held)} on GPU {card}; budget dropped by "
              + ", ".join(f"GPU {i}: {gib(d)}" for i, d in sorted(budget.items()))
              + "; available by " + ", ".join(f"GPU {i}: {gib(d)}" for i, d in sorted(available.items()))
              + f"; nvidia-smi: {', '.join(f'{u} {gib(b)}' for u, b in seen.items()) or 'nothing'}"
              + ("; " + "; ".join(problems) if problems else ""))
    elif cmd == "jobs":
        jobs(*args)
    elif cmd == "summary":
        rows = [l.rstrip("\n").split("\t", 2) for l in open(args[0]) if l.strip()]
        passed = bool(rows) and all(r[1] == "PASS" for r in rows)
        with open(args[1], "w") as md:
            md.write(f"# gpu-multi-gpu: {'all checks PASS' if passed else 'FAILED'}\n\n| check | result | numbers |\n|---|---|---|\n")
            for name, result, detail in rows:
                md.write(f"| {name} | {result} | {detail.replace('|', '/')} |\n")
        json.dump({"passed": passed, "checks": [{"name": n, "result": r, "details": d} for n, r, d in rows]},
                  open(args[2], "w"), indent=2)
    else:
        sys.exit(f"unknown command {cmd}")

main()
PY

# The cards, before anything else: this needs two.
nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.free --format=csv,noheader,nounits \
    >"$out/nvidia-gpus.csv" 2>"$out/nvidia-smi.err" || true
ngpu=$(grep -c . "$out/nvidia-gpus.csv" || true)
if [ "$ngpu" -lt 2 ]; then
    echo "gpu-multi-gpu.sh: this host has $ngpu GPU(s) (nvidia-smi: $(tr '\n' ' ' <"$out/nvidia-smi.err")$(tr '\n' ' ' <"$out/nvidia-gpus.csv")); it needs 2 or more. Run it on a 2-GPU host (nvidia-h100-x2)." >&2
    check gpu-count FAIL "nvidia-smi lists $ngpu GPU(s); 2 or more are needed"
    exit 2
fi
check gpu-count PASS "$ngpu GPUs: $(cut -d, -f3 "$out/nvidia-gpus.csv" | sed 's/^ *//' | paste -sd, - | sed 's/,/, /g')"

# The job pipeline: generated (gpu_pipeline), copied as mgpu-wide with its lease's margin
# raised to 55% of the smaller card's free memory, so two jobs cannot share a card.
gpu_pipeline
min_free_mib=$(cut -d, -f5 "$out/nvidia-gpus.csv" | sort -n | head -1 | tr -d ' ')
margin_mib=$((min_free_mib * 55 / 100))
wide="$work/pipelines/mgpu-wide"
rm -rf "$wide"
cp -r "$pipeline/." "$wide"
sed -i -e 's/^name = .*/name = "mgpu-wide"/' -e "s/^margin = .*/margin = \"${margin_mib}MiB\"/" \
    "$wide/manifest.toml"
grep -q "^margin = \"${margin_mib}MiB\"" "$wide/manifest.toml"

SUPERVISOR_ARGS="--sample-interval 100ms ${SUPERVISOR_ARGS:-}"
gpu_supervisor
kill -0 "$sup_pid"
[ -S "$sock" ]
"$S" events --address "$sock" >"$out/events.txt" 2>&1 &
pids+=($!)
status_to() { "$S" status --address "$sock" >"$1" 2>&1; }
status_to "$out/status-start.txt"
nsup=$(python3 "$helper" count "$out/status-start.txt")
result=$(python3 "$helper" uuids-agree "$out/supervisor.log" "$out/nvidia-gpus.csv" "$nsup")
if [ "$nsup" -ne "$ngpu" ]; then result="FAIL	${result#*	}"; fi
check supervisor-sees-all "${result%%	*}" "${result#*	}"
if [ "$nsup" -lt 2 ]; then
    echo "gpu-multi-gpu.sh: the supervisor sees $nsup GPU(s); the checks need 2" >&2
    exit 2
fi
uuid_of() { python3 "$helper" uuid "$out/supervisor.log" "$1"; }

# hold NAME BYTES GPU: a streaming lease (GPU "" for any) held in the background until
# unhold; its output in hold-NAME.txt, its pid in $held.
hold() {
    "$S" hold --address "$sock" --holder "$1" --bytes "$2" --gpu "$3" --max-wait 30s \
        >"$out/hold-$1.txt" 2>&1 &
    held=$!
    pids+=("$held")
    wait_for 30 grep -q '^granted' "$out/hold-$1.txt"
}
# held_gpu NAME: the card the hold was granted ("granted ID BYTES on GPU N (UUID)").
held_gpu() { sed -n 's/^granted .* on GPU \([0-9]*\) .*/\1/p' "$out/hold-$1.txt" | head -1; }
unhold() {
    kill -INT "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
# settle: until no lease is granted and nothing is on its way back.
settle() { wait_for 60 sh -c "'$S' status --address '$sock' >'$work/settle.txt' && python3 '$helper' quiet '$work/settle.txt'"; }

# best-fit: card 1 down to FILL_LEAVE, then 8 GiB for any card, then 16 GiB for any card.
leave=$(python3 "$helper" size "${FILL_LEAVE:-20GiB}")
small=$((8 * GIB))
large=$((16 * GIB))
status_to "$out/status-before-placement.txt"
a0=$(python3 "$helper" avail "$out/status-before-placement.txt" 0)
a1=$(python3 "$helper" avail "$out/status-before-placement.txt" 1)
if [ "$a1" -le $((leave + GIB)) ] || [ "$a0" -le $((leave + large)) ] || [ $((leave - small)) -ge "$large" ]; then
    check best-fit FAIL "cards too small for the test: available GPU 0 $a0, GPU 1 $a1 bytes, FILL_LEAVE $leave"
else
    fill=$((a1 - leave))
    ok=1
    hold mgpu-fill "$fill" 1 || ok=0
    fill_pid=$held
    hold mgpu-8g "$small" "" || ok=0
    small_pid=$held
    hold mgpu-16g "$large" "" || ok=0
    large_pid=$held
    g_fill=$(held_gpu mgpu-fill)
    g_small=$(held_gpu mgpu-8g)
    g_large=$(held_gpu mgpu-16g)
    status_to "$out/status-placement.txt" || true
    "$S" leases --address "$sock" >"$out/leases-placement.txt" 2>&1 || true
    numbers="available before: GPU 0 $((a0 >> 20)) MiB, GPU 1 $((a1 >> 20)) MiB; fill $((fill >> 20)) MiB on GPU ${g_fill:-?} (leaving $((leave >> 20)) MiB); 8 GiB (any) on GPU ${g_small:-?} (expected 1); 16 GiB (any) on GPU ${g_large:-?} (expected not 1)"
    if [ "$ok" = 1 ] && [ "$g_fill" = 1 ] && [ "$g_small" = 1 ] && [ -n "$g_large" ] && [ "$g_large" != 1 ]; then
        check best-fit PASS "$numbers"
    else
        check best-fit FAIL "$numbers (see hold-mgpu-*.txt)"
    fi
    unhold "$large_pid"
    unhold "$small_pid"
    unhold "$fill_pid"
fi
settle || true

# jobs-concurrent: two jobs at once, each lease more than half a card.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(date +%s.%N)" "$line"; done; }
submit() {
    # shellcheck disable=SC2086 # JOB_ARGS is a list of arguments
    "$S" generate --address "$sock" --pipeline mgpu-wide --prompt "$1" \
        ${JOB_ARGS:---steps 50 --frames 49 --width 512 --height 512} 2>&1 | stamp >"$out/job-$2.txt"
}
submit "two cards at once: a lighthouse" a &
job_a=$!
submit "two cards at once: a harbour" b &
job_b=$!
rc_a=0
wait "$job_a" || rc_a=$?
rc_b=0
wait "$job_b" || rc_b=$?
"$S" jobs --address "$sock" >"$out/jobs.txt" 2>&1 || true
sleep 0.5 # the feed's last lines
result=$(python3 "$helper" jobs "$out/events.txt" "$out/supervisor.log" "$out/job-a.txt" "$out/job-b.txt" ||
    printf 'FAIL\tthe job analysis failed (see job-a.txt, job-b.txt, events.txt)')
if [ "$rc_a" -ne 0 ] || [ "$rc_b" -ne 0 ]; then result="FAIL	${result#*	}; generate exited $rc_a and $rc_b"; fi
check jobs-concurrent "${result%%	*}" "${result#*	} (margin ${margin_mib} MiB)"
settle || true

# tts-*: arbiter-tts with a GPU voice and a lease; where nvidia-smi sees its process.
voice="$work/voices/mgpu-voice"
if [ ! -f "$voice/voice.json" ]; then
    python3 scripts/make-test-voice.py "$voice" --name mgpu-voice >"$out/voice.txt" 2>&1
fi
# tts_check NAME EXPECTED_GPU [FLAGS...]: serve, find its lease in the feed, speak, look.
tts_check() {
    local name="$1" expected="$2"
    shift 2
    local tts_sock="$work/mgpu-$name.sock"
    rm -f "$tts_sock"
    "$ship/arbiter-tts" serve --socket "$tts_sock" --supervisor "$sock" --voice-dir "$voice" \
        --lease-bytes "${TTS_LEASE:-2GiB}" "$@" >"$out/tts-$name.log" 2>&1 &
    local tts_pid=$!
    pids+=("$tts_pid")
    local problems=""
    wait_for 60 test -S "$tts_sock" || problems="$problems; no socket within 60 s"
    wait_for 30 grep -q "to arbiter-tts (pid $tts_pid)" "$out/events.txt" || problems="$problems; no lease in the feed"
    local lease_gpu
    lease_gpu=$(sed -n "s/.* granted .* on GPU \([0-9]*\) to arbiter-tts (pid $tts_pid)\$/\1/p" "$out/events.txt" | tail -1)
    if ! "$ship/arbiter-tts" say --socket "$tts_sock" --voice mgpu-voice --text "Two cards, one voice." \
        --out "$work/say-$name.wav" >"$out/say-$name.txt" 2>&1; then
        problems="$problems; say failed"
    fi
    wait_for 20 sh -c "nvidia-smi --query-compute-apps=pid --format=csv,noheader | grep -qx ' *$tts_pid'" ||
        problems="$problems; nvidia-smi never listed pid $tts_pid"
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits \
        >"$out/apps-tts-$name.csv" 2>&1 || true
    local seen expected_uuid cards first_card
    seen=$(python3 "$helper" apps "$out/apps-tts-$name.csv" "$tts_pid")
    cards=$(printf '%s\n' "$seen" | grep -c . || true)
    first_card=$(printf '%s\n' "$seen" | awk 'NR == 1 { print $1 }')
    seen=$(printf '%s' "$seen" | tr '\n' ' ')
    expected_uuid=$(uuid_of "${lease_gpu:-$expected}" 2>/dev/null || echo "?")
    [ "$lease_gpu" = "$expected" ] || problems="$problems; lease on GPU ${lease_gpu:-none}, expected $expected"
    if [ "$cards" != 1 ] || [ "$first_card" != "$expected_uuid" ]; then
        problems="$problems; nvidia-smi shows the process on ${cards} card(s): ${seen:-nothing}"
    fi
    local chosen
    chosen=$(grep -o 'chosen_by=[a-z-]*' "$out/tts-$name.log" | head -1 || true)
    local numbers="pid $tts_pid, flags '$*', lease on GPU ${lease_gpu:-?} ($expected_uuid), ${chosen:-chosen_by=?}; nvidia-smi (uuid, bytes): ${seen:-nothing}"
    if [ -z "$problems" ]; then check "tts-$name" PASS "$numbers"; else check "tts-$name" FAIL "$numbers$problems"; fi
    kill -TERM "$tts_pid" 2>/dev/null || true
    wait "$tts_pid" 2>/dev/null || true
}
status_to "$out/status-before-tts.txt"
a1=$(python3 "$helper" avail "$out/status-before-tts.txt" 1)
tts_leave=$((10 * GIB))
if [ "$a1" -gt $((tts_leave + GIB)) ] && hold mgpu-tts-fill $((a1 - tts_leave)) 1; then
    tts_fill=$held
    tts_check best-fit 1
    tts_check gpu-flag 0 --gpu 0
    unhold "$tts_fill"
else
    check tts-best-fit FAIL "could not fill GPU 1 down to 10 GiB (available $a1 bytes)"
fi
settle || true

# foreign-one-card: a process no lease covers, on one card.
card="${FOREIGN_GPU:-1}"
foreign=$(python3 "$helper" size "${FOREIGN_BYTES:-8GiB}")
card_uuid=$(uuid_of "$card")
status_to "$out/status-before-foreign.txt"
CUDA_VISIBLE_DEVICES="$card_uuid" python3 -c '
import sys, time, torch
x = torch.empty(int(sys.argv[1]), dtype=torch.uint8, device="cuda")
x.fill_(1)
torch.cuda.synchronize()
print("ready", flush=True)
time.sleep(600)
' "$foreign" >"$out/foreign.txt" 2>&1 &
foreign_pid=$!
pids+=("$foreign_pid")
wait_for 120 sh -c "grep -q '^ready' '$out/foreign.txt' || ! kill -0 $foreign_pid" || true
if grep -q '^ready' "$out/foreign.txt"; then
    # The supervisor samples every 100 ms: wait for the drop to show (at most 10 s).
    wait_for 10 sh -c "'$S' status --address '$sock' >'$work/foreign-now.txt' && python3 '$helper' shrank '$out/status-before-foreign.txt' '$work/foreign-now.txt' $card $foreign" || true
    sleep 0.5
    status_to "$out/status-foreign.txt"
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv,noheader,nounits \
        >"$out/apps-foreign.csv" 2>&1 || true
    result=$(python3 "$helper" foreign "$out/status-before-foreign.txt" "$out/status-foreign.txt" "$card" \
        "$foreign" "$out/apps-foreign.csv" "$foreign_pid" "$card_uuid")
    check foreign-one-card "${result%%	*}" "${result#*	}"
else
    check foreign-one-card FAIL "the foreign process did not start (see foreign.txt)"
fi
kill -TERM "$foreign_pid" 2>/dev/null || true
wait "$foreign_pid" 2>/dev/null || true
status_to "$out/status-end.txt" || true
