"""The agent loop end to end against the simulated server over real HTTP."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
from support import Sleeps, sim_settings

from nbagent import Agent, RunContext, tool
from nbagent.errors import ToolError
from nbagent.events import EventBus, LimitHit, ToolFinished
from nbagent.llm import LLMClient, UsageLimits
from nbagent.runtime import Runtime
from nbagent.testing import Fault, Reply, SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def make_agent(sim: SimServer, tools=(lookup,), sleeps: Sleeps | None = None, **kw) -> Agent:
    settings = kw.pop("settings", None) or sim_settings(sim)
    client = LLMClient(settings, bus=EventBus(), sleep=sleeps or Sleeps())
    return Agent("sim", list(tools), runtime=Runtime(settings, client=client), **kw)


async def test_run_prompt_tool_tool_answer(sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=2)
    agent = make_agent(sim, system="Be brief.")
    result = await agent.run("what is x?")
    assert result.ok and result.status == "ok" and result.stop_reason == "stop"
    assert result.output == "Answer to: what is x? (tool said: value-of-x)"
    assert [m["role"] for m in result.messages] == ["system", "user", "assistant", "tool", "assistant", "tool",
                                                   "assistant"]
    assert result.usage.steps == 3 and result.usage.requests == 3 and result.usage.tool_calls == 2
    assert result.usage.tokens.input_tokens > 0
    assert set(result.timings) == {"total", "model", "tools", "startup", "overhead"}
    kinds = [e.kind for e in result.events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert kinds.count("tool_finished") == 2 and kinds.count("llm_response") == 3
    m = result.metrics()
    assert m.counter("llm.calls").value == 3 and m.histogram("tool.duration").count == 2
    await agent.client.aclose()


async def test_assistant_tool_call_messages_carry_empty_content(sim: SimServer) -> None:
    agent = make_agent(sim)
    result = await agent.run("q")
    sent = sim.history[-1]["messages"]
    assistant = [m for m in sent if m["role"] == "assistant"]
    assert assistant and all(m["content"] == "" for m in assistant)
    assert result.ok
    await agent.client.aclose()


class Concurrency:
    """An async tool ``slow(n)`` that records how many of its calls ran at once."""

    def __init__(self, seconds: float) -> None:
        self.running = self.peak = 0

        @tool
        async def slow(n: int) -> str:
            """Wait a little, then echo n."""
            self.running += 1
            self.peak = max(self.peak, self.running)
            await asyncio.sleep(seconds)
            self.running -= 1
            return str(n)

        self.tool = slow


async def test_tool_calls_of_one_step_run_concurrently(sim: SimServer) -> None:
    probe = Concurrency(0.05)
    sim.script(Reply(tool_calls=[("slow", {"n": i}) for i in range(4)]), Reply(text="done"))
    agent = make_agent(sim, tools=[probe.tool])
    result = await agent.run("go")
    assert result.output == "done" and probe.peak == 4
    # results come back in call order, each paired with its call id
    tool_msgs = [m for m in result.messages if m["role"] == "tool"]
    assert [m["content"] for m in tool_msgs] == ["0", "1", "2", "3"]
    await agent.client.aclose()


async def test_tool_concurrency_cap(sim: SimServer) -> None:
    probe = Concurrency(0.02)
    sim.script(Reply(tool_calls=[("slow", {"n": i}) for i in range(6)]), Reply(text="done"))
    agent = make_agent(sim, tools=[probe.tool], settings=sim_settings(sim, limits__tool_concurrency=2))
    assert (await agent.run("go")).ok and probe.peak == 2
    await agent.client.aclose()


async def test_failing_tool_becomes_a_message_not_a_crash(sim: SimServer) -> None:
    @tool
    def broken(key: str) -> str:
        raise RuntimeError("disk on fire")

    @tool
    def polite(key: str) -> str:
        raise ToolError("no such key")

    sim.script(Reply(tool_calls=[("broken", {"key": "a"}), ("polite", {"key": "b"}), ("nope", {})]),
               Reply(text="recovered"))
    agent = make_agent(sim, tools=[broken, polite])
    result = await agent.run("go")
    assert result.ok and result.output == "recovered"
    contents = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert "RuntimeError: disk on fire" in contents[0]
    assert "no such key" in contents[1]
    assert "unknown tool 'nope'" in contents[2] and "broken, polite" in contents[2]
    finished = [e for e in result.events if isinstance(e, ToolFinished)]
    assert [f.ok for f in finished] == [False, False, False]
    await agent.client.aclose()


async def test_inline_sync_tools_run_on_the_loop_thread_and_fail_cleanly(sim: SimServer) -> None:
    import threading

    seen: list[int] = []

    @tool(inline=True)
    def here(key: str) -> str:
        """Where am I called?"""
        seen.append(threading.get_ident())
        return f"inline-{key}"

    @tool(inline=True)
    def fails(key: str) -> str:
        raise RuntimeError("inline boom")

    sim.script(Reply(tool_calls=[("here", {"key": "a"}), ("fails", {"key": "b"})]), Reply(text="done"))
    agent = make_agent(sim, tools=[here, fails])
    result = await agent.run("go")
    assert result.ok and result.output == "done"
    assert seen == [threading.get_ident()]  # the loop's own thread: no hand-over to a tool thread
    assert agent.runtime.part_if_started("tool_threads") is None  # no thread pool was ever made
    contents = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert contents[0] == "inline-a" and "RuntimeError: inline boom" in contents[1]
    finished = [e for e in result.events if isinstance(e, ToolFinished)]
    assert [f.ok for f in finished] == [True, False]
    with pytest.raises(ValueError, match="inline=True is for sync functions"):
        @tool(inline=True)
        async def nope() -> str:
            return ""
    with pytest.raises(ValueError, match="a timeout cannot interrupt an inline tool"):
        tool(name="quick", inline=True, timeout=1.0)(lambda: "")
    await agent.client.aclose()


async def test_malformed_tool_arguments_are_reported_to_the_model(sim: SimServer) -> None:
    sim.inject(Fault("invalid_json_args"))
    agent = make_agent(sim)
    result = await agent.run("go")
    assert result.ok
    first_tool = next(m for m in result.messages if m["role"] == "tool")
    assert "not valid JSON" in first_tool["content"]
    await agent.client.aclose()


async def test_huge_tool_output_is_truncated(sim: SimServer) -> None:
    @tool
    def big(key: str) -> str:
        return "A" * 5_000_000 + "B" * 5_000_000

    agent = make_agent(sim, tools=[big], settings=sim_settings(sim, limits__max_tool_output_chars=1000))
    result = await agent.run("go")
    assert result.ok
    content = next(m for m in result.messages if m["role"] == "tool")["content"]
    assert len(content) < 1100 and content.startswith("A") and content.endswith("B")
    assert "truncated of 10,000,000" in content
    fin = next(e for e in result.events if isinstance(e, ToolFinished))
    assert fin.truncated and fin.output_chars == 10_000_000
    await agent.client.aclose()


async def test_stuck_detection(sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=100)  # the model keeps asking for lookup(key="x")
    agent = make_agent(sim, settings=sim_settings(sim, limits__stuck_repeats=3))
    result = await agent.run("loop forever")
    assert result.status == "stuck" and "lookup" in result.stop_reason and "3 times" in result.stop_reason
    assert result.usage.tool_calls == 2  # the third identical call is never run
    await agent.client.aclose()


@pytest.mark.parametrize("limits,name", [
    (UsageLimits(max_steps=2), "max_steps"),
    (UsageLimits(max_requests=1), "max_requests"),
    (UsageLimits(max_input_tokens=1), "max_input_tokens"),
    (UsageLimits(max_output_tokens=1), "max_output_tokens"),
    (UsageLimits(max_cost=1e-9), "max_cost"),
])
async def test_usage_limits(limits: UsageLimits, name: str, sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=5)
    settings = sim_settings(sim)
    settings.prices["sim"] = settings.prices["gpt-4o"]
    agent = make_agent(sim, settings=settings, limits=limits)
    result = await agent.run("spend")
    assert result.status == "limit" and result.stop_reason == name
    hits = [e for e in result.events if isinstance(e, LimitHit)]
    assert [h.limit for h in hits] == [name]
    if name == "max_cost":
        assert result.usage.cost > 0
    await agent.client.aclose()


async def test_wall_time_limit(sim: SimServer) -> None:
    sim.configure(latency=5.0)
    agent = make_agent(sim, limits=UsageLimits(max_wall_time=0.3))
    result = await agent.run("slow")
    assert result.status == "limit" and result.stop_reason == "max_wall_time"
    await agent.client.aclose()


async def test_cancel_stops_inflight_request(sim: SimServer) -> None:
    sim.configure(latency=30.0)
    agent = make_agent(sim)
    handle = agent.start("never answered")
    while sim.stats()["in_flight"] == 0:
        await asyncio.sleep(0.01)
    handle.cancel()
    result = await handle  # would take 30 s if the HTTP request were not aborted
    assert result.status == "cancelled"
    assert result.events[-1].kind == "run_finished"
    for _ in range(200):
        if sim.stats()["in_flight"] == 0:
            break
        await asyncio.sleep(0.01)
    assert sim.stats()["in_flight"] == 0  # the server saw the connection go
    await agent.client.aclose()


async def test_cancel_stops_running_tools_and_releases_resources(sim: SimServer) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()
    released: list[str] = []

    class Lease:
        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            released.append("lease")

    @tool
    async def hang(ctx: RunContext, key: str) -> str:
        await ctx.resource("lease", Lease)
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    agent = make_agent(sim, tools=[hang])
    handle = agent.start("go")
    await started.wait()
    t0 = time.perf_counter()
    handle.cancel()
    result = await handle
    assert result.status == "cancelled" and cancelled.is_set() and released == ["lease"]
    assert time.perf_counter() - t0 < 5  # generous: the 3600 s tool did not run on
    await agent.client.aclose()


async def test_outer_cancellation_propagates(sim: SimServer) -> None:
    sim.configure(latency=30.0)
    agent = make_agent(sim)
    task = asyncio.ensure_future(agent.run("x"))
    while sim.stats()["in_flight"] == 0:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await agent.client.aclose()


async def test_model_failure_ends_run_cleanly_with_events(sim: SimServer) -> None:
    sim.inject(Fault("401"))
    agent = make_agent(sim)
    result = await agent.run("x")
    assert result.status == "error" and "AuthenticationError" in result.stop_reason
    assert [e.kind for e in result.events][-2:] == ["llm_failed", "run_finished"]
    with pytest.raises(Exception, match="authentication failed"):
        result.raise_for_status()
    await agent.client.aclose()


async def test_missing_endpoint_is_a_clear_error() -> None:
    from nbagent.config import Settings

    agent = Agent("m", runtime=Runtime(Settings.load(env={"NBAGENT_EMBEDDED": "0"}), bus=EventBus()))
    result = await agent.run("x")
    assert result.status == "error" and "no model endpoint configured" in result.stop_reason


async def test_streaming_run(sim: SimServer) -> None:
    deltas: list[str] = []
    agent = make_agent(sim, stream=True)
    result = await agent.run("stream it", on_text=deltas.append)
    assert result.ok and "".join(deltas).endswith(result.output)
    await agent.client.aclose()


def test_run_sync_in_a_script(sim: SimServer) -> None:
    agent = make_agent(sim)
    assert agent.run_sync("sync please").ok


def test_run_sync_inside_a_running_loop_waits_there(sim: SimServer) -> None:
    # in a fresh interpreter: re-entering a loop (nest-asyncio2) patches it for good
    code = (
        "import asyncio, sys\n"
        "from nbagent import Agent, Runtime, Settings\n"
        "async def main():\n"
        f"    agent = Agent('sim', runtime=Runtime(Settings.load(env={{'NBAGENT_BASE_URL': {sim.url!r}}})))\n"
        "    ticks = []\n"
        "    async def ticker():\n"
        "        while True:\n"
        "            ticks.append(1)\n"
        "            await asyncio.sleep(0.005)\n"
        "    t = asyncio.create_task(ticker())\n"
        "    r = agent.run_sync('inside a loop')\n"
        "    t.cancel()\n"
        "    print(r.status, r.output, len(ticks) > 0)\n"
        "asyncio.run(main())\n"
    )
    sim.configure(latency=0.1)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "ok Answer to: inside a loop True"  # other tasks ran while it waited


async def test_many_concurrent_runs_share_one_pool(sim: SimServer) -> None:
    sim.configure(latency=0.05)
    agent = make_agent(sim)
    results = await asyncio.gather(*(agent.run(f"q{i}") for i in range(50)))
    assert all(r.ok for r in results)
    assert len({r.run_id for r in results}) == 50
    assert agent.client.pool_stats()["peak_in_flight"] > 10
    await agent.client.aclose()


async def test_first_tool_is_forced_on_the_first_call_only(sim: SimServer) -> None:
    agent = make_agent(sim, first_tool="lookup", tool_choice="auto")
    result = await agent.run("q")
    assert result.ok
    choices = [body.get("tool_choice") for body in sim.history]
    assert choices[0] == {"type": "function", "function": {"name": "lookup"}}
    assert all(c == "auto" for c in choices[1:])
    with pytest.raises(ValueError, match="not one of the agent's tools"):
        make_agent(sim, first_tool="nope")
    await agent.client.aclose()


def test_stuck_detection_counts_one_call_however_its_arguments_are_spelled() -> None:
    """Key order and spacing do not make a repeated call new; arguments that strict JSON parsers refuse (a raw
    newline in a string, as small models write) are compared too; a limit of 0 turns the count off."""
    from nbagent.agent.run import _RunState
    from nbagent.llm.types import ToolCall

    def calls(*raw: str) -> list[ToolCall]:
        return [ToolCall(id=f"c{i}", name="lookup", arguments=a) for i, a in enumerate(raw)]

    state = _RunState()
    assert state.repeats(calls('{"a": 1, "b": "x"}', '{"b":"x","a":1}'), 3) is None
    stuck = state.repeats(calls('{ "b" : "x", "a" : 1 }'), 3)
    assert stuck is not None and stuck.startswith("lookup(") and '"a":1' in stuck
    state = _RunState()
    assert state.repeats(calls('{"text": "two\nlines"}', '{"text":"two\nlines"}'), 2) is not None
    assert state.repeats(calls("not json", "not json"), 2) is not None  # compared as they are
    state = _RunState()
    assert state.repeats(calls("{}", "{}", "{}"), 0) is None
