"""The registry of sandbox backends: a backend is one module plus one :func:`register_backend` call.

>>> register_backend("podman", PodmanBackend, auto_rank=5)   # doctest: +SKIP
>>> SandboxSpec(backend="podman")                              # doctest: +SKIP

``SandboxSpec(backend=...)`` validation, ``backend="auto"`` resolution, the ``nbagent sandboxes`` CLI and
the managers all read this registry. The built-in backends (``docker``, ``local``) register themselves
when :mod:`nbagent.sandbox` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from .backend import SandboxBackend

__all__ = ["BackendFactory", "auto_candidates", "backends", "check_name", "make_backend", "register_backend",
           "unregister_backend"]

BackendFactory = Callable[[], "SandboxBackend"]


@dataclass(frozen=True, slots=True)
class _Registration:
    factory: BackendFactory
    auto_rank: int | None


_registry: dict[str, _Registration] = {}


def register_backend(name: str, factory: BackendFactory, *, auto_rank: int | None = None,
                     replace: bool = False) -> None:
    """Make ``name`` a sandbox backend: ``factory()`` returns a new :class:`SandboxBackend` instance.

    ``auto_rank`` puts it among the backends ``backend="auto"`` tries, lowest rank first (Docker is 0,
    local 100; None: never chosen automatically). Registering a taken name raises ``ConfigError`` unless
    ``replace=True``.
    """
    if not name or not name.replace("-", "_").isidentifier() or name in ("auto", "all"):
        raise ConfigError(f"a sandbox backend needs a plain name (not 'auto' or 'all'), got {name!r}")
    if name in _registry and not replace:
        raise ConfigError(f"sandbox backend {name!r} is already registered (pass replace=True to replace it)")
    _registry[name] = _Registration(factory, auto_rank)


def unregister_backend(name: str) -> None:
    """Forget a backend (managers that already made one keep it)."""
    _registry.pop(name, None)


def backends() -> tuple[str, ...]:
    """The names of the registered backends, in registration order."""
    return tuple(_registry)


def auto_candidates() -> tuple[str, ...]:
    """The backends ``backend="auto"`` tries, in order."""
    ranked = [(r.auto_rank, i, n) for i, (n, r) in enumerate(_registry.items()) if r.auto_rank is not None]
    return tuple(n for _, _, n in sorted(ranked))


def make_backend(name: str) -> SandboxBackend:
    """A new instance of the backend registered as ``name``."""
    registration = _registry.get(name)
    if registration is None:
        raise ConfigError(f"unknown sandbox backend {name!r} (registered: {', '.join(backends()) or 'none'})")
    return registration.factory()


def check_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` is ``"auto"`` or a registered backend."""
    if name != "auto" and name not in _registry:
        known = ", ".join(("auto", *backends()))
        raise ConfigError(f"sandbox backend must be one of {known}; got {name!r} (see register_backend)")
