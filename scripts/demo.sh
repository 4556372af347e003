#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job: the quickstart notebook, executed headless
# in a real kernel against the embedded model (llama.cpp + SmolLM2-135M, no API key, no network), saved
# with its outputs and as HTML. The first set-up compiles llama.cpp (several minutes, then cached).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh notebook execute local
bash scripts/setup-notebook.sh >/dev/null
echo "==> running notebooks/quickstart.ipynb against the embedded model"
.venv/bin/nbagent execute notebooks/quickstart.ipynb --out artifacts "$@"
echo "==> done in $(( $(date +%s) - start )) s. Also try: .venv/bin/nbagent demo   (concurrent runs, simulated server)"
