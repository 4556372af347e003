#!/usr/bin/env bash
# Set up what the notebook tests need, on top of scripts/setup.sh: the notebook and test Python packages
# in .venv, Debian's Chromium for the JupyterLab end-to-end test, and a kernelspec for the venv's Python.
# Idempotent: a second run checks and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  bash scripts/setup.sh dev notebook execute profile
fi

# Python packages (normally already there through the `notebook`, `execute` and `test` extras)
if ! "$PY" -c "import ipykernel, ipywidgets, plotly, anywidget, nest_asyncio2, numpy, psutil, nbclient, nbformat, \
nbconvert, jupyterlab, playwright" 2>/dev/null; then
  echo "==> installing the notebook packages into .venv"
  "$PY" -m pip install --disable-pip-version-check -q "ipykernel>=6.29" "ipywidgets>=8.1" "plotly>=6.0" \
    "anywidget>=0.9" "nest-asyncio2>=1.7" "numpy>=1.24" "psutil>=5.9" "nbclient>=0.10" "nbformat>=5.10" \
    "nbconvert>=7.16" "jupyterlab>=4.2" "playwright>=1.45"
fi

# Chromium from Debian (Playwright's own browser download is not used)
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  echo "==> installing Debian chromium"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
fi

# A kernelspec named python3 inside the venv, pointing at the venv's Python
spec=.venv/share/jupyter/kernels/python3/kernel.json
if [ ! -f "$spec" ] || ! grep -q "$(cd .venv && pwd)" "$spec"; then
  echo "==> registering the python3 kernelspec of .venv"
  "$PY" -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
fi

echo "==> notebook ready: $("$PY" -c 'import ipykernel, ipywidgets, plotly, jupyterlab
print(f"ipykernel {ipykernel.__version__}, ipywidgets {ipywidgets.__version__}, plotly {plotly.__version__}, \
jupyterlab {jupyterlab.__version__}")'), $(chromium --version 2>/dev/null | head -1 || echo 'chromium missing')"
