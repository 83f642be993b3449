#!/usr/bin/env bash
# tunedeck on a fresh machine:
#   ./run.sh          set up (first time only) and open the app on the bundled demo
#   ./run.sh test     set up (first time only) and run the test suite
#   ./run.sh ARGS...  set up, then `tunedeck ARGS...` (e.g. ./run.sh train my.toml)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

system_packages() {
  # OpenBLAS makes float32 training ~30x faster on Linux CPUs; tmux is used by the terminal tests.
  [ "$(uname -s)" = Linux ] || return 0
  command -v apt-get >/dev/null || return 0
  local need=()
  [ -e /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 ] || [ -e /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3 ] || need+=(libopenblas0-pthread)
  command -v tmux >/dev/null || need+=(tmux)
  [ ${#need[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo="sudo -n"; }
  if [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; then
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
      || echo "run.sh: could not install ${need[*]}; training on this CPU will be slower" >&2
  else
    echo "run.sh: please install ${need[*]} (apt-get install ${need[*]}) for fast CPU training" >&2
  fi
}

setup() {
  local stamp=.venv/.tunedeck-installed
  if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then return 0; fi
  system_packages
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
}

preload_blas() {
  # MLX's Linux CPU wheel has a reference BLAS; OpenBLAS preloaded makes float32 matmuls ~30x faster.
  local lib
  for lib in /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3; do
    if [ -e "$lib" ]; then export LD_PRELOAD="$lib${LD_PRELOAD:+ $LD_PRELOAD}"; return; fi
  done
}

setup
case "${1:-}" in
  test) shift; preload_blas; exec .venv/bin/pytest -q "$@" ;;
  *) exec .venv/bin/tunedeck "$@" ;;
esac
