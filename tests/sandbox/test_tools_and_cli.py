"""The agent tools (one lease per run) and the ``sandboxes`` CLI functions."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable

import pytest

from nbagent.agent.tools import RunContext, Tool
from nbagent.errors import ToolError
from nbagent.events import EventBus
from nbagent.sandbox import SandboxManager, SandboxRecord
from nbagent.sandbox.backend import SandboxLabels
from nbagent.sandbox.cli import list_sandboxes, prune_sandboxes, register
from nbagent.sandbox.tools import sandbox_tools

from .fakes import FakeBackend


def by_name(tools: list[Tool]) -> dict[str, Tool]:
    return {t.name: t for t in tools}


@pytest.mark.asyncio
async def test_tools_schema_hides_the_context() -> None:
    tools = by_name(sandbox_tools())  # the default manager is only made when a tool runs
    assert list(tools) == ["python", "shell", "read_file", "write_file"]
    for t in tools.values():
        assert t.takes_context and "ctx" not in t.parameters["properties"]
    assert tools["python"].parameters["required"] == ["code"]
    assert tools["write_file"].parameters["required"] == ["path", "content"]


@pytest.mark.asyncio
async def test_a_run_leases_once_and_keeps_its_sandbox(
    make_manager: Callable[..., SandboxManager], backend: FakeBackend
) -> None:
    m = make_manager()
    tools = by_name(sandbox_tools(m))
    ctx = RunContext(run_id="r1", bus=EventBus())
    out = await tools["python"].call(ctx, {"code": "print(1)"})
    assert out == "python3 -c print(1)\n[exit code 0]"
    assert "sh -c ls" in await tools["shell"].call(ctx, {"command": "ls", "timeout": 5})
    assert await tools["write_file"].call(ctx, {"path": "a.txt", "content": "héllo"}) == "wrote 6 bytes to a.txt"
    assert await tools["read_file"].call(ctx, {"path": "a.txt"}) == "héllo"
    with pytest.raises(ToolError, match="no such file"):
        await tools["read_file"].call(ctx, {"path": "missing.txt"})
    with pytest.raises(ToolError, match="positive"):
        await tools["shell"].call(ctx, {"command": "ls", "timeout": -1})
    assert "sh -c ls" in await tools["shell"].call(ctx, {"command": "ls", "timeout": 0})  # 0: the default
    assert m.stats().leases == 1 and m.stats().active == 1
    await ctx.aclose()  # the run ends: the lease ends
    await m.settle()
    assert m.stats().active == 0 and m.stats().idle == 1
    assert len(backend.created) == 1


@pytest.mark.asyncio
async def test_tools_without_reuse_lease_per_call(make_manager: Callable[..., SandboxManager]) -> None:
    m = make_manager()
    tools = by_name(sandbox_tools(m, reuse=False))
    ctx = RunContext(run_id="r2", bus=EventBus())
    await tools["shell"].call(ctx, {"command": "true"})
    await tools["shell"].call(ctx, {"command": "true"})
    assert m.stats().leases == 2 and m.stats().active == 0


@pytest.mark.asyncio
async def test_a_sandbox_failure_becomes_a_tool_error(
    make_manager: Callable[..., SandboxManager], backend: FakeBackend
) -> None:
    backend.fail_creates = 1
    m = make_manager()
    ctx = RunContext(run_id="r3", bus=EventBus())
    with pytest.raises(ToolError, match="sandbox error"):
        await by_name(sandbox_tools(m))["shell"].call(ctx, {"command": "true"})
    await ctx.aclose()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.asyncio
async def test_cli_list_and_prune() -> None:
    fake = FakeBackend("docker")
    fake.records = [
        SandboxRecord(id="live", backend="docker", status="running",
                      labels=SandboxLabels.for_this_process("m1").as_dict()),
        SandboxRecord(id="orphan", backend="docker", status="exited",
                      labels=SandboxLabels(manager_id="m2", owner_pid=_dead_pid(), owner_start="1").as_dict()),
    ]
    rows = await list_sandboxes(backends={"docker": fake})
    assert [(r["id"], r["owner_alive"], r["manager"]) for r in rows] == [("live", True, "m1"), ("orphan", False, "m2")]
    assert rows[0]["age"] is not None and rows[0]["age"] >= 0
    assert [r["id"] for r in await prune_sandboxes(backends={"docker": fake}, dry_run=True)] == ["orphan"]
    assert fake.removed == []
    assert [r["id"] for r in await prune_sandboxes(backends={"docker": fake})] == ["orphan"]
    assert fake.removed == ["orphan"]
    assert [r["id"] for r in await prune_sandboxes(backends={"docker": fake}, everything=True)] == ["live"]
    fake.reachable = False
    assert await list_sandboxes(backends={"docker": fake}) == []


def test_cli_register() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sandboxes", "list", "--json"])
    assert args.json and args.backend == "all" and callable(args.func)
    args = parser.parse_args(["sandboxes", "prune", "--all", "--backend", "local", "--dry-run"])
    assert args.all and args.dry_run and args.backend == "local"
    with pytest.raises(SystemExit):
        parser.parse_args(["sandboxes", "explode"])
