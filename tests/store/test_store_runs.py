"""The run store: what it keeps of real runs, how it is read back, filtered, exported and replayed."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import sim_settings

import nbagent.store as store_api
from nbagent import Agent, tool
from nbagent.events import EventBus, LLMResponse, RunFinished, RunStarted, StepStarted, ToolFinished, default_bus
from nbagent.llm import LLMClient
from nbagent.metrics import MetricsRegistry
from nbagent.record import BREAKDOWN_KEYS
from nbagent.runtime import Runtime
from nbagent.store import RunStore, StoredRun
from nbagent.store.codec import event_from_dict
from nbagent.store.migrations import MIGRATIONS, applied, migrate
from nbagent.testing import SimServer

PROJECT = str(Path(__file__).resolve().parents[2])


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


@pytest.fixture(autouse=True, params=["thread", "process"])
def writer(request: pytest.FixtureRequest, _nbagent_home: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs with the writer thread and with the writer process."""
    monkeypatch.setenv("NBAGENT_STORE_WRITER", request.param)
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    s = RunStore(tmp_path / "runs.db")
    yield s
    s.close()


@pytest.fixture
async def agent(sim: SimServer) -> AsyncIterator[Agent]:
    settings = sim_settings(sim)
    bus = EventBus()
    client = LLMClient(settings, bus=bus)
    yield Agent("sim", [lookup], runtime=Runtime(settings, bus=bus, client=client))
    await client.aclose()


def wait_until(cond, what: str, limit: float = 20.0) -> None:
    """Poll ``cond`` (a generous deadline only to fail instead of hanging; never a timing assertion)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


async def test_a_run_is_kept_whole(store: RunStore, agent: Agent, writer: str) -> None:
    store.attach(agent.bus)
    result = await agent.run("what is x?", name="first")
    await store.aflush()
    rows = store.runs()
    assert len(rows) == 1
    row = rows[0]
    assert row["run_id"] == result.run_id and row["name"] == "first" and row["status"] == "ok"
    assert row["stop_reason"] == "stop" and row["steps"] == result.usage.steps == 2
    assert row["input_tokens"] == result.usage.tokens.input_tokens and row["output"] == result.output
    assert row["prompt"] == "what is x?" and row["model"] == "sim" and row["dropped"] == 0
    assert set(row["timings"]) == {"total", "model", "tools", "startup", "overhead"}
    assert row["started"] <= row["finished"]

    stored = store.events(result.run_id)
    assert [e["kind"] for e in stored] == [e.kind for e in result.events]
    assert stored[0]["ts"] == result.events[0].ts and stored[0]["run_id"] == result.run_id
    typed = store.events(result.run_id, typed=True)
    assert typed == result.events  # every field of every event round-trips
    assert store.messages(result.run_id) == result.messages
    assert store.events(result.run_id, kinds=["tool_finished"])[0]["output_preview"] == "value-of-x"
    stats = store.stats()
    assert stats["written"] == stats["enqueued"] == len(result.events) and stats["dropped"] == 0
    assert stats["writer"] == writer and (stats["writer_pid"] is not None) == (writer == "process")


async def test_load_to_result_and_replay_redraw_the_same_figures(store: RunStore, agent: Agent) -> None:
    store.attach(agent.bus)
    result = await agent.run("q")
    await store.aflush()
    run = store.load(result.run_id[:6])  # a unique prefix is enough
    assert isinstance(run, StoredRun) and run.run_id == result.run_id
    assert run.metrics().snapshot() == result.metrics().snapshot()
    again = run.to_result()
    assert again.output == result.output and again.status == "ok" and again.usage.steps == result.usage.steps
    assert again.usage.requests == result.usage.requests and again.usage.tool_calls == 1
    assert again.messages == result.messages and again.summary()
    bus = EventBus()
    reg = MetricsRegistry()
    reg.attach(bus)
    assert store.replay(result.run_id, bus) == len(result.events)
    assert reg.snapshot() == result.metrics().snapshot()
    b = run.breakdown()  # the live record's breakdown, folded again from the stored events
    assert b == result.record.breakdown()
    assert set(b) == set(BREAKDOWN_KEYS) and b["tools"] > 0 and b["model_wait"] > 0
    assert sum(b.values()) == pytest.approx(result.record.duration)
    with pytest.raises(KeyError):
        store.load("nope")


async def test_many_concurrent_runs_all_kept(store: RunStore, agent: Agent) -> None:
    store.attach(agent.bus)
    results = await asyncio.gather(*(agent.run(f"q{i}", name=f"many-{i}") for i in range(40)))
    await store.aflush()
    assert len(store.runs(limit=None)) == 40
    # every run's events (the store also keeps session events, such as the client's concurrency changes)
    assert sum(store.count_events(r.run_id) for r in results) == sum(len(r.events) for r in results)
    assert store.stats()["dropped"] == 0


def _emit_run(bus: EventBus, rid: str, name: str, status: str, ts: float) -> None:
    bus.emit(RunStarted(run_id=rid, name=name, model="m", prompt="p", ts=ts))
    bus.emit(StepStarted(run_id=rid, step=1, ts=ts + 0.1))
    bus.emit(RunFinished(run_id=rid, status=status, stop_reason=status, duration=1.0, ts=ts + 1.0))


def test_filters_by_name_status_and_time(store: RunStore) -> None:
    bus = EventBus()
    store.attach(bus)
    now = time.time()
    _emit_run(bus, "r1", "summarize-a", "ok", now - 3 * 86400)
    _emit_run(bus, "r2", "summarize-b", "error", now - 3600)
    _emit_run(bus, "r3", "translate", "ok", now - 60)
    ids = lambda **f: [r["run_id"] for r in store.runs(**f)]  # noqa: E731
    assert ids() == ["r3", "r2", "r1"]  # newest first
    assert ids(name="summarize") == ["r2", "r1"]
    assert ids(name="*-a") == ["r1"]
    assert ids(status="ok") == ["r3", "r1"]
    assert ids(status=["error", "ok"], name="summ") == ["r2", "r1"]
    assert ids(since="2h") == ["r3", "r2"]
    assert ids(until="2h") == ["r1"]
    assert ids(since=now - 120, until=now) == ["r3"]
    assert ids(limit=1) == ["r3"] and ids(limit=1, offset=1) == ["r2"]
    with pytest.raises(ValueError):
        store.runs(since="yesterday-ish")
    df = store.to_dataframe(status="ok")
    assert list(df["run_id"]) == ["r3", "r1"] and str(df["started"].dtype).startswith("datetime64")
    ev = store.events_dataframe("r2")
    assert list(ev["kind"]) == ["run_started", "step_started", "run_finished"]
    assert store.prune(older_than="1d") == 1 and ids() == ["r3", "r2"] and store.events("r1") == []


def test_a_run_without_an_end_from_a_dead_process_is_interrupted(store: RunStore, tmp_path: Path) -> None:
    bus = EventBus()
    store.attach(bus)
    bus.emit(RunStarted(run_id="mine", name="live"))
    store.flush()
    assert store.run("mine")["status"] == "running"  # this process is alive
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE runs SET pid = ? WHERE run_id = 'mine'", (dead_pid,))
    assert store.run("mine")["status"] == "interrupted"
    assert [r["run_id"] for r in store.runs(status="interrupted")] == ["mine"]
    assert store.runs(status="running") == []


async def test_export_jsonl(store: RunStore, agent: Agent, tmp_path: Path) -> None:
    store.attach(agent.bus)
    r1 = await agent.run("one", name="exp-1")
    r2 = await agent.run("two", name="exp-2")
    out = tmp_path / "runs.jsonl"
    n = store.export_jsonl(out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(lines) == 2 + len(r1.events) + len(r2.events) + len(r1.messages) + len(r2.messages)
    runs = [x for x in lines if x["record"] == "run"]
    assert [x["run_id"] for x in runs] == [r2.run_id, r1.run_id]
    events = [x for x in lines if x["record"] == "event" and x["run_id"] == r1.run_id]
    assert [e["kind"] for e in events] == [e.kind for e in r1.events]
    assert isinstance(event_from_dict({k: v for k, v in events[0].items() if k != "record"}), RunStarted)
    msgs = [x for x in lines if x["record"] == "message" and x["run_id"] == r1.run_id]
    assert [m["role"] for m in msgs] == [m["role"] for m in r1.messages]
    n2 = store.export_jsonl(tmp_path / "one.jsonl", run_ids=[r1.run_id], events=False, messages=False)
    assert n2 == 1


async def test_run_end_flushes_without_waiting_for_the_interval(tmp_path: Path, agent: Agent) -> None:
    s = RunStore(tmp_path / "slow.db", flush_interval=3600, batch_size=10_000)
    s.attach(agent.bus)
    result = await agent.run("q")
    # no flush() call: the RunFinished event itself woke the writer
    await asyncio.to_thread(wait_until, lambda: (s.run(result.run_id, flush=False) or {}).get("status") == "ok",
                            "the finished run to be committed")
    await asyncio.to_thread(wait_until, lambda: s.messages(result.run_id, flush=False) == result.messages,
                            "the run's messages to be committed")
    s.close()


def test_batches_commit_by_count(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "count.db", flush_interval=3600, batch_size=20)
    bus = EventBus()
    s.attach(bus)
    for i in range(20):
        bus.emit(StepStarted(run_id="r", step=i))
    wait_until(lambda: s.count_events(flush=False) == 20, "a full batch to be committed")
    s.close()
    assert s.commits >= 1


def test_queue_full_drops_are_counted_never_silent(tmp_path: Path) -> None:
    # the writer sleeps (huge interval, batches never fill): the 10-slot queue overflows
    s = RunStore(tmp_path / "drop.db", queue_size=10, batch_size=1000, flush_interval=3600, on_full="drop")
    bus = EventBus()
    s.attach(bus)
    bus.emit(RunStarted(run_id="r", name="overflow"))
    for i in range(99):
        bus.emit(StepStarted(run_id="r", step=i))
    assert s.stats()["dropped"] == 90 and s.enqueued == 10
    s.flush()
    assert s.count_events("r") == 10 and s.run("r")["dropped"] == 90
    s.close()


def test_queue_full_waits_for_the_writer(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "wait.db", queue_size=10, batch_size=1000, flush_interval=3600, on_full="wait")
    bus = EventBus()
    s.attach(bus)
    for i in range(500):
        bus.emit(StepStarted(run_id="r", step=i))
    s.flush()
    st = s.stats()
    assert st["dropped"] == 0 and st["waits"] >= 1 and s.count_events("r") == 500
    s.close()


def test_unwritable_path_counts_drops_and_reads_raise(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    s = RunStore(blocker / "runs.db")
    bus = EventBus()
    s.attach(bus)
    bus.emit(StepStarted(run_id="r", step=1))  # never raises into the run
    with pytest.raises(OSError):
        s.runs()
    s.close()
    st = s.stats()
    assert st["error"] and st["dropped"] == 1


def test_interpreter_exit_flushes(tmp_path: Path) -> None:
    db = tmp_path / "exit.db"
    code = (
        "from nbagent.events import EventBus, StepStarted\n"
        "from nbagent.store import RunStore\n"
        f"s = RunStore({str(db)!r}, flush_interval=3600, batch_size=100000)\n"
        "bus = EventBus(); s.attach(bus)\n"
        "for i in range(1234): bus.emit(StepStarted(run_id='r', step=i))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT)  # NBAGENT_STORE_WRITER is inherited
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT sum(n) FROM events").fetchone()[0] == 1234


def test_migrations_are_append_only_and_upgrade_old_databases(tmp_path: Path) -> None:
    names = [n for n, _ in MIGRATIONS]
    assert len(set(names)) == len(names)
    assert [int(n[1:4]) for n in names] == list(range(1, len(names) + 1))
    assert all(n[0] == "m" and n[4] == "_" for n in names)
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    assert migrate(conn, MIGRATIONS[:1]) == [names[0]]  # a database from the first release
    conn.execute("INSERT INTO runs (run_id, name, started) VALUES ('old', 'legacy', 1.0)")
    conn.close()
    s = RunStore(db)
    assert s.run("old")["name"] == "legacy" and s.run("old")["dropped"] == 0
    s.close()
    conn = sqlite3.connect(db, isolation_level=None)
    assert applied(conn) == names and migrate(conn) == []
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_default_path_follows_the_home_and_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBAGENT_HOME", str(tmp_path / "home"))
    assert store_api.default_path() == tmp_path / "home" / "runs.db"
    monkeypatch.setenv("NBAGENT_STORE_PATH", str(tmp_path / "elsewhere.db"))
    assert store_api.default_path() == tmp_path / "elsewhere.db"


async def test_enable_keeps_the_default_bus_and_history_shows_it(sim: SimServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    s = store_api.enable()
    try:
        assert s is not None and store_api.active_store() is s and store_api.enable() is s
        settings = sim_settings(sim)
        client = LLMClient(settings, bus=default_bus())
        agent = Agent("sim", [lookup], runtime=Runtime(settings, bus=default_bus(), client=client))
        result = await agent.run("kept by default", name="hist-1")
        await client.aclose()
        df = store_api.history(name="hist")
        assert list(df["run_id"]) == [result.run_id] and df["status"][0] == "ok"
        assert store_api.load_run(result.run_id).output == result.output
    finally:
        store_api.disable()
    assert store_api.active_store() is None
    monkeypatch.setenv("NBAGENT_STORE", "off")
    assert store_api.enable() is None


def test_events_are_stored_as_json_segments_per_run(store: RunStore) -> None:
    bus = EventBus()
    store.attach(bus)
    bus.emit(LLMResponse(run_id="r", request_id="q", latency=0.5, ttft=None, finish_reason="stop"))
    bus.emit(ToolFinished(run_id="r", name="t", error="boom", ok=False))
    bus.emit(StepStarted(run_id="other", step=3))
    store.flush()
    with sqlite3.connect(store.path) as conn:
        rows = conn.execute("SELECT run_id, n, data FROM events ORDER BY id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [("r", 2), ("other", 1)]  # one row per run per batch
    first, second = json.loads(rows[0][2])  # [schema id, [run_id, ts, values...]]
    with sqlite3.connect(store.path) as conn:
        schemas = {i: (k, json.loads(f)) for i, k, f in conn.execute("SELECT id, kind, fields FROM event_schemas")}
    kind, names = schemas[first[0]]
    assert kind == "llm_response" and first[1][0] == "r"
    assert dict(zip(names, first[1][2:], strict=True))["latency"] == 0.5
    kind, names = schemas[second[0]]
    assert kind == "tool_finished" and dict(zip(names, second[1][2:], strict=True))["error"] == "boom"
    assert store.count_events() == 3 and store.count_events("r") == 2
    assert [e["kind"] for e in store.events("r")] == ["llm_response", "tool_finished"]


def test_segments_of_objects_from_older_databases_still_load(store: RunStore) -> None:
    old = [{"kind": "run_started", "ts": 1.0, "name": "legacy", "model": "m", "prompt": "p"},
           {"kind": "llm_response", "ts": 2.0, "request_id": "q", "latency": 0.25},
           {"kind": "some_unknown_kind", "ts": 3.0, "x": 1}]
    store.flush()
    with sqlite3.connect(store.path) as conn:
        conn.execute("INSERT INTO events (run_id, ts, n, data) VALUES ('old', 1.0, 3, ?)", (json.dumps(old),))
        conn.execute("INSERT INTO runs (run_id, name, started) VALUES ('old', 'legacy', 1.0)")
    bus = EventBus()
    store.attach(bus)
    bus.emit(StepStarted(run_id="old", step=7))  # a newer segment after the old one
    events = store.load("old").events
    assert isinstance(events[0], RunStarted) and events[0].name == "legacy" and events[0].run_id == "old"
    assert isinstance(events[1], LLMResponse) and events[1].latency == 0.25 and events[1].ts == 2.0
    assert events[2] == {"kind": "some_unknown_kind", "run_id": "old", "ts": 3.0, "x": 1}
    assert isinstance(events[3], StepStarted) and events[3].step == 7
    assert store.count_events("old") == 4
