# Sourced by the other scripts: points the build at the libtorch that scripts/setup.sh
# installed (torch==2.11.0 from PyPI, what tch 0.24 expects) and puts its tools on PATH.
ARBITER_CACHE="${ARBITER_CACHE:-$HOME/.cache/arbiter}"
export ARBITER_CACHE
export LIBTORCH_USE_PYTORCH=1
export PATH="$ARBITER_CACHE/venv/bin:$PATH"
