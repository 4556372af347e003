"""nbagent: a Jupyter-first async runtime for LLM agents.

``import nbagent`` is cheap: names are imported on first use, and nothing here imports IPython,
ipywidgets or plotly (only :mod:`nbagent.notebook` does, when ``%load_ext nbagent`` asks for it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Agent": "nbagent.agent",
    "BatchResult": "nbagent.fanout",
    "BenchResult": "nbagent.bench",
    "EventBus": "nbagent.events",
    "LLMClient": "nbagent.llm",
    "ModelRequest": "nbagent.llm",
    "ModelResponse": "nbagent.llm",
    "ResponseCache": "nbagent.cache",
    "RunContext": "nbagent.agent",
    "RunHandle": "nbagent.agent",
    "RunRecord": "nbagent.record",
    "RunResult": "nbagent.agent",
    "RunStore": "nbagent.store",
    "Runtime": "nbagent.runtime",
    "Span": "nbagent.record",
    "Settings": "nbagent.config",
    "Tool": "nbagent.agent",
    "ToolCache": "nbagent.cache",
    "UsageLimits": "nbagent.llm",
    "amap": "nbagent.fanout",
    "compare": "nbagent.compare",
    "dashboard": "nbagent.notebook.dashboard",
    "default_bus": "nbagent.events",
    "errors": "nbagent.errors",
    "events": "nbagent.events",
    "map": "nbagent.fanout",
    "mcp_tools": "nbagent.mcp",
    "run_bench": "nbagent.bench",
    "run_many": "nbagent.fanout",
    "runtime": "nbagent.runtime",
    "set_runtime": "nbagent.runtime",
    "tool": "nbagent.agent",
}

__all__ = [
    "Agent",
    "BatchResult",
    "BenchResult",
    "EventBus",
    "LLMClient",
    "ModelRequest",
    "ModelResponse",
    "ResponseCache",
    "RunContext",
    "RunHandle",
    "RunRecord",
    "RunResult",
    "RunStore",
    "Runtime",
    "Settings",
    "Span",
    "Tool",
    "ToolCache",
    "UsageLimits",
    "__version__",
    "amap",
    "compare",
    "dashboard",
    "errors",
    "events",
    "load_ipython_extension",
    "mcp_tools",
    "run_bench",
    "run_many",
    "runtime",
    "set_runtime",
    "tool",
    "unload_ipython_extension",
]
# ``nbagent.map`` (also ``run_many``) and ``nbagent.default_bus`` stay reachable as attributes but are not
# exported: ``from nbagent import *`` must not shadow the builtin ``map``.

if TYPE_CHECKING:  # pragma: no cover
    from . import errors, events
    from .agent import Agent, RunContext, RunHandle, RunResult, Tool, tool
    from .bench import BenchResult, run_bench
    from .cache import ResponseCache, ToolCache
    from .compare import compare
    from .config import Settings
    from .events import EventBus
    from .events import default_bus as default_bus
    from .fanout import BatchResult, amap, run_many
    from .fanout import map as map  # noqa: A004 - an attribute, not exported by *
    from .llm import LLMClient, ModelRequest, ModelResponse, UsageLimits
    from .mcp import mcp_tools
    from .record import RunRecord, Span
    from .runtime import Runtime, runtime, set_runtime
    from .store import RunStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbagent' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.endswith("." + name) and not hasattr(mod, name) else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, "map", "default_bus"})


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbagent``: register the magics (imports the notebook layer only now)."""
    from .notebook import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .notebook import unload_ipython_extension as unload

    unload(ipython)
