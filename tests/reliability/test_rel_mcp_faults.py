"""MCP tools that misbehave: slow, crashing mid-call, hanging, huge, malformed, failing, dying while idle,
cancelled. Each ends that tool call with a clear error; the run goes on and nothing hangs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support import sim_settings

pytest.importorskip("mcp")

import nbagent  # noqa: E402
from nbagent import Agent, Runtime  # noqa: E402
from nbagent.events import Event  # noqa: E402
from nbagent.mcp import MCPServer, MCPStartError, MCPTool, mcp_pool, mcp_tools_async  # noqa: E402
from nbagent.testing import Reply, SimServer  # noqa: E402

ROOT = str(Path(nbagent.__file__).resolve().parents[1])
BOUND = 120  # seconds: the longest any test here may wait for anything (a busy machine starts Python slowly)


def test_server(**kw: object) -> MCPServer:
    return MCPServer(command=sys.executable, args=["-m", "nbagent.testing.mcp_server"],
                     env={"PYTHONPATH": ROOT}, name="t", **kw)  # type: ignore[arg-type]


test_server.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture
async def rt(sim: SimServer) -> AsyncIterator[Runtime]:
    runtime = Runtime(sim_settings(sim), policy=False)
    yield runtime
    await runtime.aclose()


@pytest.fixture
def seen(rt: Runtime) -> list[Event]:
    out: list[Event] = []
    rt.bus.tap(out.append)
    return out


async def tools_of(rt: Runtime, **kw: object) -> dict[str, MCPTool]:
    return {t.name: t for t in await asyncio.wait_for(mcp_tools_async(test_server(**kw), runtime=rt), BOUND)}


def tool_messages(sim: SimServer) -> list[str]:
    return [m["content"] for m in sim.history[-1]["messages"] if m["role"] == "tool"]


async def test_a_slow_call_does_not_hold_up_a_fast_one_on_the_same_session(rt: Runtime) -> None:
    tools = await tools_of(rt)
    order: list[str] = []

    async def call(name: str, args: dict[str, object]) -> None:
        await tools[name].call(None, args)
        order.append(name)

    async with asyncio.timeout(BOUND):
        await asyncio.gather(call("slow", {"seconds": 30}), call("echo", {"text": "quick"}),
                             call("slow", {"seconds": 0.0}))
    assert order[-1] == "slow" and order.index("echo") < 2  # the 30 s call ends last; they overlapped
    assert mcp_pool(rt).session("t").health()["calls"] == 3


async def test_a_crash_mid_call_fails_the_calls_in_flight_and_the_next_call_restarts(
        rt: Runtime, sim: SimServer, seen: list[Event]) -> None:
    tools = await tools_of(rt)
    sim.script(Reply(tool_calls=[("slow", {"seconds": 300}), ("crash", {})]),
               Reply(tool_calls=[("echo", {"text": "still here"})]), Reply(text="recovered"))
    result = await asyncio.wait_for(Agent("sim", list(tools.values()), runtime=rt).run("crash it"), BOUND)
    assert result.ok and result.output == "recovered"
    slow, crash = tool_messages(sim)[:2]
    for text in (slow, crash):
        assert "closed the connection during the call" in text and "a new session starts on the next call" in text
    assert tool_messages(sim)[2] == "still here"
    kinds = [e.kind for e in seen]
    assert kinds.count("mcp_session_failed") == 1 and kinds.count("mcp_session_restarted") == 1
    failed = next(e for e in seen if e.kind == "mcp_session_failed")
    assert failed.in_flight == 2  # type: ignore[attr-defined]
    health = mcp_pool(rt).session("t").health()
    assert health["state"] == "ready" and health["restarts"] == 1 and health["in_flight"] == 0
    assert result.record.tool_errors == 2


async def test_a_hanging_tool_times_out_and_the_session_goes_on(rt: Runtime, sim: SimServer) -> None:
    tools = await tools_of(rt, timeout=1.0)
    sim.script(Reply(tool_calls=[("hang", {})]), Reply(tool_calls=[("echo", {"text": "after"})]), Reply(text="ok"))
    result = await asyncio.wait_for(Agent("sim", list(tools.values()), runtime=rt).run("hang"), BOUND)
    assert result.ok
    hang, echo = tool_messages(sim)
    assert "t/hang gave no answer within 1.0 s" in hang and echo == "after"
    assert mcp_pool(rt).session("t").health()["restarts"] == 0


async def test_huge_output_is_truncated_for_the_model(rt: Runtime, sim: SimServer, seen: list[Event]) -> None:
    tools = await tools_of(rt)
    sim.script(Reply(tool_calls=[("huge", {"chars": 3_000_000})]), Reply(text="ok"))
    agent = Agent("sim", list(tools.values()), runtime=rt)
    result = await asyncio.wait_for(agent.run("big"), BOUND)
    assert result.ok
    (text,) = tool_messages(sim)
    assert len(text) <= agent.settings.limits.max_tool_output_chars + 200 and "truncated of 3,000,000" in text
    finished = next(e for e in seen if e.kind == "tool_finished")
    assert finished.truncated and finished.output_chars == 3_000_000  # type: ignore[attr-defined]
    call = next(e for e in seen if e.kind == "mcp_call")
    assert call.ok and call.output_chars == 3_000_000  # type: ignore[attr-defined]


async def test_malformed_failing_and_image_results_become_messages(rt: Runtime, sim: SimServer) -> None:
    tools = await tools_of(rt)
    sim.script(Reply(tool_calls=[("malformed", {}), ("fail", {"message": "disk full"}), ("image", {})]),
               Reply(tool_calls=[("echo", {"text": "fine"})]), Reply(text="ok"))
    result = await asyncio.wait_for(Agent("sim", list(tools.values()), runtime=rt).run("odd ones"), BOUND)
    assert result.ok
    malformed, fail, image, echo = tool_messages(sim)
    assert "t/malformed sent a malformed result" in malformed
    assert "disk full" in fail and fail.startswith("Error")  # isError: what the server said, as a tool error
    assert image.startswith("[image image/png") and echo == "fine"
    assert result.record.tool_errors == 2


async def test_a_server_that_dies_while_idle_is_noticed_and_restarted(rt: Runtime, seen: list[Event]) -> None:
    tools = await tools_of(rt)
    pid = int(await tools["pid"].call(None, {}))
    os.kill(pid, signal.SIGKILL)
    session = mcp_pool(rt).session("t")
    async with asyncio.timeout(BOUND):
        while await session.check():  # the health check the owner runs every health_interval seconds
            await asyncio.sleep(0.05)
    assert session.state == "failed" and "health check failed" in (session.last_error or "")
    assert int(await asyncio.wait_for(tools["pid"].call(None, {}), BOUND)) != pid
    assert [e.kind for e in seen].count("mcp_session_restarted") == 1


async def test_cancelling_a_run_cancels_its_mcp_call(rt: Runtime, sim: SimServer) -> None:
    tools = await tools_of(rt)
    sim.script(Reply(tool_calls=[("hang", {})]), Reply(text="never"))
    handle = Agent("sim", list(tools.values()), runtime=rt).start("hang")
    session = mcp_pool(rt).session("t")
    async with asyncio.timeout(BOUND):
        while session.in_flight == 0:
            await asyncio.sleep(0.01)
    handle.cancel()
    result = await asyncio.wait_for(handle.result(), BOUND)
    assert result.status == "cancelled" and session.in_flight == 0
    assert await asyncio.wait_for(tools["echo"].call(None, {"text": "alive"}), BOUND) == "alive"


async def test_a_server_that_cannot_start_says_why(rt: Runtime) -> None:
    broken = MCPServer(command=sys.executable, args=["-c", "import sys; sys.stderr.write('no config here'); "
                                                     "sys.exit(2)"], name="broken")
    with pytest.raises(MCPStartError, match="could not start.*no config here"):
        await asyncio.wait_for(mcp_tools_async(broken, runtime=rt), BOUND)
    missing = MCPServer(command="/nonexistent/mcp-server", name="missing")
    with pytest.raises(MCPStartError, match="missing could not start"):
        await asyncio.wait_for(mcp_tools_async(missing, runtime=rt), BOUND)
    silent = MCPServer(command=sys.executable, args=["-c", "import time; time.sleep(600)"], name="silent",
                       startup_timeout=1.0)
    with pytest.raises(MCPStartError, match="silent did not start within 1.0 s"):
        await asyncio.wait_for(mcp_tools_async(silent, runtime=rt), BOUND)
