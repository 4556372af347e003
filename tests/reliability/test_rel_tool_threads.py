"""A sync tool that never returns: bounded by a default timeout, it cannot starve other tools or block exit."""

from __future__ import annotations

import subprocess
import sys
import time

from support import sim_settings

from nbagent import Agent, Runtime, tool
from nbagent.events import ToolFinished, ToolStarted
from nbagent.llm import UsageLimits
from nbagent.testing import Reply, SimServer


@tool
def hang() -> str:
    """Never returns."""
    time.sleep(10**6)
    return "never"


@tool
def quick() -> str:
    """Returns at once."""
    return "quick-ok"


async def test_stuck_sync_tools_do_not_starve_a_later_one(sim: SimServer) -> None:
    async with Runtime(sim_settings(sim)) as rt:
        stuck_runs = 0
        for i in range(20):  # more than the default executor's threads on this machine (min(32, cpus + 4))
            sim.script(Reply(tool_calls=[("hang", {})]))  # the run ends at its wall-time limit, in the tool
            result = await Agent("sim", [hang], runtime=rt, limits=UsageLimits(max_wall_time=0.5)).run(f"h{i}")
            assert result.status == "limit" and result.stop_reason == "max_wall_time"
            stuck_runs += any(isinstance(e, ToolStarted) for e in result.events)  # not when the model was slower
        threads = rt.part_if_started("tool_threads")
        assert threads is not None and threads.stats()["stuck"] == stuck_runs > 8
        sim.script(Reply(tool_calls=[("quick", {})]), Reply(text="done"))
        result = await Agent("sim", [quick], runtime=rt, limits=UsageLimits(max_wall_time=30)).run("q")
        assert result.ok, result.stop_reason
        # (a scripted reply a slow run never asked for may come first: only the quick call counts here)
        [finished] = [e for e in result.events if isinstance(e, ToolFinished) and e.name == "quick"]
        assert finished.ok and finished.output_preview == "quick-ok"


async def test_tools_get_the_default_timeout_of_the_settings(sim: SimServer) -> None:
    async with Runtime(sim_settings(sim, limits__tool_timeout=0.3)) as rt:
        sim.script(Reply(tool_calls=[("hang", {})]), Reply(text="gave up on it"))
        result = await Agent("sim", [hang], runtime=rt).run("q")
    assert result.ok and result.output == "gave up on it"  # the run goes on: the model sees the error
    [finished] = [e for e in result.events if isinstance(e, ToolFinished)]
    assert not finished.ok and "timed out after 0.3 s" in (finished.error or "")


def test_the_interpreter_does_not_wait_for_a_stuck_tool(sim: SimServer) -> None:
    code = (
        "import asyncio, time\n"
        "from nbagent import Agent, Runtime, Settings, tool\n"
        "from nbagent.llm import UsageLimits\n"
        "@tool\n"
        "def hang() -> str:\n"
        "    '''Never returns.'''\n"
        "    time.sleep(10**6)\n"
        "async def main():\n"
        f"    s = Settings.load(env={{'NBAGENT_BASE_URL': {sim.url!r}, 'NBAGENT_MODEL': 'sim'}})\n"
        "    async with Runtime(s) as rt:\n"
        "        r = await Agent('sim', [hang], runtime=rt, limits=UsageLimits(max_wall_time=0.5)).run('q')\n"
        "    print(r.status)\n"
        "asyncio.run(main())\n"
    )
    sim.script(Reply(tool_calls=[("hang", {})]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "limit"
