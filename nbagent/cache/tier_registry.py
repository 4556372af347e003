"""Cache tiers by name: a tier is one small async Protocol plus one :func:`register_tier` call.

The response and tool caches always have their in-process memory tier and, unless ``path=":memory:"``, the
SQLite file tier (``memory`` and ``sqlite``, built in). Further tiers — a Redis or S3 tier, a shared
directory — are looked up after those miss and written after those, in the order given::

    from nbagent.cache import register_tier

    class RedisTier:                              # any object with these three async methods
        async def get(self, key: str) -> str | None: ...
        async def put(self, key: str, value: str, *, ttl: float | None = None) -> None: ...
        async def delete(self, key: str) -> None: ...

    register_tier("redis", lambda **options: RedisTier(**options))

then ``ResponseCache(tiers=["redis"])``, or in the config file ``[cache] tiers = ["redis"]`` (with
``[cache.tier_options.redis]`` passed to the factory), which ``%%agent --cache`` and ``Runtime.response_cache``
use. Keys are already namespaced (``<kind>:<namespace>:<key>``) and values are the caches' JSON text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = ["BUILTIN_TIERS", "CacheTier", "make_tier", "register_tier", "tiers", "unregister_tier"]

BUILTIN_TIERS = ("memory", "sqlite")


@runtime_checkable
class CacheTier(Protocol):
    """A place to keep cached values: three async methods (``aclose()`` is optional)."""

    async def get(self, key: str) -> str | None: ...

    async def put(self, key: str, value: str, *, ttl: float | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...


_factories: dict[str, Callable[..., CacheTier]] = {}


def register_tier(name: str, factory: Callable[..., CacheTier], *, replace: bool = False) -> None:
    """Make ``factory(**options)`` the tier called ``name``."""
    if name in BUILTIN_TIERS:
        raise ValueError(f"{name!r} is a built-in cache tier")
    if name in _factories and not replace:
        raise ValueError(f"a cache tier named {name!r} is already registered (replace=True to replace it)")
    _factories[name] = factory


def unregister_tier(name: str) -> None:
    _factories.pop(name, None)


def tiers() -> tuple[str, ...]:
    """The names of every tier: the built-in ones, then the registered ones."""
    return (*BUILTIN_TIERS, *_factories)


def make_tier(name: str, **options: Any) -> CacheTier:
    """A new tier of the kind registered as ``name``."""
    factory = _factories.get(name)
    if factory is None:
        raise ValueError(f"unknown cache tier {name!r}; known: {', '.join(tiers())} (register one with "
                         f"nbagent.cache.register_tier)")
    tier = factory(**options)
    if not isinstance(tier, CacheTier):
        raise TypeError(f"the factory of cache tier {name!r} made a {type(tier).__name__}, which lacks async "
                        f"get/put/delete")
    return tier
