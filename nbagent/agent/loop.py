"""The agent: a model, a system prompt and tools, run many times, concurrently.

``await agent.run(prompt)`` returns a :class:`RunResult` whatever happens inside the run: a model that
fails, a limit that is hit, a stuck loop or a cancel all end the run cleanly with ``status`` and
``stop_reason`` saying why, and every event of the run kept in ``result.events``.

This module is what ``nbagent.Agent`` imports, and it stays light: the run itself (:mod:`nbagent.agent.run`)
and what it needs (asyncio, the LLM client, the events, the record, the runtime) are imported when an agent is
built or first run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .tools import Tool, tools_by_name

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

    from ..config import Endpoint, Settings
    from ..events import Event, EventBus
    from ..llm.client import LLMClient
    from ..llm.types import Model, TextCallback
    from ..llm.usage import RunUsage, UsageLimits
    from ..record import RunRecord
    from ..runtime import Runtime

__all__ = ["Agent", "ModelWrapper", "RunHandle", "RunResult", "ToolResultCache"]

def _never() -> bool:
    return False



@dataclass
class RunResult:
    """Everything one run produced.

    ``status`` is ``ok`` (the model answered), ``limit`` (a usage limit stopped it), ``stuck`` (the
    model repeated a tool call), ``error`` (``error`` holds the exception) or ``cancelled``.
    """

    run_id: str
    name: str
    output: str
    status: str
    stop_reason: str
    messages: list[dict[str, Any]]
    usage: RunUsage
    timings: dict[str, float]
    events: list[Event] = field(default_factory=list, repr=False)
    error: BaseException | None = None
    profile: Any = field(default=None, repr=False)  # a metrics.profile.RunProfile when run with profile=True
    record: RunRecord | None = field(default=None, repr=False)
    """The run's :class:`~nbagent.record.RunRecord`: its spans, tokens, cost and status, folded from its events."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def raise_for_status(self) -> RunResult:
        """Raise the run's error (or a :class:`NbAgentError` for limit/stuck/cancel); return self when ok."""
        if self.error is not None:
            raise self.error
        if not self.ok:
            from ..errors import NbAgentError

            raise NbAgentError(f"run {self.name} ended with status {self.status}: {self.stop_reason}")
        return self

    def metrics(self) -> Any:
        """A :class:`~nbagent.metrics.MetricsRegistry` built from this run's events."""
        from ..metrics import MetricsRegistry

        reg = MetricsRegistry()
        for ev in self.events:
            reg.observe(ev)
        return reg

    def summary(self) -> str:
        """One line: status, counts, tokens, cost, and where the wall time went, in words that add up to it."""
        from ..record import format_cost

        u = self.usage
        t = self.timings
        if self.record is not None and self.record.started is not None:
            from ..timeline import describe_breakdown

            where = describe_breakdown(self.record.breakdown())
        else:  # a result without a record (built by hand): the loop's own phase timings
            where = (f"model {t.get('model', 0.0):.2f} s, tools {t.get('tools', 0.0):.2f} s, "
                     + (f"model start-up {t['startup']:.2f} s, " if t.get("startup", 0.0) >= 0.01 else "")
                     + f"overhead {t.get('overhead', 0.0) * 1000:.1f} ms")
        return (
            f"{self.name}: {self.status} ({self.stop_reason}) in {t.get('total', 0.0):.2f} s; "
            f"{u.steps} steps, {u.requests} requests, {u.tool_calls} tool calls; tokens in "
            f"{u.tokens.input_tokens:,} / out {u.tokens.output_tokens:,} / cached {u.tokens.cached_tokens:,}; "
            f"cost {format_cost(u.known_cost)}; {where}"
        )



def _run_id() -> str:
    """A new run id: 12 random hex digits (``uuid`` is not imported for it: it costs a module import)."""
    return os.urandom(6).hex()


class RunHandle:
    """A run in the background. ``await handle`` gives its :class:`RunResult`; ``cancel()`` stops it."""

    def __init__(self, task: asyncio.Task[RunResult], run_id: str, name: str) -> None:
        self.task = task
        self.run_id = run_id
        self.name = name
        self.cancel_requested = False

    def cancel(self) -> None:
        """Stop the run: the in-flight HTTP request and running tools are cancelled at once (from any thread:
        the cancel is handed to the run's loop)."""
        from ..control import call_in_loop

        self.cancel_requested = True
        call_in_loop(self.task.get_loop(), self.task.cancel)

    def done(self) -> bool:
        return self.task.done()

    async def result(self) -> RunResult:
        return await self.task

    def __await__(self) -> Any:
        return self.task.__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<RunHandle {self.name} {state}>"


class Agent:
    """A model, a system prompt and tools; runs many times, concurrently.

    ``model`` is a model name (resolved against settings, env and ``base_url``/``api_key``) or any object
    with the :class:`~nbagent.llm.types.Model` ``request`` method (a cached or test model).
    ``tool_choice`` is sent with every request; ``first_tool`` names a tool the first model call must
    call (later calls choose freely), which keeps small local models from answering without their tools.
    ``policy`` (a :class:`~nbagent.policy.Policy`) decides before each tool call; by default the settings'
    ``[policy]`` table, when there is one; ``policy=False`` for none.
    """

    def __init__(
        self,
        model: str | Model | None = None,
        tools: Iterable[Tool | Callable[..., Any]] = (),
        *,
        system: str | None = None,
        max_steps: int | None = None,
        runtime: Runtime | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        limits: UsageLimits | None = None,
        stream: bool | None = None,
        params: dict[str, Any] | None = None,
        deps: Any = None,
        name: str | None = None,
        tool_cache: ToolResultCache | None = None,
        cache: ModelWrapper | None = None,
        tool_choice: Any = None,
        first_tool: str | None = None,
        policy: Any = None,
        tags: Iterable[str] = (),
        settings: Settings | None = None,
        client: LLMClient | None = None,
        bus: EventBus | None = None,
    ) -> None:
        from ..llm.usage import UsageLimits
        from ..runtime import Runtime
        from ..runtime import runtime as default_runtime

        if settings is not None or client is not None or bus is not None:
            warnings.warn("Agent(settings=, client=, bus=) is deprecated and goes in the next release: pass "
                          "runtime=nbagent.Runtime(settings=..., bus=..., client=...) instead",
                          DeprecationWarning, stacklevel=2)
            if runtime is None:
                runtime = Runtime(settings or (client.settings if client else None),
                                  bus=bus or (client.bus if client else None), client=client)
        self.runtime: Runtime = runtime if runtime is not None else default_runtime()
        self.settings = self.runtime.settings
        self.bus = self.runtime.bus
        self._model_obj: Model | None = None if model is None or isinstance(model, str) else model
        self.model_name = model if isinstance(model, str) else getattr(model, "model_name", None) or None
        self._base_url = base_url
        self._api_key = api_key
        self._endpoint: Endpoint | None = None
        self._wrapped: Model | None = None
        self.tools = tools_by_name(tools)
        self._tool_schemas = [t.schema for t in self.tools.values()] or None
        self.system = system
        self.limits = limits or UsageLimits.from_settings(self.settings.limits)
        if max_steps is not None:
            self.limits.max_steps = max_steps
        self.stream = self.settings.stream if stream is None else stream
        self.params = dict(params or {})
        self.deps = deps
        self.name = name or "agent"
        self.tags = tuple(tags)
        self.tool_cache = tool_cache
        self.tool_choice = tool_choice
        if first_tool is not None and first_tool not in self.tools:
            raise ValueError(f"first_tool {first_tool!r} is not one of the agent's tools: {', '.join(self.tools)}")
        self.first_tool = first_tool
        # a nbagent.policy.Policy: allow / deny / ask before each tool call (None: the runtime's, False: none)
        self.policy = self.runtime.policy if policy is None else (policy or None)
        self.cache = cache

    # --- model resolution -----------------------------------------------------------------------

    @property
    def client(self) -> LLMClient:
        """The runtime's pooled client."""
        return self.runtime.client

    def spec(self) -> dict[str, Any]:
        """Every setting of this agent as keyword arguments (``Agent(**agent.spec())`` rebuilds it, e.g. in a
        worker process; the runtime is left out: the rebuilt agent takes the worker's)."""
        model: Any = self._model_obj if self._model_obj is not None else self.model_name
        return {"model": model, "tools": list(self.tools.values()), "system": self.system,
                "base_url": self._base_url, "api_key": self._api_key, "limits": self.limits,
                "stream": self.stream, "params": dict(self.params), "deps": self.deps, "name": self.name,
                "tool_cache": self.tool_cache, "cache": self.cache, "tool_choice": self.tool_choice,
                "first_tool": self.first_tool, "policy": self.policy if self.policy is not None else False,
                "tags": self.tags}

    def endpoint(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = self.settings.endpoint(self.model_name, self._base_url, self._api_key)
        return self._endpoint

    def model(self) -> Model:
        """The model seam this agent calls: the endpoint, wrapped by the response cache when there is one."""
        if self._model_obj is None:
            from ..llm.client import EndpointModel

            self._model_obj = EndpointModel(self.client, self.endpoint())
        if self.cache is not None and self._wrapped is None:
            self._wrapped = self.cache.wrap(self._model_obj)
        return self._wrapped or self._model_obj

    async def _resolve_model(self) -> Model:
        """``model()``, falling back to the embedded local model when no endpoint is configured anywhere."""
        from ..errors import EndpointNotConfigured

        try:
            return self.model()
        except EndpointNotConfigured:
            import asyncio

            from .. import local_model

            if not (self.settings.embedded and local_model.available()):
                raise
            server = await asyncio.to_thread(local_model.ensure_server, self.runtime)
            self._endpoint = server.endpoint()
            self.model_name = server.alias
            # a small local model can ramble for minutes on a busy CPU: cap each answer unless the agent says
            self.params.setdefault("max_tokens", local_model.default_max_tokens())
            return self.model()

    # --- running --------------------------------------------------------------------------------

    def start(self, prompt: str, *, name: str | None = None, deps: Any = None,
              on_text: TextCallback | None = None, profile: bool = False) -> RunHandle:
        """Start a run as a task on the running loop and return at once."""
        import asyncio

        from .run import execute

        run_id = _run_id()
        name = name or self.runtime.new_run_name()
        handle: RunHandle | None = None

        def cancelled_by_handle() -> bool:
            return handle is not None and handle.cancel_requested

        task = asyncio.get_running_loop().create_task(
            execute(self, prompt, run_id=run_id, name=name, deps=deps, on_text=on_text,
                    cancelled_by_handle=cancelled_by_handle, profile=profile), name=f"nbagent:{name}")
        handle = RunHandle(task, run_id, name)
        return handle

    async def run(self, prompt: str, *, name: str | None = None, deps: Any = None,
                  on_text: TextCallback | None = None, profile: bool = False) -> RunResult:
        """Run to the end and return the result (errors, limits and stuck loops included, not raised).

        ``profile=True`` samples the run with pyinstrument and measures its memory; the profile and a
        breakdown of the wall time are in ``result.profile``.
        """
        from .run import execute  # the run's module, with the client and events, comes on the first run

        return await execute(self, prompt, run_id=_run_id(), name=name or self.runtime.new_run_name(),
                                deps=deps, on_text=on_text, cancelled_by_handle=_never, profile=profile)

    def run_sync(self, prompt: str, **kwargs: Any) -> RunResult:
        """Blocking ``run``: for plain scripts, and for notebooks, where it waits inside the running loop.

        Inside a running loop (a Jupyter kernel) the loop is re-entered with ``nest-asyncio2`` (part of the
        ``notebook`` extra), so other tasks on it keep running while this call waits; ``await agent.run(...)``
        needs no patch and is preferable where an ``await`` is possible.
        """
        import asyncio

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            from ..reenter import wait_in_running_loop

            return wait_in_running_loop(loop, self.run(prompt, **kwargs), what="run_sync()",
                                        instead="`await agent.run(...)`, or `agent.start(...)`")

        async def main() -> RunResult:
            try:
                return await self.run(prompt, **kwargs)
            finally:
                await self.runtime.close_pools()  # the pools belong to this loop, which ends here

        return asyncio.run(main())


class ToolResultCache(Protocol):
    """Where results of tools declared ``@tool(cache=True)`` are kept (see :mod:`nbagent.cache`)."""

    async def get(self, tool: str, arguments: dict[str, Any], *, run_id: str | None = None,
                  bus: EventBus | None = None) -> str | None: ...

    async def put(self, tool: str, arguments: dict[str, Any], output: str, *, run_id: str | None = None,
                  bus: EventBus | None = None) -> None: ...


class ModelWrapper(Protocol):
    """Anything that wraps a model in another (the response cache): ``wrap(model) -> model``."""

    def wrap(self, model: Model) -> Model: ...
