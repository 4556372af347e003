"""``%%agent -t mcp:NAME`` and ``%agent mcp`` in a real IPython shell, with mcp-server-time started for real."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Notebook, make_notebook, usage_error

from nbagent.notebook import unregister
from nbagent.testing import Reply, SimServer

pytest.importorskip("mcp")
pytest.importorskip("mcp_server_time")

SERVERS = {"servers": {"time": {"command": sys.executable, "timeout": 60,
                                "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}}}


@pytest.fixture
async def mnb(shell: InteractiveShell, sim: SimServer) -> AsyncIterator[Notebook]:
    notebook = make_notebook(shell, sim, retry__max_attempts=1, mcp=SERVERS)
    yield notebook
    unregister(shell)
    await notebook.registry.aclose()
    await notebook.registry.runtime.aclose()


async def test_a_cell_runs_with_the_tools_of_a_configured_mcp_server(mnb: Notebook, sim: SimServer,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sim.script(Reply(tool_calls=[("get_current_time", {"timezone": "Europe/Paris"})]), Reply(text="it is late"))
    result = await mnb.run("%%agent -n clock -t mcp:time\nwhat time is it in Paris?")
    assert result.success, result.error_in_exec
    done = await mnb.until_done("clock", timeout=120)
    assert done.ok and done.output == "it is late"
    assert sorted(t["function"]["name"] for t in sim.history[0]["tools"]) == ["convert_time", "get_current_time"]
    tool_msg = next(m for m in sim.history[-1]["messages"] if m["role"] == "tool")
    assert "Europe/Paris" in tool_msg["content"]
    assert any(s.kind == "mcp" for s in done.record.spans)

    sim.script(Reply(text="one tool"))
    await mnb.run("%%agent -n one -t mcp:time/convert_time\nconvert")
    await mnb.until_done("one", timeout=120)
    assert [t["function"]["name"] for t in sim.history[-1]["tools"]] == ["convert_time"]

    capsys.readouterr()
    await mnb.run("%agent mcp")
    out = capsys.readouterr().out
    assert "time (stdio): ready; tools: get_current_time, convert_time; calls 1, errors 0, restarts 0" in out


async def test_unknown_mcp_names_are_usage_errors(mnb: Notebook) -> None:
    msg = usage_error(await mnb.run("%%agent -t mcp:nope\nhi"))
    assert "unknown MCP server 'nope'; configured: time" in msg
    msg = usage_error(await mnb.run("%%agent -t mcp:time/nothing\nhi"))
    assert "has no tool 'nothing'" in msg
