"""The agent loop: model call -> tool calls in parallel -> model call ... until an answer or a limit.

``await agent.run(prompt)`` returns a :class:`RunResult` whatever happens inside the run: a model that
fails, a limit that is hit, a stuck loop or a cancel all end the run cleanly with ``status`` and
``stop_reason`` saying why, and every event of the run kept in ``result.events``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..config import Endpoint, Settings
from ..control import before_model_call
from ..errors import EndpointNotConfigured, NbAgentError, UsageLimitExceeded
from ..events import (
    Event,
    EventBus,
    LimitHit,
    RunFinished,
    RunStarted,
    StepStarted,
    ToolFinished,
    ToolStarted,
)
from ..llm.client import EndpointModel, LLMClient
from ..llm.types import Model, ModelRequest, ModelResponse, TextCallback, ToolCall
from ..llm.usage import RunUsage, UsageLimits, cost_of
from ..record import RunRecord, format_cost
from ..runtime import Runtime
from ..runtime import runtime as default_runtime
from .tools import RunContext, Tool, tools_by_name

__all__ = ["Agent", "ModelWrapper", "RunHandle", "RunResult", "ToolResultCache"]

_HAS_TIMEOUT_CM = sys.version_info >= (3, 11)


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
        """Stop the run: the in-flight HTTP request and running tools are cancelled at once."""
        self.cancel_requested = True
        self.task.cancel()

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
            self._model_obj = EndpointModel(self.client, self.endpoint())
        if self.cache is not None and self._wrapped is None:
            self._wrapped = self.cache.wrap(self._model_obj)
        return self._wrapped or self._model_obj

    async def _resolve_model(self) -> Model:
        """``model()``, falling back to the embedded local model when no endpoint is configured anywhere."""
        try:
            return self.model()
        except EndpointNotConfigured:
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
        run_id = _run_id()
        name = name or self.runtime.new_run_name()
        handle: RunHandle | None = None

        def cancelled_by_handle() -> bool:
            return handle is not None and handle.cancel_requested

        task = asyncio.get_running_loop().create_task(
            self._run(prompt, run_id=run_id, name=name, deps=deps, on_text=on_text,
                      cancelled_by_handle=cancelled_by_handle, profile=profile), name=f"nbagent:{name}")
        handle = RunHandle(task, run_id, name)
        return handle

    async def run(self, prompt: str, *, name: str | None = None, deps: Any = None,
                  on_text: TextCallback | None = None, profile: bool = False) -> RunResult:
        """Run to the end and return the result (errors, limits and stuck loops included, not raised).

        ``profile=True`` samples the run with pyinstrument and measures its memory; the profile and a
        breakdown of the wall time are in ``result.profile``.
        """
        return await self._run(prompt, run_id=_run_id(), name=name or self.runtime.new_run_name(),
                               deps=deps, on_text=on_text, cancelled_by_handle=lambda: False, profile=profile)

    def run_sync(self, prompt: str, **kwargs: Any) -> RunResult:
        """Blocking ``run``: for plain scripts, and for notebooks, where it waits inside the running loop.

        Inside a running loop (a Jupyter kernel) the loop is re-entered with ``nest-asyncio2`` (part of the
        ``notebook`` extra), so other tasks on it keep running while this call waits; ``await agent.run(...)``
        needs no patch and is preferable where an ``await`` is possible.
        """
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

    async def _run(self, prompt: str, *, run_id: str, name: str, deps: Any, on_text: TextCallback | None,
                   cancelled_by_handle: Callable[[], bool], profile: bool = False) -> RunResult:
        profiler = None
        if profile:
            from ..metrics.profile import RunProfiler

            profiler = RunProfiler(run_id).start()
        bus = self.bus
        records = self.runtime.records
        usage = RunUsage()
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": prompt})
        ctx = RunContext(run_id=run_id, bus=bus, deps=deps if deps is not None else self.deps, runtime=self.runtime)
        state = _RunState()
        status, reason, output, error = "error", "", "", None
        bus.emit(RunStarted(run_id=run_id, name=name, model=self.model_name or "", prompt=prompt[:2000],
                            tags=self.tags))
        record = records.get(run_id) or RunRecord(run_id)  # folded live by the runtime's tap
        try:
            if self.limits.max_wall_time is not None and _HAS_TIMEOUT_CM:
                async with asyncio.timeout(self.limits.max_wall_time):
                    status, reason, output = await self._loop(messages, usage, ctx, state, on_text)
            else:
                status, reason, output = await self._loop(messages, usage, ctx, state, on_text)
        except UsageLimitExceeded as exc:
            status, reason = "limit", exc.limit
            bus.emit(LimitHit(run_id=run_id, limit=exc.limit, value=exc.value, maximum=exc.maximum))
        except TimeoutError:
            status, reason = "limit", "max_wall_time"
            wall = self.limits.max_wall_time or 0.0
            bus.emit(LimitHit(run_id=run_id, limit="max_wall_time", value=usage.elapsed, maximum=wall))
        except asyncio.CancelledError:
            status, reason = "cancelled", "cancelled"
            if not cancelled_by_handle():
                await self._finish(ctx, run_id, name, status, reason, usage, state, None)
                if profiler is not None:
                    profiler.stop()
                raise
        except Exception as exc:  # noqa: BLE001 - a failing run must end cleanly with its events
            status, reason, error = "error", f"{type(exc).__name__}: {exc}", exc
        timings = await self._finish(ctx, run_id, name, status, reason, usage, state, error)
        if status != "ok" and not output:
            output = state.last_text
        record.output, record.messages = output, messages
        result = RunResult(run_id=run_id, name=name, output=output, status=status, stop_reason=reason,
                           messages=messages, usage=usage, timings=timings, events=record.events, error=error,
                           record=record)
        if profiler is not None:
            result.profile = profiler.finish(result)
        self.runtime.run_finished(result)
        return result

    async def _finish(self, ctx: RunContext, run_id: str, name: str, status: str, reason: str, usage: RunUsage,
                      state: _RunState, error: BaseException | None) -> dict[str, float]:
        if self.policy is not None:
            self.policy.forget_run(run_id)
        try:
            await asyncio.shield(ctx.aclose())
        except Exception:  # noqa: BLE001 - releasing resources must not hide the run's own outcome
            pass
        total = usage.elapsed
        timings = {"total": total, "model": state.model_time, "tools": state.tool_time, "startup": state.startup_time,
                   "overhead": max(total - state.model_time - state.tool_time - state.startup_time, 0.0)}
        t = usage.tokens
        self.bus.emit(RunFinished(run_id=run_id, status=status, stop_reason=reason, duration=total,
                                  steps=usage.steps, input_tokens=t.input_tokens, output_tokens=t.output_tokens,
                                  cached_tokens=t.cached_tokens, cost=usage.known_cost,
                                  error=None if error is None else f"{type(error).__name__}: {error}"))
        for gate in tuple(self.bus.run_end_gates):  # a run store whose writer is behind slows runs' ends
            await gate()
        return timings

    async def _loop(self, messages: list[dict[str, Any]], usage: RunUsage, ctx: RunContext, state: _RunState,
                    on_text: TextCallback | None) -> tuple[str, str, str]:
        t_start = time.perf_counter()
        model = await self._resolve_model()
        state.startup_time = time.perf_counter() - t_start  # e.g. starting the embedded model server
        model_name = self.model_name or getattr(model, "model_name", "") or ""
        limits = self.limits
        while True:
            usage.check(limits, before_request=True)
            usage.steps += 1
            ctx.step = usage.steps
            self.bus.emit(StepStarted(run_id=ctx.run_id, step=usage.steps))
            choice = self.tool_choice
            if self.first_tool is not None and usage.steps == 1:  # small models rarely call tools unasked
                choice = {"type": "function", "function": {"name": self.first_tool}}
            req = ModelRequest(model=model_name, messages=messages, tools=self._tool_schemas, tool_choice=choice,
                               params=self.params, stream=self.stream)
            await before_model_call()  # a paused batch holds its runs here
            t0 = time.perf_counter()
            resp = await model.request(req, run_id=ctx.run_id, on_text=on_text)
            state.model_time += time.perf_counter() - t0
            if resp.cached:
                usage.add_cached()
            else:
                usage.add_response(resp.usage, cost_of(resp.usage, self.settings.price_for(resp.model or model_name)))
            messages.append(resp.to_message())
            state.last_text = resp.text or state.last_text
            if not resp.tool_calls:
                usage.check(limits)
                return "ok", resp.finish_reason or "stop", resp.text
            stuck = state.repeats(resp.tool_calls, self.settings.limits.stuck_repeats)
            if stuck is not None:
                return "stuck", f"tool call {stuck} repeated {self.settings.limits.stuck_repeats} times", resp.text
            t1 = time.perf_counter()
            messages.extend(await self._call_tools(resp, ctx, usage))
            state.tool_time += time.perf_counter() - t1
            usage.check(limits)

    async def _call_tools(self, resp: ModelResponse, ctx: RunContext, usage: RunUsage) -> list[dict[str, Any]]:
        calls = resp.tool_calls
        usage.tool_calls += len(calls)
        if len(calls) == 1:
            return [await self._call_tool(calls[0], ctx)]
        sem = asyncio.Semaphore(max(self.settings.limits.tool_concurrency, 1))

        async def bounded(call: ToolCall) -> dict[str, Any]:
            async with sem:
                return await self._call_tool(call, ctx)

        return list(await asyncio.gather(*(bounded(c) for c in calls)))

    async def _call_tool(self, call: ToolCall, ctx: RunContext) -> dict[str, Any]:
        bus = self.bus
        bus.emit(ToolStarted(run_id=ctx.run_id, call_id=call.id, name=call.name, arguments=call.arguments[:2000]))
        t0 = time.perf_counter()
        ok, err = True, None
        tool = self.tools.get(call.name)
        if tool is None:
            ok, err = False, f"unknown tool {call.name!r}; available tools: {', '.join(self.tools) or 'none'}"
            text = f"Error: {err}"
        else:
            try:
                args = tool.parse_arguments(call.arguments)
            except ValueError as exc:
                ok, err = False, f"invalid arguments for {call.name}: {exc}"
                text = f"Error: {err}. Call the tool again with a valid JSON object."
            else:
                decision = None
                if self.policy is not None:
                    decision = await self.policy.decide(tool.name, args, run_id=ctx.run_id, agent=self.name,
                                                        facts=tool.facts or None, bus=bus)
                if decision is not None and not decision.allowed:
                    ok, err = False, f"denied by policy ({decision.decided_by}): {decision.reason}"
                    text = f"Error: the call to {call.name} was not run: {err}. Do not retry it unchanged."
                else:
                    text, ok, err = await self._run_tool(tool, args, ctx, call)
        text, truncated, full_len = _truncate(text, self.settings.limits.max_tool_output_chars)
        bus.emit(ToolFinished(run_id=ctx.run_id, call_id=call.id, name=call.name,
                              duration=time.perf_counter() - t0, ok=ok, error=err, output_chars=full_len,
                              truncated=truncated, output_preview=text[:200]))
        return {"role": "tool", "tool_call_id": call.id, "content": text}

    async def _run_tool(self, tool: Tool, args: dict[str, Any], ctx: RunContext,
                        call: ToolCall) -> tuple[str, bool, str | None]:
        """Call the tool (through the tool-result cache when it is declared deterministic)."""
        ok, err = True, None
        try:
            cached = None
            if tool.cache and self.tool_cache is not None:
                cached = await self.tool_cache.get(tool.name, args, run_id=ctx.run_id, bus=self.bus)
            if cached is not None:
                text = cached
            else:
                text = _to_text(await tool.call(ctx, args))
                if tool.cache and self.tool_cache is not None:
                    await self.tool_cache.put(tool.name, args, text, run_id=ctx.run_id, bus=self.bus)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            limit = tool.timeout if tool.timeout is not None else self.settings.limits.tool_timeout
            ok, err = False, f"tool {call.name} timed out after {limit} s"
            text = f"Error: {err}"
        except Exception as exc:  # noqa: BLE001 - a failing tool becomes a message for the model
            ok, err = False, f"{type(exc).__name__}: {exc}"
            text = f"Error: tool {call.name} failed: {err}"
        return text, ok, err


class ToolResultCache(Protocol):
    """Where results of tools declared ``@tool(cache=True)`` are kept (see :mod:`nbagent.cache`)."""

    async def get(self, tool: str, arguments: dict[str, Any], *, run_id: str | None = None,
                  bus: EventBus | None = None) -> str | None: ...

    async def put(self, tool: str, arguments: dict[str, Any], output: str, *, run_id: str | None = None,
                  bus: EventBus | None = None) -> None: ...


class ModelWrapper(Protocol):
    """Anything that wraps a model in another (the response cache): ``wrap(model) -> model``."""

    def wrap(self, model: Model) -> Model: ...


class _RunState:
    __slots__ = ("model_time", "tool_time", "startup_time", "last_text", "seen")

    def __init__(self) -> None:
        self.startup_time = 0.0
        self.model_time = 0.0
        self.tool_time = 0.0
        self.last_text = ""
        self.seen: dict[tuple[str, str], int] = {}

    def repeats(self, calls: list[ToolCall], limit: int) -> str | None:
        """Count identical calls; the name of the first call seen ``limit`` times, if any."""
        for call in calls:
            try:
                norm = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True)
            except ValueError:
                norm = call.arguments
            key = (call.name, norm)
            n = self.seen.get(key, 0) + 1
            self.seen[key] = n
            if limit > 0 and n >= limit:
                return f"{call.name}({norm[:200]})"
        return None


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        return json.dumps(value, default=str, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _truncate(text: str, limit: int) -> tuple[str, bool, int]:
    """Keep the head and tail of an over-long tool output, saying how much was cut."""
    n = len(text)
    if limit <= 0 or n <= limit:
        return text, False, n
    head = limit * 3 // 4
    tail = limit - head
    cut = n - head - tail
    return f"{text[:head]}\n...[{cut:,} characters truncated of {n:,}]...\n{text[n - tail:]}", True, n
