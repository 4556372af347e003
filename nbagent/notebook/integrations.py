"""Optional parts reached through guarded imports: the sandbox package and cache statistics.

The notebook layer works whether or not these packages are installed; when they are, their figures are
shown (``%agent cache``, ``%agent sandboxes``, the dashboard) and ``--cache`` / ``--sandbox`` use them.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..runtime import CACHE_MODES, Runtime

__all__ = ["CACHE_MODES", "cache_stats", "sandbox_backends", "sandbox_stats", "sandbox_tools"]



def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def sandbox_backends() -> tuple[str, ...]:
    """``auto`` and the names of the sandbox backends registered now (the sandbox package's registry)."""
    mod = _module("nbagent.sandbox.backend_registry")
    return ("auto", *(mod.backends() if mod is not None else ()))


def __getattr__(name: str) -> Any:
    """``SANDBOX_BACKENDS``: the backends registered now (looked up when asked: importing the sandbox package
    is left to the first use, so that ``%load_ext nbagent`` does not pay for it)."""
    if name == "SANDBOX_BACKENDS":
        return sandbox_backends()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _as_dict(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    if hasattr(stats, "to_dict"):
        return dict(stats.to_dict())
    if hasattr(stats, "__dataclass_fields__"):
        return {k: getattr(stats, k) for k in stats.__dataclass_fields__}
    return dict(stats) if isinstance(stats, dict) else {"value": stats}


# --- sandboxes --------------------------------------------------------------------------------------


def sandbox_stats(runtime: Runtime, *, create: bool = True) -> dict[str, Any] | None:
    """The runtime's sandbox manager's :class:`SandboxStats` as a dict, or None without sandboxes.

    ``create=False`` (the dashboard) only looks at a manager that some run has already made.
    """
    if _module("nbagent.sandbox.manager") is None:
        return None
    try:
        manager = runtime.sandboxes if create else runtime.sandboxes_if_started()
        return None if manager is None else _as_dict(manager.stats())
    except Exception:  # noqa: BLE001 - an optional part that fails shows as absent
        return None


def sandbox_tools(backend: str | None) -> dict[str, Any]:
    """The built-in sandbox tools (``python``, ``shell``, ``read_file``, ``write_file``) on ``backend``, by name;
    empty when the sandbox package is not installed."""
    tools_mod, spec_mod = _module("nbagent.sandbox.tools"), _module("nbagent.sandbox.spec")
    if tools_mod is None or spec_mod is None:
        return {}
    spec = spec_mod.SandboxSpec(backend=backend) if backend else None
    return {t.name: t for t in tools_mod.sandbox_tools(spec=spec)}


def cache_stats(cache: Any | None) -> dict[str, Any] | None:
    """``cache.stats()`` (sync) as a dict, or None."""
    if cache is None or not hasattr(cache, "stats"):
        return None
    try:
        stats = cache.stats()
    except Exception:  # noqa: BLE001
        return None
    if hasattr(stats, "__await__"):
        close = getattr(stats, "close", None)
        if close is not None:
            close()
        return None
    return _as_dict(stats)
