#!/usr/bin/env bash
# tunedeck on a fresh machine:
#   ./run.sh          set up (first time only) and open the app on the bundled demo
#   ./run.sh test     set up (first time only) and run the test suite (pytest arguments may follow)
#   ./run.sh lint     ruff and the import contracts (core never imports the front ends)
#   ./run.sh lock     refresh constraints.txt from a fresh install of pyproject.toml's ranges
#   ./run.sh ARGS...  set up, then `tunedeck ARGS...` in the current directory (e.g. ./run.sh data check my.jsonl)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"

say() { echo "run.sh: $*" >&2; }
# llama-cpp-python's build: portable (no -march=native), the library only (no tools, examples, tests, server, mtmd)
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
LLAMA_CMAKE_ARGS+=" -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

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
    say "installing ${need[*]} with apt-get (about 20 s)"
    $sudo apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
      || say "could not install ${need[*]}; training on this CPU will be slower"
  else
    say "please install ${need[*]} (apt-get install ${need[*]}) for fast CPU training"
  fi
}

link_commands() {
  # Put `tunedeck` (and mlx-lm's generate, which README uses) on PATH: a link in ~/.local/bin, ~/bin or
  # /usr/local/bin, the first that is on PATH and writable, else ~/.local/bin with the line to add to the
  # profile (TUNEDECK_BIN_DIR overrides). Never replaces a command that is not a tunedeck checkout's.
  local dir="${TUNEDECK_BIN_DIR:-}" d
  if [ -z "$dir" ]; then
    for d in "$HOME/.local/bin" "$HOME/bin" /usr/local/bin; do
      case ":$PATH:" in *":$d:"*) [ -d "$d" ] && [ -w "$d" ] && { dir=$d; break; } ;; esac
    done
  fi
  dir=${dir:-$HOME/.local/bin}
  mkdir -p "$dir"
  local cmd target changed=""
  for cmd in tunedeck mlx_lm.generate; do
    target="$dir/$cmd"
    local old; old=$(readlink "$target" 2>/dev/null || true)
    [ "$old" = "$VENV/bin/$cmd" ] && continue
    case "$old" in */.venv/bin/"$cmd") rm -f "$target"; say "$target pointed to another checkout ($old)" ;; esac
    if [ -e "$target" ] || [ -L "$target" ]; then
      say "$target exists and is not this checkout's; left alone (use $VENV/bin/$cmd)"
      continue
    fi
    ln -s "$VENV/bin/$cmd" "$target" && changed=1
  done
  [ -n "$changed" ] || return 0
  case ":$PATH:" in
    *":$dir:"*) say "\`tunedeck\` is on your PATH now ($dir/tunedeck): use it from any directory" ;;
    *) say "\`tunedeck\` is linked in $dir, which is not on your PATH; add this line to your shell profile:"
       say "  export PATH=\"$dir:\$PATH\"" ;;
  esac
}

setup() {
  # $1: the extras to install. The app needs none; the tests and the static checks add pytest, ruff,
  # torch + TRL (the oracle tests) and llama-cpp-python (the GGUF check; llama.cpp compiles from source:
  # only its library, for any x86-64/arm64 CPU; TUNEDECK_LLAMA_CMAKE_ARGS adds cmake flags, e.g. CI's -O0).
  local extras="$1" stamp="$VENV/.tunedeck-installed${1:+-${1//,/-}}"
  if [ -f "$stamp" ] && [ "$stamp" -nt "$ROOT/pyproject.toml" ] && [ "$stamp" -nt "$ROOT/constraints.txt" ]; then return 0; fi
  if [ -z "$extras" ]; then
    say "first-time set-up in $VENV (usually 1.5-2 minutes; later starts skip it)"
  else
    say "set-up for the tests in $VENV: pytest, ruff, torch + TRL + PEFT for the oracle tests, and llama.cpp" \
        "(llama-cpp-python, compiled here) for the GGUF checks (about 10 minutes on 2 cores; later runs skip it)"
  fi
  system_packages
  if [ ! -x "$VENV/bin/python" ]; then say "creating the virtual environment"; "$PY" -m venv "$VENV"; fi
  say "installing tunedeck${extras:+ [$extras]} and its dependencies (mlx, mlx-lm, textual, ... pinned by constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! CMAKE_ARGS="$LLAMA_CMAKE_ARGS ${TUNEDECK_LLAMA_CMAKE_ARGS:-}" \
      CMAKE_BUILD_PARALLEL_LEVEL="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" \
      "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$ROOT/constraints.txt" -e "$ROOT${extras:+[$extras]}" \
      2> >(grep -v "^WARNING: Location .* is ignored" >&2); then
    say "pip install failed (see above)"; exit 1
  fi
  touch "$stamp" "$VENV/.tunedeck-installed"  # the extras include what the app needs
  say "set-up done"
}

preload_blas() {
  # MLX's Linux CPU wheel has a reference BLAS; OpenBLAS preloaded makes float32 matmuls ~30x faster.
  local lib
  for lib in /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 /usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3; do
    if [ -e "$lib" ]; then export LD_PRELOAD="$lib${LD_PRELOAD:+ $LD_PRELOAD}"; return; fi
  done
}

lint() {
  # import-linter reads the installed package; the editable install maps `tunedeck` onto the repo
  # root, which grimp cannot walk, so give it the wheel's layout through links.
  local tree status=0; tree=$(mktemp -d)
  mkdir "$tree/tunedeck"
  for d in core tui themes; do ln -s "$ROOT/$d" "$tree/tunedeck/$d"; done
  cp "$ROOT/tunedeck_init.py" "$tree/tunedeck/__init__.py"
  (cd "$ROOT" && "$VENV/bin/ruff" check . && PYTHONPATH="$tree" "$VENV/bin/lint-imports" --no-cache) || status=$?
  rm -rf "$tree"
  return $status
}

lock() {
  local scratch; scratch=$(mktemp -d)
  "$PY" -m venv "$scratch/venv"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" \
    "$scratch/venv/bin/python" -m pip install -q "$ROOT[test,lint,verify,oracle]"
  { sed -n '1,2p' "$ROOT/constraints.txt"; "$scratch/venv/bin/python" -m pip freeze | grep -v -E '^(-e |tunedeck)'; } > "$ROOT/constraints.txt.new"
  mv "$ROOT/constraints.txt.new" "$ROOT/constraints.txt"
  rm -rf "$scratch"
  say "constraints.txt refreshed; run ./run.sh test before committing it"
}

case "${1:-}" in
  lock) shift; lock; exit ;;
esac
case "${1:-}" in
  test|lint) setup "test,lint,oracle,verify" ;;
  *) setup "" ;;
esac
link_commands
case "${1:-}" in
  # the tests run on every core (at most 4 workers: each trains real MLX models); TUNEDECK_TEST_WORKERS=0 runs
  # them in this one process; -rs prints why each skipped test skipped (e.g. an oracle that is not installed),
  # --durations the 15 slowest (CI has 30 minutes)
  test) shift; preload_blas; cd "$ROOT"
        exec "$VENV/bin/pytest" -q -rs --durations=15 -n "${TUNEDECK_TEST_WORKERS:-auto}" --maxprocesses=4 \
          --dist worksteal "$@" ;;
  lint) shift; lint ;;
  *) exec "$VENV/bin/tunedeck" "$@" ;;
esac
