"""``%load_ext nbagent`` imports only what registering the magics needs; the rest comes on first use or while
the kernel is idle."""

from __future__ import annotations

import json
import subprocess
import sys

#: Imported by the first run, the first widget or the dashboard, never by ``%load_ext`` itself.
DEFERRED = ("ipywidgets", "plotly", "numpy", "anywidget", "aiohttp", "tiktoken", "openai", "nbagent.agent",
            "nbagent.llm", "nbagent.sandbox", "nbagent.timeline", "nbagent.notebook.session",
            "nbagent.notebook.widgets", "nbagent.notebook.spec", "nbagent.notebook.static",
            "nbagent.notebook.dashboard", "nbagent.notebook.integrations")

_CODE = """
import json, sys
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
before = set(sys.modules)
ip.run_line_magic("load_ext", "nbagent")
loaded = sorted(set(sys.modules) - before)
magics = ip._nbagent_magics
ip.run_line_magic("config", "AgentMagics.refresh_hz = 2")
registered = magics.registry_if_started() is None
registry = magics.registry  # made on first use, with the configured rates
print(json.dumps({"loaded": loaded, "registered": registered, "hz": registry.refresh_hz}))
"""


def test_load_ext_imports_no_widget_plotting_or_client_package() -> None:
    out = subprocess.run([sys.executable, "-c", _CODE], check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    heavy = [m for m in result["loaded"] if m.split(".")[0] in DEFERRED or m.rsplit(".", 1)[0] in DEFERRED
             or m in DEFERRED]
    assert heavy == []
    assert "nbagent.notebook.magics" in result["loaded"] and "nbagent.runtime" in result["loaded"]
    assert result["registered"] and result["hz"] == 2.0


def test_the_idle_warm_up_makes_the_registry_and_imports_the_run_widget() -> None:
    code = """
import asyncio, json, sys
from IPython.testing.globalipapp import start_ipython
from nbagent.notebook import _warm_up_when_idle, register

ip = start_ipython()
magics = register(ip)

async def main():
    _warm_up_when_idle(magics, delay=0.0)
    while magics.registry_if_started() is None or "nbagent.notebook.widgets" not in sys.modules:
        await asyncio.sleep(0.01)  # bounded by the warm-up's own steps (the test's timeout otherwise)
    return sorted(m for m in ("ipywidgets", "nbagent.notebook.widgets", "nbagent.notebook.spec") if m in sys.modules)

print(json.dumps(asyncio.run(main())))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300).stdout
    assert json.loads(out.strip().splitlines()[-1]) == ["ipywidgets", "nbagent.notebook.spec",
                                                        "nbagent.notebook.widgets"]
