"""Faults an adversarial pass found in the sandboxes, on the real Docker engine and real bubblewrap.

* reading ``/dev/zero`` or a huge file grew the host process by gigabytes (reads were capped at 2 GiB);
* the local backend bounded each file, not the total, and ``/tmp`` was a tmpfs of half the host's RAM;
* a Docker exec left its background processes running, and a bounded fork loop left the sandbox at its
  pids limit for the next command.

Memory is measured as the peak resident set of this process (``VmHWM``, reset before each transfer):
a bound in bytes, not a timing. Both backends skip when missing, unless ``NBAGENT_REQUIRE_SANDBOXES=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sandbox_gates import checked_bwrap, docker_client_or_skip

from nbagent.agent.tools import RunContext
from nbagent.events import EventBus
from nbagent.sandbox import (
    PoolConfig,
    Sandbox,
    SandboxManager,
    SandboxSpec,
    TransferLimitExceeded,
    sandbox_tools,
)
from nbagent.sandbox.docker import DockerBackend
from nbagent.sandbox.local import LocalBackend

pytestmark = [pytest.mark.integration]

BACKENDS = ["docker", "local"]
MiB = 1 << 20


def _docker_client() -> Any:
    return docker_client_or_skip()


def _bwrap() -> str:
    return checked_bwrap()


@pytest.fixture
async def make(bus: EventBus, local_root: Path) -> AsyncIterator[Callable[..., SandboxManager]]:
    """``make(backend, **spec_changes)``: a manager of one sandbox on a real backend, closed after the test."""
    made: list[SandboxManager] = []

    def factory(backend: str, **changes: Any) -> SandboxManager:
        if backend == "docker":
            backends: dict[str, Any] = {"docker": DockerBackend(_docker_client())}
        else:
            backends = {"local": LocalBackend(local_root, bwrap=_bwrap())}
        spec = SandboxSpec(backend=backend, timeout=30).replace(**changes)
        m = SandboxManager(spec, PoolConfig(min_idle=0, max_total=1, lease_timeout=120), bus=bus,
                           backends=backends, prune_on_start=False)
        made.append(m)
        return m

    yield factory
    for m in made:
        await m.aclose(grace=0)


def peak_rss_reset() -> None:
    """Start a new peak: the kernel's high-water mark of this process's resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def processes(sb: Sandbox) -> list[str]:
    """The command lines of every process in the sandbox but the listing, its ancestors (the exec's
    wrapper) and PID 1."""
    code = (
        "import os\n"
        "skip, p = {1}, os.getpid()\n"
        "while p > 1:\n"
        "    skip.add(p)\n"
        "    p = int(open('/proc/%d/stat' % p).read().rsplit(')', 1)[1].split()[1])\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) not in skip:\n"
        "        print(open('/proc/%s/cmdline' % p, 'rb').read().replace(b'\\0', b' ').decode())\n"
    )
    r = await sb.exec(code, lang="python")
    assert r.ok, r.stderr
    return [line for line in r.stdout.splitlines() if line.strip()]


# --- transfers ----------------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_reading_dev_zero_or_a_huge_file_stops_at_the_cap(
    make: Callable[..., SandboxManager], backend: str
) -> None:
    m = make(backend, max_transfer="4m", workspace_size="2g")
    async with m.lease() as sb:
        r = await sb.exec("truncate -s 1g huge && head -c 4194304 /dev/urandom > exact && ls -l huge")
        assert r.ok, r.output
        bound = 64 * MiB  # the cap is 4 MiB; without it the host grew by gigabytes
        for path in ("/dev/zero", "huge"):
            peak_rss_reset()
            before = rss()
            with pytest.raises(TransferLimitExceeded, match="transfer limit of 4 MiB") as info:
                await sb.get_file(path)
            assert peak_rss() - before < bound, f"{path}: the host's memory grew by {(peak_rss() - before) >> 20} MiB"
            assert info.value.limit == 4 * MiB
        assert len(await sb.get_file("exact")) == 4 * MiB  # exactly at the cap: read whole
        head = await sb.get_file("/dev/zero", max_bytes=1000, truncate=True)
        assert head == bytes(1000)
        with pytest.raises(TransferLimitExceeded):
            await sb.put_file("too-big", bytes(4 * MiB + 1))
        assert not (await sb.exec("test -e too-big")).ok  # refused before anything was sent
    tools = {t.name: t for t in sandbox_tools(m)}
    ctx = RunContext(run_id="rel", bus=m.bus)
    peak_rss_reset()
    before = rss()
    out = await tools["read_file"].call(ctx, {"path": "/dev/zero"})
    assert peak_rss() - before < 64 * MiB
    assert out.endswith("read parts of it with the shell tool, e.g. with tail or sed]") and "[truncated" in out
    await ctx.aclose()


# --- the local backend's disk -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mountable", [True, False], ids=["may-mount", "may-not-mount"])
async def test_local_workspace_and_tmp_are_bounded_in_total_or_labelled_unbounded(
    make: Callable[..., SandboxManager], monkeypatch: pytest.MonkeyPatch, mountable: bool
) -> None:
    if not mountable:  # a host that refuses mount(2), as for a user without root
        monkeypatch.setattr("nbagent.sandbox.local.mount_disk", lambda path, size: "mount(2): not permitted")
    m = make("local", workspace_size="64m", memory="512m")
    write = ("for f in a b /tmp/c; do head -c 26214400 /dev/zero > $f 2>/dev/null || echo \"full at $f\"; done; "
             "du -skc a b /tmp/c | tail -n 1")
    async with m.lease() as sb:
        isolation = sb.isolation
        r = await sb.exec(write)
        if "the workspace's total size" in isolation.unbounded:
            # the host does not let us mount a sized tmpfs (not root): the label says so; /tmp is bounded
            assert not mountable or os.geteuid() != 0
            assert isolation.limits["tmp"] == "a fresh 64m tmpfs per command"
            r = await sb.exec("head -c 104857600 /dev/zero > /tmp/x || echo full")
            assert "full" in r.stdout
            return
        assert isolation.limits["disk"] == "workspace and /tmp share one 64m tmpfs" and not any(
            "disk" in u or "size" in u for u in isolation.unbounded)
        lines = r.stdout.splitlines()
        assert lines[0] == "full at /tmp/c", r.output  # three 25 MiB files do not fit in 64 MiB
        assert int(lines[-1].split()[0]) <= 64 * 1024  # KiB written in all, workspace and /tmp together
        assert "/tmp/c" in (await sb.exec("ls /tmp/c")).stdout  # /tmp persists between commands of a lease
    await m.settle()
    async with m.lease() as sb:  # and is wiped with the workspace when the lease ends
        r = await sb.exec("ls -A /tmp /workspace; df -k /workspace | tail -n 1")
        assert r.stdout.split()[:2] == ["/tmp:", "/workspace:"], r.output
        assert int(r.stdout.split()[-5]) <= 64 * 1024  # df: the size of the file system in KiB


@pytest.mark.asyncio
async def test_docker_says_what_it_does_not_bound(make: Callable[..., SandboxManager]) -> None:
    m = make("docker")
    async with m.lease() as sb:
        assert sb.isolation.kind == "docker" and sb.isolated
        assert any("writable layer" in u for u in sb.isolation.unbounded)
        assert "256m tmpfs" in sb.isolation.limits["disk"]
    m2 = make("docker", read_only=True)
    async with m2.lease() as sb:
        assert sb.isolation.unbounded == () and sb.isolation.limits["root"] == "read-only"


# --- nothing outlives its exec ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_background_processes_do_not_outlive_their_exec(
    make: Callable[..., SandboxManager], backend: str
) -> None:
    m = make(backend)
    async with m.lease() as sb:
        r = await sb.exec("yes > /dev/null & env -i sleep 4321 > /dev/null 2>&1 & echo started")
        assert r.stdout == "started\n" and r.ok
        left = await processes(sb)
        assert not [p for p in left if p.startswith(("yes", "sleep 4321"))], left
        # a command that keeps its output open in the background still returns, and leaves nothing
        r = await sb.exec("sleep 4322 & echo done", timeout=20)
        assert r.stdout == "done\n" and not r.timed_out
        assert not [p for p in await processes(sb) if "4322" in p]


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_finished_fork_loop_does_not_leave_the_sandbox_at_its_pids_limit(
    make: Callable[..., SandboxManager], backend: str
) -> None:
    loop = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 200:\n"
        "        if os.fork() == 0:\n"
        "            os.close(1); os.close(2); time.sleep(120); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print(n, e.errno)\n"
    )
    m = make(backend, pids=24)
    async with m.lease() as sb:
        r = await sb.exec(loop, lang="python")
        forks, errno = r.stdout.split()
        assert int(errno) == 11 and int(forks) < 200  # it hit the limit, then finished long before its timeout
        for _ in range(3):  # the next commands can fork again: the loop's children are gone
            r = await sb.exec("for i in 1 2 3 4 5 6 7 8; do sh -c true; done; echo forked")
            assert r.stdout == "forked\n" and r.ok, r.output
        assert len(await processes(sb)) == 0


# --- exit ---------------------------------------------------------------------------------------

EXIT_CHILD = """
import asyncio, sys
from nbagent.events import EventBus
from nbagent.sandbox import PoolConfig, SandboxManager, SandboxSpec
from nbagent.sandbox.docker import DockerBackend
from nbagent.sandbox.local import LocalBackend

backend = sys.argv[1]
made = DockerBackend() if backend == "docker" else LocalBackend(sys.argv[2])
m = SandboxManager(SandboxSpec(backend=backend), PoolConfig(min_idle=0), bus=EventBus(), prune_on_start=False,
                   backends={backend: made})

async def main():
    async with m.lease() as sb:
        print(sb.id, flush=True)
        await sb.exec("true")

asyncio.run(main())  # returns without m.aclose(): the exit hook must remove the sandbox
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_manager_never_closed_removes_its_sandboxes_at_exit(backend: str, local_root: Path) -> None:
    client = _docker_client() if backend == "docker" else None
    if backend == "local":
        _bwrap()
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-W", "error", "-c", EXIT_CHILD, backend, str(local_root)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr
    sandbox_id = proc.stdout.strip()
    assert sandbox_id and "Traceback" not in proc.stderr, proc.stderr
    if client is not None:
        assert not client.api.containers(all=True, filters={"name": f"^/{sandbox_id}$"})
    else:
        assert not (local_root / sandbox_id).exists()
