#!/usr/bin/env bash
# Create .venv and install nbagent with the extras named as arguments (default: dev).
# Idempotent: a second run only installs what changed. The `local` extra compiles llama.cpp the first
# time (7-10 minutes on 2 cores); pip keeps the built wheel in its cache, so later installs take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${*:-dev}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtualenv .venv"
  "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install --quiet --upgrade pip
case " $extras " in
  *" local "*)
    if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
      echo "==> installing llama.cpp's server (llama-cpp-python); the first build compiles C++ for several minutes"
      spec=$(grep -o 'llama-cpp-python\[server\]==[0-9.]*' pyproject.toml)
      # show the compiler's [n/total] steps as one progress line
      CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "${pip[@]}" install -v "$spec" 2>&1 \
        | tee .venv/llama-build.log | awk '/^ *\[[0-9]+\/[0-9]+\]/ { printf "\r    compiling llama.cpp %s   ", $1; fflush() }
               /Successfully installed|Using cached|already satisfied/ { print "\n    " $0 }
               /ERROR|error:/ { print }' || true
      .venv/bin/python -c "import llama_cpp" \
        || { tail -50 .venv/llama-build.log >&2; echo "llama-cpp-python failed to install" >&2; exit 1; }
    fi ;;
esac
echo "==> installing nbagent[${extras// /,}] into .venv"
log=$(mktemp)
if ! "${pip[@]}" install --quiet -e ".[${extras// /,}]" >"$log" 2>&1; then
  cat "$log" >&2
  echo "pip could not install nbagent[${extras// /,}]" >&2
  exit 1
fi
grep -i "^error" "$log" || true
rm -f "$log"
.venv/bin/python -c 'import nbagent' || { echo "nbagent failed to install" >&2; exit 1; }
echo "==> ready: $(.venv/bin/python -c 'import nbagent, sys; print("nbagent", nbagent.__version__, "on Python", sys.version.split()[0])')"
