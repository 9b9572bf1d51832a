#!/usr/bin/env bash
# Builds arbiter-tts and its speech bench for the GPU test host (../shared/gpu-host.md) and puts
# what they need to run there into ship/ (gitignored; it travels with the working tree):
#
#   ship/arbiter-tts          the command (release, stripped; no libtorch): `say` and
#                             `lip-sync` itself, `serve` and `info` by exec()ing:
#   ship/arbiter-tts-server   the service, linked with libtorch (release, stripped)
#   ship/tts-speech-bench     tts-service/benches/speech.rs (release, stripped); give it
#                             --server ship/arbiter-tts (or ARBITER_TTS_BIN)
#   ship/lib/                 libespeak-ng.so.1 and libsonic.so.0 from this machine, and a
#                             stub libpcaudio.so.0 (scripts/pcaudio-stub.c): libespeak-ng
#                             needs pcaudio only to play audio, which arbiter-tts never asks
#                             for, and the real one pulls in PulseAudio and ALSA
#   ship/espeak-ng-data/      eSpeak NG's data: by default only what English needs (phoneme
#                             tables, intonations, en_dict, the language and voice files);
#                             ESPEAK_DATA=full copies all of it (~13 MB)
#
# On the host (examples/gpu-tts-bench.sh does this):
#   export LD_LIBRARY_PATH=$PWD/ship/lib:$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
#   export ESPEAK_DATA_PATH=$PWD/ship      # the directory that holds espeak-ng-data/
#
# Leaves ship/'s other files (arbiter-video, arbiter-supervisor, ...) alone. SKIP_BUILD=1
# packs what was built before. Ends with a self-check: the shipped binary, with only ship/lib
# and the shipped data, speaks through the stub.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/tch-target}"
ship="${SHIP:-ship}"
system_lib=/usr/lib/x86_64-linux-gnu
log() { printf '[ship-tts] %s\n' "$*" >&2; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building arbiter-tts and arbiter-tts-server (release) in $CARGO_TARGET_DIR"
    cargo build --release -p arbiter-tts -p arbiter-tts-client --bins
fi
log "building the speech bench (bench profile: release)"
# The executable's path comes from cargo's own report of the artifact.
bench=$(cargo bench -p arbiter-tts --bench speech --no-run --message-format=json-render-diagnostics |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "speech" \
            and "bench" in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])
')
[ -x "$bench" ] || { log "cargo reported no speech bench executable"; exit 1; }

mkdir -p "$ship/lib"
log "stripping into $ship/: arbiter-tts, arbiter-tts-server, tts-speech-bench (from $bench)"
strip -o "$ship/arbiter-tts" "$CARGO_TARGET_DIR/release/arbiter-tts"
strip -o "$ship/arbiter-tts-server" "$CARGO_TARGET_DIR/release/arbiter-tts-server"
strip -o "$ship/tts-speech-bench" "$bench"

log "libraries into $ship/lib"
for lib in libespeak-ng.so.1 libsonic.so.0; do
    [ -e "$system_lib/$lib" ] || { log "$system_lib/$lib is missing: apt-get install libespeak-ng-dev"; exit 1; }
    strip --strip-unneeded -o "$ship/lib/$lib" "$(readlink -f "$system_lib/$lib")"
done
cc -shared -fPIC -O2 -fvisibility=hidden -Wall -Wextra -Werror -Wl,-soname,libpcaudio.so.0 \
    -o "$ship/lib/libpcaudio.so.0" scripts/pcaudio-stub.c
strip --strip-unneeded "$ship/lib/libpcaudio.so.0"

data="$system_lib/espeak-ng-data"
log "eSpeak NG data into $ship/espeak-ng-data (${ESPEAK_DATA:-english})"
rm -rf "$ship/espeak-ng-data"
if [ "${ESPEAK_DATA:-english}" = full ]; then
    cp -rL "$data" "$ship/espeak-ng-data"
else
    # The voice and language files are small and ListVoices reads them all; only the large
    # per-language dictionaries are left out (a voice other than English would fail to load).
    mkdir -p "$ship/espeak-ng-data"
    for f in phontab phonindex phondata intonations en_dict lang voices; do
        cp -rL "$data/$f" "$ship/espeak-ng-data/"
    done
fi

# Self-check, with nothing of the system's eSpeak NG: only ship/lib and the shipped data.
torch_lib=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH="$PWD/$ship/lib:$torch_lib"
export ESPEAK_DATA_PATH="$PWD/$ship"
for lib in libespeak-ng.so.1 libsonic.so.0 libpcaudio.so.0; do
    resolved=$(ldd "$ship/arbiter-tts-server" | awk -v l="$lib" '$1 == l { print $3 }')
    if [ "$resolved" != "$PWD/$ship/lib/$lib" ]; then
        log "self-check: $lib resolves to '${resolved:-nothing}', not $ship/lib"
        exit 1
    fi
done
check=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$check"' EXIT
RUST_LOG=warn "$ship/arbiter-tts" serve --socket "$check/tts.sock" --supervisor "$check/none.sock" \
    2>"$check/serve.log" &
server=$!
for _ in $(seq 100); do [ -S "$check/tts.sock" ] && break; sleep 0.1; done
if ! "$ship/arbiter-tts" say --socket "$check/tts.sock" --text "The shipped voice speaks." \
    --out "$check/check.wav" >"$check/say.txt" 2>&1; then
    log "self-check: the shipped binary did not speak:"; cat "$check/say.txt" "$check/serve.log" >&2
    exit 1
fi
log "self-check: $(cat "$check/say.txt")"

log "ship/ now:"
du -sh "$ship"/* >&2
total=$(du -sk "$ship" | cut -f1)
tree=$(git ls-files -z | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
log "ship/ $((total / 1024)) MiB + tracked tree $((tree / 1024)) MiB (the device tool carries 64 MiB in all)"
if [ $((total + tree)) -gt $((60 * 1024)) ]; then
    log "WARNING: over 60 MiB together: leave out what this run does not need"
fi
