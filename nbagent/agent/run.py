"""One run of an agent: model call -> tool calls in parallel -> model call ... until an answer or a limit.

:meth:`Agent.run <nbagent.agent.Agent.run>` calls :func:`execute` (this module, and the LLM client, the event
classes and the record it needs, are imported on an agent's first run, not with :class:`~nbagent.agent.Agent`).
Whatever happens inside the run, it ends cleanly: a model that fails, a limit that is hit, a stuck loop or a
cancel all end it with ``status`` and ``stop_reason`` saying why, and every event of the run kept in
``result.events``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..control import before_model_call
from ..errors import UsageLimitExceeded
from ..events import LimitHit, RunFinished, RunStarted, StepStarted, ToolFinished, ToolStarted
from ..llm.types import ModelRequest, ModelResponse, TextCallback, ToolCall
from ..llm.usage import RunUsage, cost_of
from ..record import RunRecord
from .loop import RunResult
from .tools import LENIENT_JSON, RunContext, Tool

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Agent

__all__ = ["execute"]

_HAS_TIMEOUT_CM = sys.version_info >= (3, 11)


async def execute(agent: Agent, prompt: str, *, run_id: str, name: str, deps: Any, on_text: TextCallback | None,
               cancelled_by_handle: Callable[[], bool], profile: bool = False) -> RunResult:
    profiler = None
    if profile:
        from ..metrics.profile import RunProfiler

        profiler = RunProfiler(run_id).start()
    bus = agent.bus
    records = agent.runtime.records
    usage = RunUsage()
    messages: list[dict[str, Any]] = []
    if agent.system:
        messages.append({"role": "system", "content": agent.system})
    messages.append({"role": "user", "content": prompt})
    ctx = RunContext(run_id=run_id, bus=bus, deps=deps if deps is not None else agent.deps, runtime=agent.runtime)
    state = _RunState()
    status, reason, output, error = "error", "", "", None
    bus.emit(RunStarted(run_id=run_id, name=name, model=agent.model_name or "", prompt=prompt[:2000],
                        tags=agent.tags))
    record = records.get(run_id) or RunRecord(run_id)  # folded live by the runtime's tap
    try:
        if agent.limits.max_wall_time is not None and _HAS_TIMEOUT_CM:
            async with asyncio.timeout(agent.limits.max_wall_time):
                status, reason, output = await _loop(agent, messages, usage, ctx, state, on_text)
        else:
            status, reason, output = await _loop(agent, messages, usage, ctx, state, on_text)
    except UsageLimitExceeded as exc:
        status, reason = "limit", exc.limit
        bus.emit(LimitHit(run_id=run_id, limit=exc.limit, value=exc.value, maximum=exc.maximum))
    except TimeoutError:
        status, reason = "limit", "max_wall_time"
        wall = agent.limits.max_wall_time or 0.0
        bus.emit(LimitHit(run_id=run_id, limit="max_wall_time", value=usage.elapsed, maximum=wall))
    except asyncio.CancelledError:
        status, reason = "cancelled", "cancelled"
        if not cancelled_by_handle():
            await _finish(agent, ctx, run_id, name, status, reason, usage, state, None)
            if profiler is not None:
                profiler.stop()
            raise
    except Exception as exc:  # noqa: BLE001 - a failing run must end cleanly with its events
        status, reason, error = "error", f"{type(exc).__name__}: {exc}", exc
    timings = await _finish(agent, ctx, run_id, name, status, reason, usage, state, error)
    if status != "ok" and not output:
        output = state.last_text
    record.output, record.messages = output, messages
    result = RunResult(run_id=run_id, name=name, output=output, status=status, stop_reason=reason,
                       messages=messages, usage=usage, timings=timings, events=record.events, error=error,
                       record=record)
    if profiler is not None:
        result.profile = profiler.finish(result)
    agent.runtime.run_finished(result)
    return result

async def _finish(agent: Agent, ctx: RunContext, run_id: str, name: str, status: str, reason: str, usage: RunUsage,
                  state: _RunState, error: BaseException | None) -> dict[str, float]:
    if agent.policy is not None:
        agent.policy.forget_run(run_id)
    if ctx.holds_resources():  # (a shield is a task: none when the run's tools entered nothing)
        try:
            await asyncio.shield(ctx.aclose())
        except Exception:  # noqa: BLE001 - releasing resources must not hide the run's own outcome
            pass
    total = usage.elapsed
    timings = {"total": total, "model": state.model_time, "tools": state.tool_time, "startup": state.startup_time,
               "overhead": max(total - state.model_time - state.tool_time - state.startup_time, 0.0)}
    t = usage.tokens
    agent.bus.emit(RunFinished(run_id=run_id, status=status, stop_reason=reason, duration=total,
                              steps=usage.steps, input_tokens=t.input_tokens, output_tokens=t.output_tokens,
                              cached_tokens=t.cached_tokens, cost=usage.known_cost,
                              error=None if error is None else f"{type(error).__name__}: {error}"))
    for gate in tuple(agent.bus.run_end_gates):  # a run store whose writer is behind slows runs' ends
        await gate()
    return timings

async def _loop(agent: Agent, messages: list[dict[str, Any]], usage: RunUsage, ctx: RunContext, state: _RunState,
                on_text: TextCallback | None) -> tuple[str, str, str]:
    t_start = time.perf_counter()
    model = await agent._resolve_model()
    state.startup_time = time.perf_counter() - t_start  # e.g. starting the embedded model server
    model_name = agent.model_name or getattr(model, "model_name", "") or ""
    limits = agent.limits
    while True:
        usage.check(limits, before_request=True)
        usage.steps += 1
        ctx.step = usage.steps
        agent.bus.emit(StepStarted(run_id=ctx.run_id, step=usage.steps))
        choice = agent.tool_choice
        if agent.first_tool is not None and usage.steps == 1:  # small models rarely call tools unasked
            choice = {"type": "function", "function": {"name": agent.first_tool}}
        req = ModelRequest(model=model_name, messages=messages, tools=agent._tool_schemas, tool_choice=choice,
                           params=agent.params, stream=agent.stream)
        await before_model_call()  # a paused batch holds its runs here
        t0 = time.perf_counter()
        resp = await model.request(req, run_id=ctx.run_id, on_text=on_text)
        state.model_time += time.perf_counter() - t0
        if resp.cached:
            usage.add_cached()
        else:
            usage.add_response(resp.usage, cost_of(resp.usage, agent.settings.price_for(resp.model or model_name)))
        messages.append(resp.to_message())
        state.last_text = resp.text or state.last_text
        if not resp.tool_calls:
            usage.check(limits)
            return "ok", resp.finish_reason or "stop", resp.text
        stuck = state.repeats(resp.tool_calls, agent.settings.limits.stuck_repeats)
        if stuck is not None:
            return "stuck", f"tool call {stuck} repeated {agent.settings.limits.stuck_repeats} times", resp.text
        t1 = time.perf_counter()
        messages.extend(await _call_tools(agent, resp, ctx, usage))
        state.tool_time += time.perf_counter() - t1
        usage.check(limits)

async def _call_tools(agent: Agent, resp: ModelResponse, ctx: RunContext, usage: RunUsage) -> list[dict[str, Any]]:
    calls = resp.tool_calls
    usage.tool_calls += len(calls)
    if len(calls) == 1:
        return [await _call_tool(agent, calls[0], ctx)]
    sem = asyncio.Semaphore(max(agent.settings.limits.tool_concurrency, 1))

    async def bounded(call: ToolCall) -> dict[str, Any]:
        async with sem:
            return await _call_tool(agent, call, ctx)

    return list(await asyncio.gather(*(bounded(c) for c in calls)))

async def _call_tool(agent: Agent, call: ToolCall, ctx: RunContext) -> dict[str, Any]:
    bus = agent.bus
    bus.emit(ToolStarted(run_id=ctx.run_id, call_id=call.id, name=call.name, arguments=call.arguments[:2000]))
    t0 = time.perf_counter()
    ok, err = True, None
    tool = agent.tools.get(call.name)
    if tool is None:
        ok, err = False, f"unknown tool {call.name!r}; available tools: {', '.join(agent.tools) or 'none'}"
        text = f"Error: {err}"
    else:
        try:
            args = tool.parse_arguments(call.arguments)
        except ValueError as exc:
            ok, err = False, f"invalid arguments for {call.name}: {exc}"
            text = f"Error: {err}. Call the tool again with a valid JSON object."
        else:
            decision = None
            if agent.policy is not None:
                decision = await agent.policy.decide(tool.name, args, run_id=ctx.run_id, agent=agent.name,
                                                    facts=tool.facts or None, bus=bus)
            if decision is not None and not decision.allowed:
                ok, err = False, f"denied by policy ({decision.decided_by}): {decision.reason}"
                text = f"Error: the call to {call.name} was not run: {err}. Do not retry it unchanged."
            else:
                text, ok, err = await _run_tool(agent, tool, args, ctx, call)
    text, truncated, full_len = _truncate(text, agent.settings.limits.max_tool_output_chars)
    bus.emit(ToolFinished(run_id=ctx.run_id, call_id=call.id, name=call.name,
                          duration=time.perf_counter() - t0, ok=ok, error=err, output_chars=full_len,
                          truncated=truncated, output_preview=text[:200]))
    return {"role": "tool", "tool_call_id": call.id, "content": text}

async def _run_tool(agent: Agent, tool: Tool, args: dict[str, Any], ctx: RunContext,
                    call: ToolCall) -> tuple[str, bool, str | None]:
    """Call the tool (through the tool-result cache when it is declared deterministic)."""
    ok, err = True, None
    try:
        cached = None
        if tool.cache and agent.tool_cache is not None:
            cached = await agent.tool_cache.get(tool.name, args, run_id=ctx.run_id, bus=agent.bus)
        if cached is not None:
            text = cached
        else:
            text = _to_text(await tool.call(ctx, args))
            if tool.cache and agent.tool_cache is not None:
                await agent.tool_cache.put(tool.name, args, text, run_id=ctx.run_id, bus=agent.bus)
    except asyncio.CancelledError:
        raise
    except TimeoutError:
        limit = tool.timeout if tool.timeout is not None else agent.settings.limits.tool_timeout
        ok, err = False, f"tool {call.name} timed out after {limit} s"
        text = f"Error: {err}"
    except Exception as exc:  # noqa: BLE001 - a failing tool becomes a message for the model
        ok, err = False, f"{type(exc).__name__}: {exc}"
        text = f"Error: tool {call.name} failed: {err}"
    return text, ok, err


class _RunState:
    __slots__ = ("model_time", "tool_time", "startup_time", "last_text", "seen")

    def __init__(self) -> None:
        self.startup_time = 0.0
        self.model_time = 0.0
        self.tool_time = 0.0
        self.last_text = ""
        self.seen: dict[tuple[str, str], int] = {}

    def repeats(self, calls: list[ToolCall], limit: int) -> str | None:
        """Count identical calls (the same arguments in any key order or spacing); the name of the first call
        seen ``limit`` times, if any."""
        if limit <= 0:
            return None
        for call in calls:
            norm = _normal_arguments(call.arguments)
            key = (call.name, norm)
            n = self.seen.get(key, 0) + 1
            self.seen[key] = n
            if limit > 0 and n >= limit:
                return f"{call.name}({norm[:200]})"
        return None


def _normal_json(raw: str) -> str:
    try:
        return json.dumps(LENIENT_JSON.decode(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return raw


try:
    import orjson

    def _normal_arguments(raw: str) -> str:
        """One spelling of a call's JSON arguments: compact, keys sorted (orjson: a tenth of json's cost)."""
        try:
            return orjson.dumps(orjson.loads(raw or "{}"), option=orjson.OPT_SORT_KEYS).decode()
        except (orjson.JSONDecodeError, TypeError):  # orjson refuses what json may take (raw newlines, NaN)
            return _normal_json(raw or "{}")
except ImportError:  # pragma: no cover - orjson is optional (nbagent[fast])
    def _normal_arguments(raw: str) -> str:
        """One spelling of a call's JSON arguments: compact, keys sorted."""
        return _normal_json(raw or "{}")


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
