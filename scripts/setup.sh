#!/usr/bin/env bash
# Create .venv and install nbagent with the extras named as arguments (default: dev).
# Idempotent: a second run only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${*:-dev}"
extras="${extras// /,}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating virtualenv .venv"
  "$PY" -m venv .venv
fi
echo "==> installing nbagent[$extras] into .venv"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar on -q -e ".[$extras]"
echo "==> ready: $(.venv/bin/python -c 'import nbagent, sys; print("nbagent", nbagent.__version__, "on Python", sys.version.split()[0])')"
