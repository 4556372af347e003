"""Labels, orphan detection, specs and results."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest

from nbagent.errors import ConfigError, SandboxTimeout
from nbagent.events import Event
from nbagent.sandbox import ExecResult, PoolConfig, SandboxDestroyed, SandboxManager, SandboxRecord, SandboxSpec
from nbagent.sandbox.backend import (
    LABEL_OWNER_START,
    SandboxLabels,
    owner_alive,
    process_start_time,
)
from nbagent.sandbox.spec import parse_size

from .fakes import FakeBackend


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def record(sandbox_id: str, labels: SandboxLabels) -> SandboxRecord:
    return SandboxRecord(id=sandbox_id, backend="docker", status="running", labels=labels.as_dict())


def test_labels_name_the_owner_process() -> None:
    labels = SandboxLabels.for_this_process("m1").as_dict()
    assert labels["nbagent.sandbox"] == "1"
    assert labels["nbagent.manager"] == "m1"
    assert labels["nbagent.owner_pid"] == str(os.getpid())
    assert labels["nbagent.host"] == socket.gethostname()
    assert labels[LABEL_OWNER_START] == process_start_time(os.getpid()) != ""
    assert float(labels["nbagent.created"]) > 0


def test_owner_alive() -> None:
    me = SandboxLabels.for_this_process("m").as_dict()
    assert owner_alive(me)
    assert not owner_alive({**me, "nbagent.owner_pid": str(dead_pid())})
    assert not owner_alive({**me, LABEL_OWNER_START: "1"})  # same pid, other start time: the pid was reused
    assert owner_alive({**me, "nbagent.owner_pid": str(dead_pid()), "nbagent.host": "elsewhere"})
    assert owner_alive({**me, "nbagent.owner_pid": "garbage"})  # never prune what cannot be proven dead


@pytest.mark.asyncio
async def test_prune_removes_only_sandboxes_of_dead_owners(
    make_manager: Callable[..., SandboxManager], backend: FakeBackend, events: list[Event]
) -> None:
    gone = dead_pid()
    backend.records = [
        record("alive", SandboxLabels.for_this_process("other")),
        # a start time that cannot match: the pid may already belong to another process
        record("orphan", SandboxLabels(manager_id="crashed", owner_pid=gone, owner_start="1")),
        record("remote", SandboxLabels(manager_id="x", owner_pid=gone, owner_start="1", host="another-host")),
    ]
    m = make_manager()
    await m.start()  # prunes on start
    assert backend.removed == ["orphan"]
    assert [r.id for r in await m.list_sandboxes()] == ["alive", "remote"]
    assert [e.sandbox_id for e in events if isinstance(e, SandboxDestroyed) and e.reason == "orphan"] == ["orphan"]
    assert await m.prune_orphans() == []


def test_spec_validation() -> None:
    spec = SandboxSpec()
    assert spec.memory_bytes == 512 * 2**20 and (spec.uid, spec.gid) == (65534, 65534)
    assert hash(spec) == hash(SandboxSpec())
    assert spec.replace(memory="1g").memory_bytes == 2**30
    assert SandboxSpec(user="1000").gid == 1000
    for bad in (
        dict(backend="podman"), dict(memory="lots"), dict(cpus=0), dict(pids=1), dict(timeout=0),
        dict(user="nobody"), dict(workdir="relative"), dict(local_isolation="chroot"), dict(max_output=10),
    ):
        with pytest.raises(ConfigError):
            SandboxSpec(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        PoolConfig(min_idle=5, max_total=4)
    with pytest.raises(ConfigError):
        PoolConfig(lease_timeout=0)


def test_parse_size() -> None:
    assert parse_size("512m") == 512 * 2**20
    assert parse_size("1.5g") == int(1.5 * 2**30)
    assert parse_size("64KiB") == 64 * 1024
    assert parse_size(4096) == 4096
    with pytest.raises(ConfigError):
        parse_size("-1m")


def test_exec_result_summary() -> None:
    ok = ExecResult(stdout="hi", stderr="warn\n", exit_code=0, duration=0.1)
    assert ok.ok and ok.output == "hi\nwarn\n"
    assert ok.summary() == "hi\nwarn\n[exit code 0]"
    slow = ExecResult(stdout="", stderr="", exit_code=137, duration=2.0, timed_out=True, timeout=2.0)
    assert "timed out after 2s" in slow.summary() and not slow.ok
    with pytest.raises(SandboxTimeout):
        slow.raise_for_timeout()
    oom = ExecResult(stdout="", stderr="", exit_code=137, duration=1.0, oom_killed=True)
    assert "out of memory" in oom.summary()


def test_public_names_and_cheap_import() -> None:
    import nbagent.sandbox as sandbox

    assert sandbox.__all__ == sorted(sandbox.__all__)
    for name in sandbox.__all__:
        assert getattr(sandbox, name) is not None, name
    code = ("import sys, nbagent.sandbox\n"
            "bad = [m for m in ('docker', 'nbagent.agent') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settings_map_onto_spec_and_pool():
    from nbagent.config import Settings
    from nbagent.errors import ConfigError
    from nbagent.sandbox.spec import from_settings

    s = Settings.load(env={"NBAGENT_SANDBOX__BACKEND": "local", "NBAGENT_SANDBOX__PIDS": "64",
                           "NBAGENT_SANDBOX__NETWORK": "false", "NBAGENT_SANDBOX__MAX_TOTAL": "2",
                           "NBAGENT_SANDBOX__LEASE_TIMEOUT": "5.5"})
    spec, pool = from_settings(s.sandbox)
    assert (spec.backend, spec.pids, spec.network) == ("local", 64, False)
    assert (pool.max_total, pool.lease_timeout) == (2, 5.5)
    with pytest.raises(ConfigError, match="unknown setting 'bogus'"):
        from_settings({"bogus": 1})
    with pytest.raises(ConfigError, match="cannot read"):
        from_settings({"pids": "many"})
