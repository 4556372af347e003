"""The response cache against the simulated server over real HTTP: tiers, modes, single-flight, streams,
TTL, eviction, persistence, broken files, namespaces, export, metrics and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support import Sleeps, sim_settings

from nbagent.cache import CachedModel, EvictionPolicy, ResponseCache, default_cache_path
from nbagent.cli import main as cli_main
from nbagent.errors import ReplayMiss, ServerError
from nbagent.events import (
    CacheEvicted,
    CacheHit,
    CacheStored,
    CacheWarning,
    Event,
    EventBus,
    LLMRequestStarted,
    LLMResponse,
)
from nbagent.events import CacheMiss as CacheMissEvent
from nbagent.llm import EndpointModel, LLMClient, ModelRequest
from nbagent.metrics import MetricsRegistry
from nbagent.testing import Fault, Reply, SimServer

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """An injected wall clock that moves only when told."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Rig:
    """An endpoint model on the simulated server, a bus that records events, and caches to wrap it."""

    def __init__(self, sim: SimServer, tmp: Path) -> None:
        self.sim = sim
        self.path = tmp / "cache.sqlite3"
        self.bus = EventBus()
        self.events: list[Event] = []
        self.bus.tap(self.events.append)
        self.client = LLMClient(sim_settings(sim), bus=self.bus, sleep=Sleeps(), rng=lambda: 0.5)
        self.model = EndpointModel(self.client, self.client.settings.endpoint())
        self.caches: list[ResponseCache] = []

    def cache(self, **kw: Any) -> ResponseCache:
        kw.setdefault("bus", self.bus)
        c = ResponseCache(kw.pop("path", self.path), **kw)
        self.caches.append(c)
        return c

    def wrap(self, **kw: Any) -> CachedModel:
        return self.cache(**kw).wrap(self.model)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def aclose(self) -> None:
        for c in self.caches:
            await c.aclose()
        await self.client.aclose()


@pytest.fixture
async def rig(sim: SimServer, tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(sim, tmp_path)
    yield r
    await r.aclose()


def ask(text: str = "hello", *, stream: bool = False, **params: Any) -> ModelRequest:
    return ModelRequest(model="sim", messages=[{"role": "user", "content": text}], params=params, stream=stream)


# --- tiers and events -----------------------------------------------------------------------------


async def test_miss_then_memory_hit_with_events(rig: Rig) -> None:
    m = rig.wrap()
    first = await m.request(ask(), run_id="r1")
    second = await m.request(ask(), run_id="r1")
    assert rig.sim.requests == 1
    assert not first.cached and second.cached and second.text == first.text == "Answer to: hello"
    assert second.latency < first.latency and second.usage == first.usage
    [miss] = rig.of(CacheMissEvent)
    [stored] = rig.of(CacheStored)
    [hit] = rig.of(CacheHit)
    assert miss.key == stored.key == hit.key and len(hit.key) == 32 and stored.tier == "sqlite"
    assert hit.tier == "memory" and hit.cache == "response" and hit.run_id == "r1"
    assert hit.tokens_saved == first.usage.total_tokens > 0 and hit.latency_saved == pytest.approx(first.latency)
    cached = [e for e in rig.of(LLMResponse) if e.cached]
    assert len(cached) == 1 and cached[0].input_tokens == cached[0].output_tokens == 0 and cached[0].cost == 0
    assert cached[0].latency == pytest.approx(hit.lookup_seconds) and cached[0].run_id == "r1"
    assert m.model_name == "sim" and m.base_url == rig.sim.url


async def test_persistent_tier_serves_a_new_cache_then_memory(rig: Rig) -> None:
    writer = rig.cache()
    await writer.wrap(rig.model).request(ask())
    await writer.flush()
    m = rig.wrap()
    r1 = await m.request(ask())
    r2 = await m.request(ask())
    assert r1.cached and r2.cached and rig.sim.requests == 1
    assert [h.tier for h in rig.of(CacheHit)] == ["sqlite", "memory"]
    s = m.cache.stats()
    assert s.hits_by_tier["sqlite"] == 1 and s.hits_by_tier["memory"] == 1 and s.hit_rate == 1.0
    assert s.entries == 1 and s.bytes > 0 and s.persistent == "ok"


async def test_memory_only_and_disk_only_caches(rig: Rig, tmp_path: Path) -> None:
    mem = rig.wrap(path=":memory:")
    await mem.request(ask())
    assert (await mem.request(ask())).cached and mem.cache.store is None
    assert mem.cache.stats().persistent == "off"
    disk = rig.wrap(memory_size=0)
    await disk.request(ask("x"))
    await disk.cache.flush()
    assert (await disk.request(ask("x"))).cached
    assert rig.of(CacheHit)[-1].tier == "sqlite" and disk.cache.stats().memory_entries == 0


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown cache mode 'sometimes'"):
        ResponseCache(":memory:", mode="sometimes")
    assert ResponseCache(":memory:", mode="READ_WRITE").mode == "read-write"


# --- modes ----------------------------------------------------------------------------------------


async def test_off_mode_passes_straight_through(rig: Rig) -> None:
    m = rig.wrap(mode="off")
    for _ in range(3):
        assert not (await m.request(ask())).cached
    assert rig.sim.requests == 3 and not rig.of(CacheHit) and not rig.of(CacheMissEvent)


async def test_record_mode_always_calls_and_stores(rig: Rig) -> None:
    m = rig.wrap(mode="record")
    await m.request(ask())
    await m.request(ask())
    assert rig.sim.requests == 2 and len(rig.of(CacheStored)) == 2 and not rig.of(CacheHit)
    m.cache.mode = "replay"
    assert (await m.request(ask())).cached and rig.sim.requests == 2


async def test_replay_mode_never_calls_upstream(rig: Rig) -> None:
    m = rig.wrap(mode="replay")
    with pytest.raises(ReplayMiss) as info:
        await m.request(ModelRequest(model="sim", messages=[{"role": "system", "content": "s"},
                                                            {"role": "user", "content": "never recorded"}]))
    msg = str(info.value)
    key = rig.of(CacheMissEvent)[0].key
    assert "sim" in msg and "user message 'never recorded'" in msg and key in msg
    assert rig.sim.requests == 0 and not rig.of(LLMRequestStarted)


# --- single-flight --------------------------------------------------------------------------------


async def test_single_flight_100_identical_requests_one_upstream_call(rig: Rig) -> None:
    rig.sim.configure(latency=0.05)
    m = rig.wrap()
    results = await asyncio.gather(*(m.request(ask()) for _ in range(100)))
    assert rig.sim.requests == 1
    assert {r.text for r in results} == {"Answer to: hello"}
    assert sum(not r.cached for r in results) == 1
    s = m.cache.stats()
    assert s.misses == 1 and s.hits_by_tier["inflight"] == 99 and s.hit_rate == pytest.approx(0.99)


async def test_single_flight_failure_reaches_every_waiter_and_is_not_cached(rig: Rig) -> None:
    rig.sim.configure(latency=0.05)
    rig.sim.inject(Fault("400"))
    m = rig.wrap()
    results = await asyncio.gather(*(m.request(ask()) for _ in range(10)), return_exceptions=True)
    assert rig.sim.requests == 1
    assert all(type(r).__name__ == "BadRequest" for r in results)
    assert not rig.of(CacheStored) and m.cache.stats().memory_entries == 0
    assert not (await m.request(ask())).cached and rig.sim.requests == 2


async def test_a_cancelled_leader_hands_over_to_a_waiter(rig: Rig) -> None:
    rig.sim.configure(latency=0.2)
    m = rig.wrap()
    leader = asyncio.create_task(m.request(ask()))
    while not m.cache._inflight:
        await asyncio.sleep(0.005)
    follower = asyncio.create_task(m.request(ask()))
    await asyncio.sleep(0.01)
    leader.cancel()
    resp = await follower
    assert resp.text == "Answer to: hello" and not resp.cached
    assert leader.cancelled() and not m.cache._inflight


async def test_failed_upstream_with_retries_is_not_stored(rig: Rig) -> None:
    rig.sim.inject(*[Fault("500")] * 10)
    m = rig.wrap()
    with pytest.raises(ServerError):
        await m.request(ask())
    assert not rig.of(CacheStored)


# --- streams --------------------------------------------------------------------------------------


async def test_stream_is_replayed_with_the_same_chunks(rig: Rig) -> None:
    rig.sim.script(Reply(text="one two three four five"))
    m = rig.wrap()
    live: list[str] = []
    first = await m.request(ask(stream=True), on_text=live.append)
    assert len(live) > 1 and first.chunks == live
    again: list[str] = []
    second = await m.request(ask(stream=True), on_text=again.append)
    assert second.cached and again == live and second.chunks == live and rig.sim.requests == 1
    # the same request without streaming shares the entry: no key for the stream flag
    plain = await m.request(ask())
    assert plain.cached and plain.text == "one two three four five" and plain.chunks is None
    # and a persistent-tier hit keeps the chunks too
    await m.cache.flush()
    fresh: list[str] = []
    third = await rig.wrap(memory_size=0).request(ask(stream=True), on_text=fresh.append)
    assert third.cached and fresh == live


async def test_a_non_streamed_entry_serves_a_stream_as_one_chunk(rig: Rig) -> None:
    m = rig.wrap()
    await m.request(ask())
    got: list[str] = []
    resp = await m.request(ask(stream=True), on_text=got.append)
    assert resp.cached and got == ["Answer to: hello"]


async def test_async_on_text_callbacks_are_awaited(rig: Rig) -> None:
    m = rig.wrap()
    await m.request(ask())
    got: list[str] = []

    async def on_text(chunk: str) -> None:
        got.append(chunk)

    await m.request(ask(stream=True), on_text=on_text)
    assert got == ["Answer to: hello"]


# --- TTL and eviction -----------------------------------------------------------------------------


async def test_ttl_expiry_with_an_injected_clock(rig: Rig) -> None:
    clock = Clock()
    m = rig.wrap(ttl=60, clock=clock)
    await m.request(ask())
    clock.t += 30
    assert (await m.request(ask())).cached
    await m.cache.flush()
    other = rig.wrap(ttl=60, clock=clock, memory_size=0)
    assert (await other.request(ask())).cached  # still alive on disk at 30 s
    clock.t += 31
    assert not (await m.request(ask())).cached and rig.sim.requests == 2
    assert any(e.reason == "ttl" and e.tier == "memory" for e in rig.of(CacheEvicted))
    await m.cache.flush()
    clock.t += 61
    assert not (await other.request(ask())).cached
    assert any(e.reason == "ttl" and e.tier == "sqlite" for e in rig.of(CacheEvicted))


async def test_memory_tier_is_a_bounded_lru(rig: Rig) -> None:
    m = rig.wrap(path=":memory:", memory_size=2)
    for q in ("a", "b", "c"):
        await m.request(ask(q))
    evicted = [e for e in rig.of(CacheEvicted) if e.tier == "memory"]
    assert len(evicted) == 1 and evicted[0].reason == "size"
    assert m.cache.stats().memory_entries == 2
    assert not (await m.request(ask("a"))).cached  # the least recently used went
    assert (await m.request(ask("c"))).cached


def test_eviction_score_weighs_savings_use_and_age() -> None:
    p = EvictionPolicy()
    assert p.score(2.0, 100, 0, 0) > p.score(0.1, 100, 0, 0)  # slower call saves more
    assert p.score(0.1, 5000, 0, 0) > p.score(0.1, 10, 0, 0)  # more tokens saves more
    assert p.score(0.1, 10, 5, 0) > p.score(0.1, 10, 0, 0)  # used entries are kept
    assert p.score(0.1, 10, 0, 0) > p.score(0.1, 10, 0, 86_400)  # idle entries fade


async def test_a_high_value_entry_outlives_cheap_newer_ones(rig: Rig) -> None:
    clock = Clock()
    m = rig.wrap(max_entries=2, memory_size=1, clock=clock)
    rig.sim.configure(latency=0.3)
    await m.request(ask("expensive"))  # oldest: plain LRU would evict it first
    rig.sim.configure(latency=0.0)
    for q in ("cheap-1", "cheap-2", "cheap-3"):
        clock.t += 1
        await m.request(ask(q))
        await m.cache.flush()
    evicted = [e for e in rig.of(CacheEvicted) if e.tier == "sqlite"]
    assert len(evicted) == 2 and all(e.reason == "size" for e in evicted)
    assert m.cache.stats().entries == 2
    calls = rig.sim.requests
    assert (await rig.wrap(memory_size=0, mode="replay").request(ask("expensive"))).cached
    assert rig.sim.requests == calls
    # left idle for weeks, even the expensive entry gives way to fresh ones
    clock.t += 30 * 86_400
    for q in ("cheap-4", "cheap-5"):
        clock.t += 1
        await m.request(ask(q))
        await m.cache.flush()
    with pytest.raises(ReplayMiss):
        await rig.wrap(memory_size=0, mode="replay").request(ask("expensive"))


async def test_byte_limit_is_enforced(rig: Rig) -> None:
    m = rig.wrap(max_bytes=1500, memory_size=1)
    for i in range(12):
        await m.request(ask(f"question number {i}"))
    await m.cache.flush()
    s = m.cache.stats()
    assert 0 < s.bytes <= 1500 and s.evictions > 0 and s.entries < 12


# --- persistence and broken files -----------------------------------------------------------------


def test_entries_persist_across_processes(sim: SimServer, tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    script = textwrap.dedent(f"""
        import asyncio
        from nbagent.cache import ResponseCache
        from nbagent.config import Settings
        from nbagent.llm import EndpointModel, LLMClient, ModelRequest

        async def main():
            settings = Settings.load(env={{"NBAGENT_BASE_URL": {sim.url!r}, "NBAGENT_MODEL": "sim"}})
            client = LLMClient(settings)
            cache = ResponseCache({str(path)!r}, namespace="nb1")
            model = cache.wrap(EndpointModel(client, settings.endpoint()))
            resp = await model.request(ModelRequest(model="sim", messages=[{{"role": "user", "content": "persist"}}]))
            print(resp.text)
            await cache.aclose()
            await client.aclose()

        asyncio.run(main())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "Answer to: persist" and sim.requests == 1

    async def read() -> tuple[str, bool]:
        settings = sim_settings(sim)
        client = LLMClient(settings, bus=EventBus())
        cache = ResponseCache(path, namespace="nb1", mode="replay")
        resp = await cache.wrap(EndpointModel(client, settings.endpoint())).request(ask("persist"))
        await cache.aclose()
        await client.aclose()
        return resp.text, resp.cached

    assert asyncio.run(read()) == ("Answer to: persist", True)
    assert sim.requests == 1


async def test_a_corrupt_file_never_breaks_a_call(rig: Rig) -> None:
    rig.path.write_bytes(b"this is not a database, just garbage " * 200)
    m = rig.wrap()
    r1 = await m.request(ask())
    r2 = await m.request(ask())
    assert r1.text == "Answer to: hello" and r2.cached  # the memory tier still works
    [warning] = rig.of(CacheWarning)
    assert "cannot be used" in warning.message and str(rig.path) in warning.message
    s = m.cache.stats()
    assert s.persistent == "broken" and s.warnings == 1 and s.hits_by_tier["memory"] == 1
    # clearing every namespace replaces the broken file with a fresh one
    await m.cache.clear("*")
    assert m.cache.store is not None and m.cache.store.state == "ok"
    await m.request(ask("after reset"))
    await m.cache.flush()
    assert m.cache.stats().entries == 1


def scribble(path: Path) -> None:
    """Overwrite the database and its WAL with random bytes."""
    for suffix in ("", "-wal"):
        p = Path(f"{path}{suffix}")
        if p.exists():
            p.write_bytes(os.urandom(8192))


async def test_a_file_corrupted_while_open_never_breaks_a_call(rig: Rig) -> None:
    m = rig.wrap(memory_size=0)
    await m.request(ask("one"))
    await m.cache.flush()
    scribble(rig.path)
    # SQLite may go on from its open file and page cache or notice the damage: either way calls succeed
    for q in ("two", "three", "two"):
        assert (await m.request(ask(q))).text == f"Answer to: {q}"
    await m.cache.flush()
    # a cache opening the damaged file afterwards warns and works from memory
    fresh = rig.wrap()
    assert (await fresh.request(ask("four"))).text == "Answer to: four"
    assert (await fresh.request(ask("four"))).cached
    assert fresh.cache.stats().warnings == 1 and fresh.cache.stats().persistent == "broken"


async def test_a_file_locked_by_another_process_never_breaks_a_call(rig: Rig) -> None:
    holder = sqlite3.connect(rig.path, isolation_level=None)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN EXCLUSIVE")
    clock = Clock()
    try:
        m = rig.wrap(clock=clock)
        assert (await m.request(ask())).text == "Answer to: hello"
        assert (await m.request(ask())).cached
        await m.cache.flush()  # the queued write meets the lock too
        assert any("locked" in w.message for w in rig.of(CacheWarning))
        assert m.cache.stats().persistent == "locked"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    clock.t += 31  # past retry_after: the file is used again
    await m.request(ask("later"))
    await m.cache.flush()
    assert m.cache.stats().persistent == "ok" and m.cache.stats().entries == 1


async def test_a_write_lock_taken_after_opening_never_breaks_a_call(rig: Rig) -> None:
    m = rig.wrap()
    await m.request(ask("first"))
    await m.cache.flush()
    holder = sqlite3.connect(rig.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert (await m.request(ask("second"))).text == "Answer to: second"
        await m.cache.flush()
        assert any("locked" in w.message for w in rig.of(CacheWarning))
        assert (await m.request(ask("second"))).cached
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# --- namespaces, export, metrics --------------------------------------------------------------------


async def test_namespaces_are_separate_and_cleared_separately(rig: Rig) -> None:
    a = rig.wrap(namespace="a")
    b = rig.wrap(namespace="b")
    await a.request(ask())
    await b.request(ask())
    assert rig.sim.requests == 2
    await a.cache.flush()
    await b.cache.flush()
    assert await a.cache.clear() == 1
    assert not (await a.request(ask("other"))).cached
    with pytest.raises(ReplayMiss):
        await rig.wrap(namespace="a", mode="replay").request(ask())
    assert (await rig.wrap(namespace="b", mode="replay").request(ask())).cached
    await b.cache.flush()
    assert await b.cache.clear("*") == 2  # a's "other" and b's entry


async def test_export_writes_json_lines(rig: Rig, tmp_path: Path) -> None:
    m = rig.wrap(namespace="nb")
    await m.request(ask("one"))
    await m.request(ask("two", stream=True))
    out = tmp_path / "export.jsonl"
    assert await m.cache.export(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["value"]["text"] for r in rows} == {"Answer to: one", "Answer to: two"}
    assert all(r["namespace"] == "nb" and r["kind"] == "response" and len(r["key"]) == 32 for r in rows)
    assert any(r["value"]["chunks"] for r in rows) and "user message 'one'" in rows[0]["description"]
    mem = rig.wrap(path=":memory:")
    await mem.request(ask("m"))
    assert await mem.cache.export(tmp_path / "mem.jsonl") == 1


async def test_metrics_registry_agrees_with_stats(rig: Rig) -> None:
    reg = MetricsRegistry()
    reg.attach(rig.bus)
    m = rig.wrap()
    for q in ("a", "b", "a", "a", "c", "b"):
        await m.request(ask(q))
    s = m.cache.stats()
    assert s.hits == 3 and s.misses == 3 and reg.hit_rate("response") == s.hit_rate == 0.5
    assert reg.counter("cache.response.hits.memory").value == 3
    assert reg.counter("cache.response.tokens_saved").value == s.tokens_saved > 0
    assert reg.counter("llm.cached").value == 3 and set(s.lookup_p50) == {"memory", "miss"}
    assert "hit rate 50.0%" in str(s) and s.to_dict()["hits_by_tier"]["memory"] == 3


def test_default_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert default_cache_path() == Path(os.environ["NBAGENT_HOME"]) / "cache.sqlite3"
    monkeypatch.setenv("NBAGENT_CACHE_PATH", str(tmp_path / "elsewhere.db"))
    assert default_cache_path() == tmp_path / "elsewhere.db"
    cache = ResponseCache()
    assert cache.store is not None and cache.store.path == tmp_path / "elsewhere.db"
    cache.store.close()


# --- CLI ------------------------------------------------------------------------------------------


async def _fill(rig: Rig) -> None:
    for ns in ("nb1", "nb2"):
        m = rig.wrap(namespace=ns)
        await m.request(ask(ns))
        await m.request(ask(ns))
        await m.cache.flush()


async def test_cli_stats_clear_export(rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    await _fill(rig)
    monkeypatch.setenv("NBAGENT_CACHE_PATH", str(rig.path))
    assert await asyncio.to_thread(cli_main, ["cache", "stats", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["entries"] == 2 and [n["namespace"] for n in data["namespaces"]] == ["nb1", "nb2"]
    assert all(n["hits"] == 1 and n["tokens_saved"] > 0 for n in data["namespaces"])
    assert await asyncio.to_thread(cli_main, ["cache", "stats"]) == 0
    assert "nb1" in capsys.readouterr().out
    out = tmp_path / "all.jsonl"
    assert await asyncio.to_thread(cli_main, ["cache", "export", str(out), "--namespace", "nb2"]) == 0
    assert len(out.read_text().splitlines()) == 1
    assert await asyncio.to_thread(cli_main, ["cache", "clear", "--namespace", "nb1"]) == 0
    assert "deleted 1 entries" in capsys.readouterr().out
    assert await asyncio.to_thread(cli_main, ["cache", "stats", "--json", "--path", str(rig.path)]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 1


def test_cli_on_missing_and_corrupt_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.sqlite3"
    assert cli_main(["cache", "stats", "--path", str(path)]) == 0
    assert "no cache file" in capsys.readouterr().out and not path.exists()
    path.write_bytes(b"garbage" * 100)
    assert cli_main(["cache", "stats", "--path", str(path)]) == 1
    assert "cannot be used" in capsys.readouterr().err
    assert cli_main(["cache", "clear", "--all", "--path", str(path)]) == 0
    assert "replaced" in capsys.readouterr().out
    assert cli_main(["cache", "stats", "--json", "--path", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 0
    assert cli_main(["cache"]) == 2


async def test_writes_by_another_connection_are_seen(rig: Rig) -> None:
    reader = rig.wrap(memory_size=0)
    writer = rig.wrap(memory_size=0)
    assert not (await reader.request(ask("early"))).cached  # the reader now knows the file's keys
    await writer.request(ask("shared"))
    await writer.cache.flush()
    await reader.cache.flush()  # any job of the reader's worker notices the other connection's commit
    assert (await reader.request(ask("shared"))).cached and rig.sim.requests == 2
    await reader.cache.flush()
    store = reader.cache.store
    assert store is not None and store.known_absent("response", "default", "0" * 32)
    assert not store.known_absent("response", "default", rig.of(CacheStored)[-1].key)
