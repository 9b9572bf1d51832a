#!/usr/bin/env bash
# On the GPU host: a supervisor on the real card (NVML) runs video jobs through the external
# PyTorch pipeline (examples/torch-gpu-pipeline): three in a row, then two whose 41 GiB
# leases do not fit together on an 80 GiB card. Each job prints NVML's used memory before
# its spawn, at peak and after release, and the time from the worker's exit to the verified
# release. Binaries come from ship/ (see ../shared/gpu-host.md for building them).
set -u
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
out=${OUT:-/tmp/gpu-jobs}; mkdir -p "$out"
S=ship/arbiter-supervisor
work=$(mktemp -d)
mkdir -p "$work/pipelines"
cp -r examples/torch-gpu-pipeline "$work/pipelines/torch-gpu"
cp -r examples/torch-gpu-pipeline "$work/pipelines/torch-gpu-big"
sed -i -e 's/^name = .*/name = "torch-gpu-big"/' -e 's/^peak = .*/peak = "40GiB"/' "$work/pipelines/torch-gpu-big/manifest.toml"
sock="$work/s.sock"
$S --socket "$sock" --state-dir "$work/state" --pipelines-dir "$work/pipelines" \
   --worker "$PWD/ship/arbiter-video" --sample-interval 100ms > "$out/supervisor.log" 2>&1 &
sup=$!
sleep 1.5
$S status --address "$sock"
for i in 1 2 3; do
  echo "== job $i (9 GiB lease)"
  $S generate --address "$sock" --pipeline torch-gpu --prompt "run $i" --steps 20 | tail -4
done
echo "== two jobs with 41 GiB leases: they run one after the other"
$S generate --address "$sock" --pipeline torch-gpu-big --prompt a --steps 10 > "$out/big-a.txt" 2>&1 &
a=$!
sleep 0.3
$S generate --address "$sock" --pipeline torch-gpu-big --prompt b --steps 10 > "$out/big-b.txt" 2>&1
wait $a
tail -4 "$out/big-a.txt" "$out/big-b.txt"
grep -c queued "$out/big-b.txt"
$S jobs --address "$sock"
$S status --address "$sock"
kill -TERM $sup; wait $sup; echo "supervisor exit $?"
grep -E "memory returned|did not come back|worker started|job ended" "$out/supervisor.log"
