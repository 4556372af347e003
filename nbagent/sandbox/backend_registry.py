"""The registry of sandbox backends: a backend is one module plus one :func:`register_backend` call.

>>> register_backend("podman", PodmanBackend, auto_rank=5)   # doctest: +SKIP
>>> SandboxSpec(backend="podman")                              # doctest: +SKIP

``SandboxSpec(backend=...)`` validation, ``backend="auto"`` resolution, the ``nbagent sandboxes`` CLI and
the managers all read this registry. The built-in backends (``docker``, ``local``) register themselves
when :mod:`nbagent.sandbox` is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError, SandboxError

if TYPE_CHECKING:
    from .backend import SandboxBackend

__all__ = ["BackendFactory", "BackendSet", "auto_candidates", "backends", "check_name", "make_backend",
           "register_backend", "unregister_backend"]

BackendFactory = Callable[[], "SandboxBackend"]

log = logging.getLogger("nbagent.sandbox")


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


class BackendSet:
    """The backend instances of one manager: the ones given to it, else one made from the registry per name
    on first use. When some were given, only those are listed and pruned."""

    def __init__(self, given: Mapping[str, SandboxBackend] | None = None) -> None:
        self._made: dict[str, SandboxBackend] = dict(given or {})
        self._given = tuple(self._made)

    def get(self, name: str) -> SandboxBackend:
        """The instance for ``name`` (made on first use); ``SandboxError`` for an unknown name."""
        backend = self._made.get(name)
        if backend is None:
            try:
                backend = make_backend(name)
            except ConfigError as e:
                raise SandboxError(str(e)) from None
            self._made[name] = backend
        return backend

    async def available(self, name: str) -> bool:
        try:
            return await self.get(name).available()
        except SandboxError:
            return False

    async def first_available(self) -> str:
        """What ``backend="auto"`` means now: the lowest-ranked backend that can make sandboxes."""
        tried: list[str] = []
        for name in auto_candidates():
            if await self.available(name):
                if tried:
                    log.info("sandbox backend(s) %s not available: sandboxes use %s", ", ".join(tried), name)
                return name
            tried.append(name)
        raise SandboxError(f"no sandbox backend is available (tried: {', '.join(tried) or 'none'})")

    async def reachable(self) -> list[SandboxBackend]:
        """The backends to list and prune: the given ones, else every registered one, if available now."""
        return [self.get(n) for n in self._given or backends() if await self.available(n)]

    async def aclose(self) -> None:
        for backend in list(self._made.values()):
            await backend.aclose()
