"""Configured API keys never reach the run store, the response cache or any export, whatever their shape.

Three keys that match no known token pattern: one in the environment (``NBAGENT_API_KEY``), one in a profile
of the config file, one given to ``Agent(api_key=...)``. They are protected only because resolving an
endpoint registers every configured key with the redactor. Agents run against the simulated server with the
store and the response and tool caches on; the keys appear in prompts, tool outputs, answers, a run's error
and stop reason, and a replay-mode cache miss. Then the raw database files, the JSON lines export, ``nbagent
history --json`` / ``--export`` and ``nbagent cache export`` are searched for them: no hit.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from nbagent import Agent, Settings, tool
from nbagent.cache import ResponseCache
from nbagent.cli import main as cli
from nbagent.events import CacheHit, EventBus
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.store.redact import REDACTED, default_redactor
from nbagent.testing import SimServer

ENV_KEY = "qv-env-credential-5521"
PROFILE_KEY = "qv-profile-credential-7734"
AGENT_KEY = "qv-agent-credential-9182"
KEYS = (ENV_KEY, PROFILE_KEY, AGENT_KEY)


@tool(cache=True)
def lookup(query: str) -> str:
    """Look something up (and leak the configured keys in the answer)."""
    return f"found {query}: {ENV_KEY} / {PROFILE_KEY}"


class Failing:
    """A model whose request fails with a message quoting a key (the run's error and stop reason)."""

    model_name = "failing"

    async def request(self, req: Any, *, run_id: str | None = None, on_text: Any = None) -> Any:
        raise RuntimeError(f"upstream refused key {AGENT_KEY}")


def files(path: Path) -> bytes:
    """Every byte SQLite wrote for a database: the main file, the WAL and the shared memory."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def test_configured_keys_never_reach_the_store_the_cache_or_exports(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    default_redactor()  # built before the keys exist: it learns them only from resolved endpoints
    config = tmp_path / "config.toml"
    config.write_text(f'[profiles.other]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
                      f'api_key = "{PROFILE_KEY}"\n')
    monkeypatch.setenv("NBAGENT_API_KEY", ENV_KEY)
    monkeypatch.setenv("NBAGENT_CONFIG", str(config))
    db, cache_file = tmp_path / "runs.db", tmp_path / "cache.sqlite3"
    leaky = f"keys {ENV_KEY} {PROFILE_KEY} {AGENT_KEY}"
    with SimServer(api_key=AGENT_KEY) as sim:
        settings = Settings.load(env={**os.environ, "NBAGENT_BASE_URL": sim.url, "NBAGENT_MODEL": "sim"})
        assert settings.api_key == ENV_KEY and settings.profiles["other"].api_key == PROFILE_KEY
        bus = EventBus()
        store = RunStore(db)
        store.attach(bus)
        client = LLMClient(settings, bus=bus)
        cache = ResponseCache(cache_file, bus=bus)
        rt = Runtime(settings, bus=bus, client=client)
        agent = Agent("sim", [lookup], runtime=rt, api_key=AGENT_KEY, cache=cache,
                      tool_cache=cache.tool_cache())
        first = await agent.run(leaky)
        assert first.ok and AGENT_KEY in first.output and ENV_KEY in first.messages[2]["content"]  # untouched
        assert (await agent.run(leaky)).ok  # answered by the cache
        failed = await Agent(Failing(), runtime=Runtime(bus=bus)).run(f"try {PROFILE_KEY}")
        assert failed.status == "error" and AGENT_KEY in failed.stop_reason
        replay = ResponseCache(cache_file, bus=bus, mode="replay")
        missed = await Agent("sim", runtime=Runtime(settings, bus=bus, client=client), api_key=AGENT_KEY,
                             cache=replay).run(f"never recorded {ENV_KEY}")
        assert missed.status == "error" and type(missed.error).__name__ == "ReplayMiss"
        assert ENV_KEY not in str(missed.error) and REDACTED in str(missed.error)
        # a fresh cache on the same file: the stored entries are found by the same keys (only their text changed)
        fresh = ResponseCache(cache_file, bus=bus)
        hits: list[CacheHit] = []
        bus.tap(lambda e: hits.append(e) if isinstance(e, CacheHit) and e.tier == "sqlite" else None)
        again = await Agent("sim", [lookup], runtime=Runtime(settings, bus=bus, client=client), api_key=AGENT_KEY,
                            cache=fresh).run(leaky)
        assert again.ok and hits and REDACTED in again.output
        await client.aclose()
        for c in (cache, replay, fresh):
            await c.aclose()
        assert await asyncio.to_thread(store.flush, 60.0)
        export = tmp_path / "runs.jsonl"
        store.export_jsonl(export)
        stored = store.load(failed.run_id)
        store.close()
    assert stored.info["stop_reason"] == f"RuntimeError: upstream refused key {REDACTED}"
    assert cli(["history", "--json", "--db", str(db)]) == 0
    assert cli(["history", failed.run_id, "--json", "--events", "--messages", "--db", str(db)]) == 0
    assert cli(["history", "--export", str(tmp_path / "cli.jsonl"), "--db", str(db)]) == 0
    assert cli(["cache", "export", str(tmp_path / "cache.jsonl"), "--path", str(cache_file)]) == 0
    printed = capsys.readouterr().out.encode()
    everything = (files(db) + files(cache_file) + export.read_bytes() + (tmp_path / "cli.jsonl").read_bytes()
                  + (tmp_path / "cache.jsonl").read_bytes() + printed)
    for key in KEYS:
        assert key.encode() not in everything, key
    assert REDACTED.encode() in files(db) and REDACTED.encode() in files(cache_file)
    assert b"found" in (tmp_path / "cache.jsonl").read_bytes()  # the tool output is in the cache export
