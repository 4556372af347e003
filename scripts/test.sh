#!/usr/bin/env bash
# Set everything up on a fresh machine (Python packages, Docker engine, sandbox image, bubblewrap)
# and run the linters and the whole test suite. Nothing is skipped for lack of a part: the
# integration tests fail if their real part is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh dev notebook execute profile local otel mcp fast
export NBAGENT_REQUIRE_LOCAL_MODEL=1
bash scripts/setup-sandbox.sh
export NBAGENT_REQUIRE_SANDBOXES=1
bash scripts/setup-notebook.sh
export NBAGENT_REQUIRE_BROWSER=1
echo "==> ruff"
.venv/bin/ruff check nbagent tests benchmarks
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
echo "==> all checks passed in $(( $(date +%s) - start )) s"
