"""Backends and cache tiers by name: a third of each, registered here alone, used from ``%%agent`` and settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from sandbox.test_registry import TempDirBackend  # a backend defined in a test file, not in the package
from shells import Notebook, make_notebook, usage_error

from nbagent.cache import register_tier, unregister_tier
from nbagent.events import CacheHit, ToolFinished
from nbagent.notebook import unregister
from nbagent.sandbox import register_backend, unregister_backend
from nbagent.sandbox.events import SandboxExec
from nbagent.testing import Reply, SimServer


class DictTier:
    """A cache tier in a dict: the three async methods of the tier protocol."""

    def __init__(self, data: dict[str, str]) -> None:
        self.data = data

    async def get(self, key: str) -> str | None:
        return self.data.get(key)

    async def put(self, key: str, value: str, *, ttl: float | None = None) -> None:
        self.data[key] = value

    async def delete(self, key: str) -> None:
        self.data.pop(key, None)


@pytest.fixture
def tempdir(tmp_path: Path) -> Iterator[Path]:
    register_backend("tempdir", lambda: TempDirBackend(tmp_path))
    yield tmp_path
    unregister_backend("tempdir")


async def test_a_backend_registered_after_load_serves_sandbox_flag(nb: Notebook, sim: SimServer,
                                                                   tempdir: Path) -> None:
    sim.script(Reply(tool_calls=[("shell", {"command": "echo from-tempdir"})]), Reply(text="done"))
    await nb.run("%%agent -n sb --sandbox tempdir -o r\nrun it")
    result = await nb.until_done("sb")
    assert result.ok, result
    events = result.events
    execs = [e for e in events if isinstance(e, SandboxExec)]
    assert execs and all(e.backend == "tempdir" for e in execs)
    shell = [e for e in events if isinstance(e, ToolFinished) and e.name == "shell"]
    assert shell and shell[0].ok and "from-tempdir" in shell[0].output_preview
    assert "unknown backend 'nope'" in usage_error(await nb.run("%%agent --sandbox nope\nq"))


def notebook_with_tier(shell: InteractiveShell, sim: SimServer, cache_file: Path) -> Notebook:
    return make_notebook(shell, sim, cache={"tiers": ["memory", "sqlite", "dict"]})


async def test_a_registered_tier_named_in_settings_serves_cache_flag(shell: InteractiveShell, sim: SimServer,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shared: dict[str, str] = {}
    register_tier("dict", lambda: DictTier(shared))
    try:
        monkeypatch.setenv("NBAGENT_CACHE_PATH", str(tmp_path / "first.sqlite3"))
        first = notebook_with_tier(shell, sim, tmp_path / "first.sqlite3")
        try:
            await first.run("%%agent -n a --cache read-write\nremember this")
            assert (await first.until_done("a")).ok
            await first.registry.runtime.response_cache("read-write").flush()
        finally:
            unregister(shell)
            await first.registry.aclose()
        assert any(k.startswith("response:") for k in shared)  # written through to the third tier
        # a new kernel with an empty SQLite file: the answer comes from the third tier
        monkeypatch.setenv("NBAGENT_CACHE_PATH", str(tmp_path / "second.sqlite3"))
        calls = len(sim.history)
        second = notebook_with_tier(shell, sim, tmp_path / "second.sqlite3")
        try:
            await second.run("%%agent -n b --cache read-write\nremember this")
            result = await second.until_done("b")
            assert result.ok
            hits = [e for e in result.events if isinstance(e, CacheHit)]
            assert [h.tier for h in hits] == ["dict"] and len(sim.history) == calls
        finally:
            unregister(shell)
            await second.registry.aclose()
    finally:
        unregister_tier("dict")
