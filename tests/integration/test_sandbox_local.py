"""Local sandboxes against real bubblewrap (and the plain-subprocess fallback)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nbagent.events import EventBus
from nbagent.sandbox import PoolConfig, SandboxManager, SandboxSpec
from nbagent.sandbox.local import LocalBackend, SandboxNotIsolatedWarning

pytestmark = [pytest.mark.integration]

Make = Callable[..., SandboxManager]
ROOT = Path(__file__).resolve().parents[2]
SLACK = 5.0


def spec(**changes: object) -> SandboxSpec:
    return SandboxSpec(backend="local", timeout=20).replace(**changes)


async def gone(text: str, limit: float = 15.0) -> bool:
    """Poll until no host process has ``text`` in its command line (a generous bound, not a timing)."""
    deadline = time.monotonic() + limit
    while host_processes_with(text):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def host_processes_with(text: str) -> list[int]:
    found = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if text.encode() in f.read().replace(b"\0", b" "):
                        found.append(int(p))
            except OSError:
                pass
    return found


@pytest.mark.asyncio
async def test_exec_files_and_isolation(local_manager: Make) -> None:
    m = local_manager()
    async with m.lease() as sb:
        assert sb.isolated and sb.workdir == "/workspace"
        r = await sb.exec("id -u; hostname; pwd; ls /; echo oops >&2; exit 4")
        uid, host, cwd, *root = r.stdout.split()
        assert (uid, host, cwd, r.stderr, r.exit_code) == ("65534", "sandbox", "/workspace", "oops\n", 4)
        assert "home" not in root and "root" not in root  # only what is bound in
        r = await sb.exec("import sys; print(sys.stdin.read()[::-1])", lang="python", stdin="olleh")
        assert r.stdout == "hello\n"
        blob = os.urandom(200_000)
        await sb.put_file("d/blob.bin", blob)
        assert await sb.get_file("/workspace/d/blob.bin") == blob
        with pytest.raises(FileNotFoundError):
            await sb.get_file("missing")
        with pytest.raises(OSError):
            await sb.put_file("/usr/evil", b"x")  # read-only system binds
        assert (await sb.exec("ls /etc/shadow")).exit_code != 0
        first = sb.id
    await m.settle()
    async with m.lease() as sb:
        assert sb.id == first and (await sb.exec("ls -A")).stdout == ""  # wiped


@pytest.mark.asyncio
async def test_no_network(local_manager: Make) -> None:
    m = local_manager()
    async with m.lease() as sb:
        code = (
            "import socket\n"
            "print(sorted(line.split(':')[0].strip() for line in open('/proc/net/dev').readlines()[2:]))\n"
            "s = socket.socket(); s.settimeout(5); print(s.connect_ex(('1.1.1.1', 80)))\n"
        )
        r = await sb.exec(code, lang="python")
        assert r.ok, r.stderr
        assert r.stdout.splitlines()[0] == "['lo']"
        assert int(r.stdout.splitlines()[-1]) != 0


@pytest.mark.asyncio
async def test_timeout_kills_the_whole_tree(local_manager: Make) -> None:
    m = local_manager()
    async with m.lease() as sb:
        started = time.monotonic()
        r = await sb.exec("setsid sleep 4242 & exec python3 -c 'while True: pass'", timeout=1)
        assert r.timed_out and time.monotonic() - started < 1 + SLACK
        assert await gone("sleep 4242")  # the pid namespace died with it


@pytest.mark.asyncio
async def test_a_cancelled_exec_kills_its_command(local_manager: Make) -> None:
    m = local_manager()
    async with m.lease() as sb:
        task = asyncio.create_task(sb.exec("sleep 4545"))
        for _ in range(600):
            if host_processes_with("sleep 4545"):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await gone("sleep 4545")
        assert (await sb.exec("echo fine")).stdout == "fine\n"


@pytest.mark.asyncio
async def test_fork_bomb_is_bounded(local_manager: Make) -> None:
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        "            os.close(1); os.close(2); time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
    )
    m = local_manager(spec(pids=32))
    async with m.lease() as sb:
        r = await sb.exec(bomb, lang="python", timeout=30)
        forks, errno = r.stdout.split()
        # RLIMIT_NPROC counts every process of the uid (the limit is pids + what the uid runs when the
        # command starts, and exiting processes free slots while it forks): bounded, not exact
        assert int(forks) < 2 * 32 and int(errno) == 11


@pytest.mark.asyncio
async def test_memory_limit(local_manager: Make) -> None:
    m = local_manager(spec(memory="128m"))
    async with m.lease() as sb:
        r = await sb.exec("x = bytearray(512 << 20)", lang="python")
        assert r.exit_code != 0 and "MemoryError" in r.stderr
        assert r.oom_killed is None  # the local backend cannot tell an OOM kill


@pytest.mark.asyncio
async def test_pool_of_local_sandboxes_under_concurrency(local_manager: Make) -> None:
    m = local_manager(max_total=3)
    granted: list[int] = []

    async def user(i: int) -> str:
        async with m.lease() as sb:
            granted.append(i)
            return (await sb.exec(f"echo {i} > f; cat f")).stdout

    tasks = []
    for i in range(20):
        tasks.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)
    outs = await asyncio.gather(*tasks)
    assert outs == [f"{i}\n" for i in range(20)] and granted == list(range(20))
    await m.settle()
    assert m.stats().total <= 3 and m.stats().leases == 20


@pytest.mark.asyncio
async def test_plain_fallback_is_reported_and_still_kills(bus: EventBus, local_root: Path) -> None:
    m = SandboxManager(spec(local_isolation="none"), PoolConfig(min_idle=0), bus=bus,
                       backends={"local": LocalBackend(local_root)}, prune_on_start=False)
    try:
        with pytest.warns(SandboxNotIsolatedWarning, match="NOT isolated"):
            async with m.lease() as sb:
                assert not sb.isolated and sb.workdir.startswith(str(local_root))
                r = await sb.exec("setsid sleep 4343 >/dev/null 2>&1 & sleep 30", timeout=1)
                assert r.timed_out
                assert (await sb.exec("pwd")).stdout.strip() == sb.workdir
        await m.settle()
        assert await gone("sleep 4343")
    finally:
        await m.aclose()


CHILD = """
import asyncio, sys
from nbagent.events import EventBus
from nbagent.sandbox import PoolConfig, SandboxManager, SandboxSpec
from nbagent.sandbox.local import LocalBackend

async def main():
    m = SandboxManager(SandboxSpec(backend="local"), PoolConfig(min_idle=0), bus=EventBus(), prune_on_start=False,
                       backends={"local": LocalBackend(sys.argv[1])})
    async with m.lease() as sb:
        print(sb.id, flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_orphans_of_a_sigkilled_owner_are_removed(bwrap_path: str, bus: EventBus, local_root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(local_root),
                                                stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    sandbox_id = (await proc.stdout.readline()).decode().strip()
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    assert (local_root / sandbox_id).is_dir()
    backend = LocalBackend(local_root, bwrap=bwrap_path)
    m = SandboxManager(spec(), PoolConfig(min_idle=0), bus=bus, backends={"local": backend})
    try:
        await m.start()
        assert not (local_root / sandbox_id).exists()
    finally:
        await m.aclose()


@pytest.mark.asyncio
async def test_a_cancel_while_the_command_starts_does_not_hang(local_manager: Make,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A cancel that lands while asyncio connects the command's pipes (the process already runs) ends the exec
    promptly and kills the command's whole process group."""
    m = local_manager()
    loop = asyncio.get_running_loop()
    original = loop.connect_read_pipe

    async def slow_connect(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.5)  # the window, widened: the command runs, its pipes are not connected yet
        return await original(*args, **kwargs)

    async with m.lease() as sb:
        monkeypatch.setattr(loop, "connect_read_pipe", slow_connect)
        task = asyncio.create_task(sb.exec("sleep 4646"))
        for _ in range(600):
            if host_processes_with("sleep 4646"):
                break
            await asyncio.sleep(0.02)
        assert not task.done()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=20)
        assert done, "the cancelled exec never ended"
        assert task.cancelled()
        monkeypatch.undo()
        assert await gone("sleep 4646")
        assert (await sb.exec("echo fine")).stdout == "fine\n"
