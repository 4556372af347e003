"""The runtime: everything a session has, owned in one place and closed in one place.

::

    async with Runtime(settings=Settings.load(profile="local"), store=True) as rt:
        agent = Agent("gpt-4o-mini", [lookup], runtime=rt)
        result = await agent.run("Weather in Paris?")
        rt.records[result.run_id].timeline()       # the same RunRecord as result.record
    # here the HTTP pools, the store's writer, the sandboxes and any server the runtime started are closed

A :class:`Runtime` owns the settings, the event bus, the pooled LLM client, the metrics, the run records,
the response and tool caches, the default tool policy, the sandbox manager, the run store, and any other
part registered with :meth:`Runtime.part` (MCP sessions, the embedded model server...). Parts are built on
first use, so a runtime that never runs a sandbox never starts Docker.

:func:`runtime` is the one documented default: the runtime that ``Agent()`` without ``runtime=`` uses, made on
first use. The notebook extension makes one per kernel (``set_runtime``) and closes it when the extension is
unloaded or the kernel shuts down. No other module keeps process-wide mutable state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .config import Settings
from .events import EventBus
from .record import RecordIndex

if TYPE_CHECKING:  # pragma: no cover
    from .agent.loop import RunResult
    from .llm.client import LLMClient
    from .metrics import RunMetricsIndex
    from .policy import Policy
    from .sandbox.manager import SandboxManager
    from .store.runs import RunStore

__all__ = ["Runtime", "runtime", "set_runtime"]

log = logging.getLogger("nbagent.runtime")
T = TypeVar("T")

CACHE_MODES = ("off", "read-write", "record", "replay")


class Runtime:
    """Owns the parts of a session; ``aclose()`` (or ``async with``) closes everything it opened.

    ``settings``: default ``Settings.load()`` (config file and environment), loaded on first use.
    ``store``: a :class:`~nbagent.store.RunStore`, ``True`` for one at the default path, or ``None``/``False``
    for none (:meth:`enable_store` attaches one later). ``sandboxes``: a
    :class:`~nbagent.sandbox.SandboxManager` (default: one made from the settings on first use).
    ``client``: a pooled :class:`~nbagent.llm.LLMClient` (default: made on first use on this runtime's bus).
    ``policy``: the default tool policy of agents that name none (default: the settings' ``[policy]`` table;
    ``False`` for none). ``max_runs`` bounds how many finished runs' records and metrics are kept.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bus: EventBus | None = None,
        store: RunStore | bool | None = None,
        sandboxes: SandboxManager | None = None,
        client: LLMClient | None = None,
        policy: Policy | bool | None = None,
        max_runs: int = 1000,
    ) -> None:
        self._settings = settings
        self.bus = bus if bus is not None else (client.bus if client is not None else EventBus())
        self._client = client
        self._own_client = client is None
        self._sandboxes = sandboxes
        self._own_sandboxes = sandboxes is None
        self._policy: Any = None if policy is True else policy
        self._policy_given = policy is not None and policy is not True
        self._metrics: RunMetricsIndex | None = None
        self.max_runs = max_runs
        self._born = time.time()  # runs on a shared bus that started before this runtime are not its metrics'
        self.records = RecordIndex.of(self.bus, max_runs=max_runs)
        """Every run's :class:`~nbagent.record.RunRecord` by run id, folded live from the bus (bounded)."""
        self._caches: dict[str, Any] = {}
        self._parts: dict[str, Any] = {}
        self._closers: list[Callable[[], Awaitable[None] | None]] = []
        self._store: RunStore | None = None
        self._own_store = False
        self._detach_store: Callable[[], None] | None = None
        self._numbers = itertools.count(1)
        self.closed = False
        if store is True:
            self.enable_store()
        elif store:
            self.enable_store(store)
        from .exporters import autostart  # OpenTelemetry export when the environment or settings ask for it

        autostart(self, None if settings is None else settings.otel)

    # --- parts -------------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.load()
            if self._settings.otel:
                from .exporters import autostart

                autostart(self, self._settings.otel)
        return self._settings

    @property
    def metrics(self) -> RunMetricsIndex:
        """The global and per-run metrics of every run on this runtime's bus (a bounded index).

        Made on first use: the runs already kept in :attr:`records` that started since this runtime was made
        are folded in first (from their events, in the order they came), so metrics asked for after a batch
        agree with its records. Session events before that (no ``run_id``: concurrency changes, sandbox
        creations) are not kept by records and not counted.
        """
        if self._metrics is None:
            from .metrics import RunMetricsIndex

            index = RunMetricsIndex(max_runs=max(self.max_runs, 100))
            born = self._born
            backlog = [ev for rec in self.records.all() if (rec.started or 0.0) >= born for ev in rec.events]
            backlog.sort(key=lambda ev: ev.ts)
            for ev in backlog:
                index.observe(ev)
            self._metrics = index
            self._closers.append(index.attach(self.bus))
        return self._metrics

    @property
    def client(self) -> LLMClient:
        """One pooled client for every agent on this runtime (one HTTP pool per endpoint and event loop)."""
        if self._client is None:
            from .llm.client import LLMClient

            self._client = LLMClient(self.settings, bus=self.bus)
        return self._client

    @property
    def policy(self) -> Policy | None:
        """The tool policy of agents that name none: the settings' ``[policy]`` table (None when empty).

        One :class:`~nbagent.policy.Policy` for every run, so they share its decision cache.
        """
        if self._policy is None and not self._policy_given and self.settings.policy:
            from .policy import Policy

            self._policy = Policy.from_settings(self.settings.policy, bus=self.bus)
        return self._policy or None

    @property
    def sandboxes(self) -> SandboxManager:
        """The sandbox manager (made from the settings' ``[sandbox]`` table on first use)."""
        sb = self._sandboxes
        loop = None if sb is None else sb._pool.loop
        if sb is None or (self._own_sandboxes and (sb.closed or (loop is not None and loop.is_closed()))):
            from .sandbox.manager import SandboxManager
            from .sandbox.spec import from_settings

            spec, pool = from_settings(self.settings.sandbox)
            sb = self._sandboxes = SandboxManager(spec, pool, bus=self.bus)
            self._own_sandboxes = True
        return sb

    def sandboxes_if_started(self) -> SandboxManager | None:
        """The sandbox manager if some run has made it, else None (never starts one)."""
        return self._sandboxes

    @property
    def store(self) -> RunStore | None:
        """The run store that keeps every run of this runtime, or None."""
        return self._store

    def enable_store(self, store: RunStore | None = None, **options: Any) -> RunStore | None:
        """Keep every run of this runtime in ``store`` (default: a store at the default path, or with
        ``options``); idempotent. Returns None, and keeps nothing, when ``NBAGENT_STORE`` is ``off``."""
        from .store import store_disabled

        if store is None and store_disabled():
            return None
        if self._store is not None and (store is None or store is self._store) and not options:
            return self._store
        self.disable_store()
        from .store.redact import install_log_redaction
        from .store.runs import RunStore

        install_log_redaction()
        self._own_store = store is None
        self._store = store if store is not None else RunStore(**options)
        self._detach_store = self._store.attach(self.bus)
        return self._store

    def disable_store(self) -> None:
        """Stop keeping runs (the store is flushed, and closed if this runtime opened it). Blocks until the
        store has written what it holds: from a coroutine, use :meth:`aclose`."""
        release = self._release_store()
        if release is not None:
            release()

    def _release_store(self) -> Callable[[], None] | None:
        """Detach the store; what is left to do with it (close if this runtime opened it, else flush)."""
        store, detach = self._store, self._detach_store
        self._store = self._detach_store = None
        if detach is not None:
            detach()
        if store is None:
            return None
        if self._own_store:
            return store.close

        def flush() -> None:  # a store given to the runtime stays open for its owner
            store.flush()

        return flush

    def response_cache(self, mode: str = "read-write") -> Any | None:
        """The runtime's response cache in ``mode`` (one per mode), or None for ``off``."""
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
        if mode == "off":
            return None
        cache = self._caches.get(mode)
        if cache is None:
            from .cache import ResponseCache
            from .cache.tier_registry import BUILTIN_TIERS, make_tier

            section = self.settings.cache
            options = section.get("tier_options", {})
            tiers = [(n, make_tier(n, **options.get(n, {}))) for n in section.get("tiers", ())
                     if n not in BUILTIN_TIERS]
            cache = self._caches[mode] = ResponseCache(mode=mode, bus=self.bus, tiers=tiers)
        return cache

    def tool_cache(self, mode: str = "read-write") -> Any | None:
        """The tool-result cache that goes with :meth:`response_cache` in ``mode``, or None for ``off``."""
        cache = self.response_cache(mode)
        if cache is None:
            return None
        key = f"{mode}:tools"
        if key not in self._caches:
            self._caches[key] = cache.tool_cache()
        return self._caches[key]

    def caches(self) -> dict[str, Any]:
        """The caches made so far, by mode (``"<mode>:tools"`` for tool caches)."""
        return dict(self._caches)

    def part(self, name: str, factory: Callable[[Runtime], T]) -> T:
        """The part called ``name``, made by ``factory(self)`` on first use and closed with the runtime
        (its ``aclose()`` or ``close()``). Packages keep their per-session state here, e.g. MCP sessions."""
        try:
            return self._parts[name]  # type: ignore[no-any-return]
        except KeyError:
            if self.closed:
                raise RuntimeError(f"this runtime is closed; cannot start {name!r}") from None
            value = self._parts[name] = factory(self)
            return value

    def part_if_started(self, name: str) -> Any | None:
        return self._parts.get(name)

    def on_close(self, fn: Callable[[], Awaitable[None] | None]) -> None:
        """Call ``fn()`` (awaited when it returns an awaitable) when the runtime closes."""
        self._closers.append(fn)

    def new_run_name(self) -> str:
        """``run-1``, ``run-2``... unique on this runtime."""
        return f"run-{next(self._numbers)}"

    def run_finished(self, result: RunResult) -> None:
        """Called by the agent loop once per run, after its last event: the bus's result sinks (the run store)
        keep its messages, output and profile."""
        for sink in tuple(self.bus.result_sinks):
            try:
                sink(result)
            except Exception:  # noqa: BLE001 - a broken store must never break a run
                log.exception("keeping the result of run %s failed in %r", result.run_id, sink)

    # --- lifecycle ---------------------------------------------------------------------------------

    async def close_pools(self) -> None:
        """Close the HTTP pools of the running event loop (before a private loop ends, as ``run_sync`` does);
        the client opens new ones on the next request."""
        if self._client is not None:
            await self._client.aclose()

    async def aclose(self) -> None:
        """Close everything this runtime opened: parts, caches, sandboxes, the store's writer, HTTP pools."""
        if self.closed:
            return
        self.closed = True
        for name, part in reversed(list(self._parts.items())):
            await _close(part, f"part {name!r}")
        self._parts.clear()
        for cache in self._caches.values():
            await _close(cache, "cache")
        self._caches.clear()
        if self._sandboxes is not None and self._own_sandboxes:
            await _close(self._sandboxes, "sandbox manager")
        release = self._release_store()
        if release is not None:
            await asyncio.to_thread(release)  # the store's writer finishes off the loop
        for fn in reversed(self._closers):
            try:
                out = fn()
                if out is not None:
                    await out
            except Exception:  # noqa: BLE001 - one part that fails to close must not keep the others open
                log.exception("closing %r failed", fn)
        self._closers.clear()
        if self._client is not None and self._own_client:
            await self._client.aclose()
        self.bus.close()

    def close(self) -> None:
        """:meth:`aclose` from sync code (inside a running loop it is scheduled as a task)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self.aclose())
            return
        loop.create_task(self.aclose(), name="nbagent:runtime-close")

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        parts = ", ".join(self._parts) or "none"
        return f"<Runtime {state}; {len(self.records)} runs; store={self._store is not None}; parts: {parts}>"


async def _close(obj: Any, what: str) -> None:
    try:
        aclose = getattr(obj, "aclose", None)
        if aclose is not None:
            await aclose()
            return
        close = getattr(obj, "close", None)
        if close is not None:
            out = close()
            if asyncio.iscoroutine(out):
                await out
    except Exception:  # noqa: BLE001 - one part that fails to close must not keep the others open
        log.exception("closing the %s failed", what)


class _Default:
    """The holder of the one default runtime (the only process-wide state of the package)."""

    runtime: Runtime | None = None


def runtime() -> Runtime:
    """The default runtime: the one ``Agent()`` without ``runtime=`` uses (made on first use)."""
    rt = _Default.runtime
    if rt is None or rt.closed:
        rt = _Default.runtime = Runtime()
    return rt


def set_runtime(rt: Runtime | None) -> Runtime | None:
    """Make ``rt`` the default runtime (None: a fresh one on next use); returns the previous one, unclosed."""
    previous, _Default.runtime = _Default.runtime, rt
    return previous


class _CallableModule(types.ModuleType):
    """``nbagent.runtime()`` works whether ``nbagent.runtime`` names this module or its function."""

    def __call__(self) -> Runtime:
        return runtime()


sys.modules[__name__].__class__ = _CallableModule
