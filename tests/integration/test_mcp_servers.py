"""MCP tools from real servers: mcp-server-time and mcp-server-fetch from PyPI (fetch reads a page a test server
serves on loopback; nothing leaves the machine), and the project's test server over streamable HTTP. Agent runs
go to the simulated OpenAI-compatible server, scripted to call the MCP tools."""

from __future__ import annotations

import asyncio
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import sim_settings

pytest.importorskip("mcp")
pytest.importorskip("mcp_server_time")

import nbagent  # noqa: E402
from nbagent import Agent, Runtime  # noqa: E402
from nbagent.events import Event  # noqa: E402
from nbagent.mcp import MCPServer, MCPToolsChanged, mcp_pool, mcp_tools, mcp_tools_async  # noqa: E402
from nbagent.store import RunStore  # noqa: E402
from nbagent.store.redact import redact  # noqa: E402
from nbagent.testing import Reply, SimServer  # noqa: E402

ROOT = str(Path(nbagent.__file__).resolve().parents[1])  # the test server is imported from this checkout
TIME = MCPServer(command=sys.executable, args=["-m", "mcp_server_time", "--local-timezone", "UTC"], name="time")


def project_server(**kw: object) -> MCPServer:
    return MCPServer(command=sys.executable, args=["-m", "nbagent.testing.mcp_server"],
                     env={"PYTHONPATH": ROOT}, name="t", **kw)  # type: ignore[arg-type]


@pytest.fixture
async def rt(sim: SimServer) -> AsyncIterator[Runtime]:
    runtime = Runtime(sim_settings(sim), policy=False)
    yield runtime
    await runtime.aclose()


def mcp_events(rt: Runtime) -> list[Event]:
    seen: list[Event] = []
    rt.bus.tap(lambda e: seen.append(e) if e.kind.startswith("mcp_") else None)
    return seen


async def test_an_agent_calls_the_time_server_and_the_record_shows_the_mcp_call(rt: Runtime, sim: SimServer) -> None:
    events = mcp_events(rt)
    tools = await mcp_tools_async(TIME, runtime=rt)
    by_name = {t.name: t for t in tools}
    assert set(by_name) >= {"get_current_time", "convert_time"}
    assert by_name["get_current_time"].parameters["required"] == ["timezone"]  # the server's schema, as declared
    sim.script(Reply(tool_calls=[("get_current_time", {"timezone": "Europe/Paris"}),
                                 ("get_current_time", {"timezone": "Not/AZone"})]), Reply(text="done"))
    result = await asyncio.wait_for(Agent("sim", tools, runtime=rt).run("what time is it in Paris?"), 120)
    assert result.ok and result.output == "done"
    sent = [m for m in sim.history[-1]["messages"] if m["role"] == "tool"]
    assert '"timezone": "Europe/Paris"' in sent[0]["content"] and '"day_of_week"' in sent[0]["content"]
    assert "Error" in sent[1]["content"] and "Not/AZone" in sent[1]["content"]  # isError: a message, not a crash
    record = result.record
    assert record.tool_calls == 2 and record.tool_errors == 1
    tool_spans = [s for s in record.spans if s.kind == "tool"]
    mcp_spans = [c for s in tool_spans for c in s.children if c.kind == "mcp" and c.name.startswith("call")]
    assert [s.status for s in mcp_spans] == ["ok", "error"] and mcp_spans[0].name == "call time/get_current_time"
    assert all(s.end is not None and s.start <= s.end for s in mcp_spans)
    kinds = [e.kind for e in events]
    assert kinds.count("mcp_session_started") == 1 and kinds.count("mcp_call") == 2  # one pooled session


async def test_the_pooled_session_is_shared_and_closed_with_the_runtime(sim: SimServer) -> None:
    rt = Runtime(sim_settings(sim), policy=False)
    server = project_server()
    tools = {t.name: t for t in await mcp_tools_async(server, runtime=rt)}
    pid = int(await tools["pid"].call(None, {}))
    again = {t.name: t for t in await mcp_tools_async(server, runtime=rt)}
    assert int(await again["pid"].call(None, {})) == pid  # the same process serves both
    assert mcp_pool(rt).health()[0]["state"] == "ready"
    await rt.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        mcp_pool(rt)
    assert _reaped(pid)


def _reaped(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; its parent (the SDK) reaps it
        return f.read().split()[2] == "Z"


async def test_the_run_store_keeps_the_mcp_spans(tmp_path: Path, sim: SimServer) -> None:
    store = RunStore(tmp_path / "runs.db")
    rt = Runtime(sim_settings(sim), policy=False, store=store)
    try:
        tools = await mcp_tools_async(TIME, runtime=rt, include=["get_current_time"])
        sim.script(Reply(tool_calls=[("get_current_time", {"timezone": "UTC"})]), Reply(text="ok"))
        result = await asyncio.wait_for(Agent("sim", tools, runtime=rt).run("time?"), 120)
        assert result.ok
        stored = await asyncio.to_thread(store.load, result.run_id)
        mcp = [s.name for s in stored.record.spans if s.kind == "mcp"]
        assert "call time/get_current_time" in mcp and mcp == [s.name for s in result.record.spans if s.kind == "mcp"]
    finally:
        await rt.aclose()


def test_servers_from_the_config_file_and_sync_mcp_tools(tmp_path: Path, sim: SimServer) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[mcp.servers.clock]\ncommand = {sys.executable!r}\n'
                   'args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]\ntimeout = 20\n')
    settings = sim_settings(sim).replace(mcp=nbagent.Settings.load(cfg).mcp)
    rt = Runtime(settings, policy=False)
    try:
        tools = mcp_tools("clock", runtime=rt, include=["get_current_time"])  # no loop here: a private one lists
        assert [t.name for t in tools] == ["get_current_time"] and tools[0].server.timeout == 20
        sim.script(Reply(tool_calls=[("get_current_time", {"timezone": "Asia/Tokyo"})]), Reply(text="fine"))
        result = Agent("sim", tools, runtime=rt).run_sync("time in Tokyo?")
        assert result.ok and result.record.tool_errors == 0
        with pytest.raises(ValueError, match="unknown MCP server 'nope'; configured: clock"):
            mcp_tools("nope", runtime=rt)
        with pytest.raises(ValueError, match="has no tool 'missing'"):
            mcp_tools("clock", runtime=rt, include=["missing"])
    finally:
        rt.close()


@pytest.fixture
def web() -> Iterator[str]:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = b"<html><head><title>Loopback</title></head><body><h1>Hello from loopback</h1>" \
                   b"<p>The answer is 42.</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/page"
    srv.shutdown()
    srv.server_close()


async def test_the_fetch_server_reads_a_loopback_page(rt: Runtime, sim: SimServer, web: str) -> None:
    pytest.importorskip("mcp_server_fetch")
    fetch = MCPServer(command=sys.executable, args=["-m", "mcp_server_fetch", "--ignore-robots-txt",
                                                    "--allow-private-ips"], name="fetch", timeout=60)
    tools = await mcp_tools_async(fetch, runtime=rt, include=["fetch"])
    sim.script(Reply(tool_calls=[("fetch", {"url": web})]), Reply(text="read it"))
    result = await asyncio.wait_for(Agent("sim", tools, runtime=rt).run("read the page"), 120)
    assert result.ok
    page = next(m for m in sim.history[-1]["messages"] if m["role"] == "tool")["content"]
    assert "The answer is 42." in page


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def http_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nbagent.testing.mcp_server", "--http", str(port)],
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # up to 60 s for the server to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("the MCP test server exited before listening")
                threading.Event().wait(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_streamable_http_with_secret_headers(rt: Runtime, http_server: str) -> None:
    events = mcp_events(rt)
    token = "sk-mcp-test-0123456789abcdef"
    server = MCPServer(url=http_server, headers={"Authorization": f"Bearer {token}"}, name="web")
    assert token not in repr(server) and "Authorization" in repr(server)
    assert token not in redact(f"header was Bearer {token}")  # registered with the store's redactor
    tools = {t.name: t for t in await mcp_tools_async(server, runtime=rt)}
    assert await tools["echo"].call(None, {"text": "over http"}) == "over http"
    assert await tools["add"].call(None, {"a": 2, "b": 3}) == '{\n  "sum": 5\n}'
    await tools["grow"].call(None, {})
    async with asyncio.timeout(30):  # the notification may trail the answer
        while not any(isinstance(e, MCPToolsChanged) for e in events):
            await asyncio.sleep(0.01)
    assert "grown" in {t.name for t in await mcp_tools_async(server, runtime=rt)}


async def test_the_tool_policy_applies_to_mcp_tools(rt: Runtime, sim: SimServer) -> None:
    from nbagent.policy import Policy, Rule

    tools = await mcp_tools_async(TIME, runtime=rt, include=["get_current_time", "convert_time"])
    policy = Policy([Rule("convert_time", "deny", reason="no conversions"),
                     Rule("*", "allow", facts={"mcp_server": "time"})], default="deny")
    sim.script(Reply(tool_calls=[("convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                   "target_timezone": "Asia/Tokyo"}),
                                 ("get_current_time", {"timezone": "UTC"})]), Reply(text="ok"))
    result = await asyncio.wait_for(Agent("sim", tools, runtime=rt, policy=policy).run("convert"), 120)
    denied, allowed = [m["content"] for m in sim.history[-1]["messages"] if m["role"] == "tool"]
    assert "was not run" in denied and "no conversions" in denied
    assert '"timezone": "UTC"' in allowed
    assert result.ok and mcp_pool(rt).session("time").health()["calls"] == 1  # the denied call never reached it
