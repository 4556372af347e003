"""Optional parts reached through guarded imports: the response cache and the sandbox manager.

The notebook layer works whether or not these packages are installed; when they are, their figures are
shown (``%agent cache``, ``%agent sandboxes``, the dashboard) and ``--cache`` / ``--sandbox`` use them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..events import Event, EventBus
from ..metrics import DEFAULT_HANDLERS, MetricsRegistry, RunMetricsIndex

__all__ = ["CACHE_MODES", "SANDBOX_BACKENDS", "cache_stats", "install_sandbox_metrics", "response_cache",
           "sandbox_stats", "sandbox_tools"]

CACHE_MODES = ("off", "read-write", "record", "replay")


def _module(name: str) -> Any | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


_registry = _module("nbagent.sandbox.registry")
# the backends registered when the notebook layer is imported (the sandbox package's registry)
SANDBOX_BACKENDS = ("auto", *(_registry.backends() if _registry is not None else ("docker", "local")))


def _as_dict(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    if hasattr(stats, "to_dict"):
        return dict(stats.to_dict())
    if hasattr(stats, "__dataclass_fields__"):
        return {k: getattr(stats, k) for k in stats.__dataclass_fields__}
    return dict(stats) if isinstance(stats, dict) else {"value": stats}


# --- sandboxes --------------------------------------------------------------------------------------


def sandbox_stats(*, create: bool = True) -> dict[str, Any] | None:
    """The process-wide sandbox manager's :class:`SandboxStats` as a dict, or None without sandboxes.

    ``create=False`` (the dashboard) only looks at a manager that some run has already made.
    """
    mod = _module("nbagent.sandbox.manager")
    if mod is None or not hasattr(mod, "default_manager"):
        return None
    try:
        manager = mod.default_manager() if create else getattr(mod, "_default", None)
        return None if manager is None else _as_dict(manager.stats())
    except Exception:  # noqa: BLE001 - an optional part that fails shows as absent
        return None


def install_sandbox_metrics(index: RunMetricsIndex) -> None:
    """Feed ``sandbox.lease_wait`` and ``sandbox.exec`` histograms when the sandbox package registers none."""
    mod = _module("nbagent.sandbox.events")
    if mod is None:
        return
    leased, executed = getattr(mod, "SandboxLeased", None), getattr(mod, "SandboxExec", None)
    pairs: list[tuple[type[Event], Callable[[MetricsRegistry, Any], None]]] = []
    if leased is not None and not DEFAULT_HANDLERS.handlers_for(leased):
        pairs.append((leased, lambda reg, e: reg.histogram("sandbox.lease_wait").record(e.wait)))
    if executed is not None and not DEFAULT_HANDLERS.handlers_for(executed):
        pairs.append((executed, lambda reg, e: reg.histogram("sandbox.exec").record(e.seconds)))
    for event_type, handler in pairs:
        index.register(event_type, handler)


def sandbox_histogram_names(reg: MetricsRegistry) -> tuple[str | None, str | None]:
    """The names of the lease-wait and exec histograms, whichever package feeds them."""
    names = [n for n in reg.histograms if n.startswith("sandbox.")]
    wait = next((n for n in names if "wait" in n), None)
    execs = next((n for n in names if "exec" in n), None)
    return wait, execs


# --- response cache ---------------------------------------------------------------------------------


def response_cache(mode: str, bus: EventBus, caches: dict[str, Any]) -> Any | None:
    """The notebook's response cache in ``mode`` (one per mode, kept in ``caches``), or None when off.

    Raises ``RuntimeError`` when the cache package is not installed.
    """
    if mode == "off":
        return None
    if mode not in caches:
        mod = _module("nbagent.cache")
        if mod is None or not hasattr(mod, "ResponseCache"):
            raise RuntimeError(f"--cache {mode}: the response cache is not available in this installation")
        caches[mode] = mod.ResponseCache(mode=mode, bus=bus)
    return caches[mode]


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
