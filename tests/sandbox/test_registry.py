"""The backend registry: a third backend, defined in this file alone, registered by name and used through
the spec, ``auto``, the manager, the agent tools and the CLI -- nothing else in the package changes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from nbagent.agent.tools import RunContext
from nbagent.errors import ConfigError
from nbagent.events import EventBus
from nbagent.sandbox import (
    ExecOutput,
    Isolation,
    PoolConfig,
    SandboxManager,
    SandboxSpec,
    backends,
    register_backend,
    sandbox_tools,
    unregister_backend,
)
from nbagent.sandbox.backend import LABEL_MANAGER, SandboxBackend, SandboxDriver, SandboxLabels, SandboxRecord
from nbagent.sandbox.cli import list_sandboxes, register


class TempDirSandbox:
    """A directory; commands are plain processes in it (no isolation at all, and it says so)."""

    backend = "tempdir"
    isolation = Isolation(kind="process", unbounded=("everything",))

    def __init__(self, home: Path) -> None:
        self.id = home.name
        self.home = home
        self.workdir = str(home / "work")

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, limit: int,
        env: Mapping[str, str] | None = None,
    ) -> ExecOutput:
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=self.workdir, env={**os.environ, **(env or {})}, start_new_session=True,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        timed_out = False
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except asyncio.TimeoutError:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = await proc.communicate()
        code = proc.returncode
        code = 128 - code if code is not None and code < 0 else code
        return ExecOutput(stdout=out[:limit], stderr=err[:limit], exit_code=code, timed_out=timed_out,
                          duration=time.monotonic() - started, truncated=max(len(out), len(err)) > limit)

    async def check(self) -> str | None:
        await asyncio.to_thread(shutil.rmtree, self.workdir)
        await asyncio.to_thread(os.mkdir, self.workdir)
        return None

    async def destroy(self) -> None:
        await asyncio.to_thread(shutil.rmtree, self.home, True)


class TempDirBackend:
    name = "tempdir"

    def __init__(self, root: Path) -> None:
        self.root = root

    async def available(self) -> bool:
        return True

    async def create(self, spec: SandboxSpec, labels: SandboxLabels) -> TempDirSandbox:
        home = self.root / f"tmpdir-{uuid.uuid4().hex[:8]}"
        (home / "work").mkdir(parents=True)
        (home / "labels.json").write_text(json.dumps(labels.as_dict()))
        return TempDirSandbox(home)

    async def list_sandboxes(self) -> list[SandboxRecord]:
        return [SandboxRecord(id=p.parent.name, backend=self.name, status="dir", labels=json.loads(p.read_text()))
                for p in sorted(self.root.glob("*/labels.json"))]

    async def remove(self, sandbox_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self.root / sandbox_id, True)

    async def aclose(self) -> None:
        return None


@pytest.fixture
def tempdir_backend(tmp_path: Path) -> Iterator[Path]:
    """Register ``tempdir`` (tried first by ``auto``) for one test."""
    register_backend("tempdir", lambda: TempDirBackend(tmp_path), auto_rank=-1)
    yield tmp_path
    unregister_backend("tempdir")


def test_the_spec_accepts_exactly_the_registered_backends(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'tempdir'.*register_backend"):
        SandboxSpec(backend="tempdir")
    register_backend("tempdir", lambda: TempDirBackend(tmp_path))
    try:
        assert backends()[-1] == "tempdir" and SandboxSpec(backend="tempdir").backend == "tempdir"
        with pytest.raises(ConfigError, match="already registered"):
            register_backend("tempdir", lambda: TempDirBackend(tmp_path))
    finally:
        unregister_backend("tempdir")
    with pytest.raises(ConfigError):
        register_backend("auto", lambda: TempDirBackend(tmp_path))
    assert isinstance(TempDirBackend(tmp_path), SandboxBackend)
    assert isinstance(TempDirSandbox(tmp_path), SandboxDriver)


@pytest.mark.asyncio
async def test_a_registered_backend_serves_leases_auto_and_the_tools(tempdir_backend: Path, bus: EventBus) -> None:
    m = SandboxManager(SandboxSpec(backend="auto", timeout=20), PoolConfig(min_idle=0, max_total=1), bus=bus,
                       prune_on_start=False)
    try:
        async with m.lease() as sb:
            assert sb.backend == "tempdir" and sb.spec.backend == "tempdir"  # auto: the lowest rank that answers
            assert not sb.isolated and sb.isolation.unbounded == ("everything",)
            r = await sb.exec("print(6 * 7)", lang="python")
            assert (r.stdout, r.exit_code) == ("42\n", 0)
            await sb.put_file("sub/a.txt", "hello")
            assert await sb.get_file("sub/a.txt") == b"hello"
            assert (tempdir_backend / sb.id / "work" / "sub" / "a.txt").read_text() == "hello"
        await m.settle()
        tools = {t.name: t for t in sandbox_tools(m)}
        ctx = RunContext(run_id="r1", bus=bus)
        assert await tools["write_file"].call(ctx, {"path": "n.txt", "content": "four"}) == "wrote 4 bytes to n.txt"
        assert await tools["read_file"].call(ctx, {"path": "n.txt"}) == "four"
        assert (await tools["shell"].call(ctx, {"command": "cat n.txt; echo; echo $PWD"})).startswith("four\n")
        await ctx.aclose()
        await m.settle()
        assert m.stats().leases == 2 and m.stats().created == 1
        [record] = [r for r in await m.list_sandboxes() if r.backend == "tempdir"]
        assert record.labels[LABEL_MANAGER] == m.id
    finally:
        await m.aclose()
    assert not await asyncio.to_thread(lambda: list(tempdir_backend.glob("tmpdir-*")))


@pytest.mark.asyncio
async def test_the_cli_reads_the_registry(tempdir_backend: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["sandboxes", "list", "--backend", "tempdir"]).backend == "tempdir"
    sb = await TempDirBackend(tempdir_backend).create(SandboxSpec(), SandboxLabels.for_this_process("m-cli"))
    rows = await list_sandboxes("tempdir")
    assert [(r["id"], r["backend"], r["manager"], r["owner_alive"]) for r in rows] == [
        (sb.id, "tempdir", "m-cli", True)]
