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
    "EventBus": "nbagent.events",
    "LLMClient": "nbagent.llm",
    "ModelRequest": "nbagent.llm",
    "ModelResponse": "nbagent.llm",
    "RunContext": "nbagent.agent",
    "RunHandle": "nbagent.agent",
    "ResponseCache": "nbagent.cache",
    "RunResult": "nbagent.agent",
    "Settings": "nbagent.config",
    "Tool": "nbagent.agent",
    "ToolCache": "nbagent.cache",
    "UsageLimits": "nbagent.llm",
    "default_bus": "nbagent.events",
    "errors": "nbagent.errors",
    "events": "nbagent.events",
    "tool": "nbagent.agent",
}

__all__ = [
    "Agent",
    "EventBus",
    "LLMClient",
    "ModelRequest",
    "ModelResponse",
    "ResponseCache",
    "RunContext",
    "RunHandle",
    "RunResult",
    "Settings",
    "Tool",
    "ToolCache",
    "UsageLimits",
    "__version__",
    "default_bus",
    "errors",
    "events",
    "load_ipython_extension",
    "tool",
    "unload_ipython_extension",
]

if TYPE_CHECKING:  # pragma: no cover
    from . import errors, events
    from .agent import Agent, RunContext, RunHandle, RunResult, Tool, tool
    from .cache import ResponseCache, ToolCache
    from .config import Settings
    from .events import EventBus, default_bus
    from .llm import LLMClient, ModelRequest, ModelResponse, UsageLimits


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbagent' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if module.endswith("." + name) else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbagent``: register the magics (imports the notebook layer only now)."""
    from .notebook import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .notebook import unload_ipython_extension as unload

    unload(ipython)
