#!/usr/bin/env bash
# Set everything up on a fresh machine and run the main job: concurrent agent runs with a tool,
# printing answers, token usage, latency percentiles and pool health.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh notebook
exec .venv/bin/nbagent demo "$@"
