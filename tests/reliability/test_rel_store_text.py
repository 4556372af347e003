"""One bad value costs nothing else: a tool output SQLite cannot encode beside 80 normal runs, in both writers.

``os.fsdecode`` turns bytes that are not UTF-8 (a file name, say) into lone surrogates, which SQLite's UTF-8
cannot take. Such text is stored with the character backslash-escaped, and a value that fails for another
reason loses only its own event; the log says what failed in one short line, never the batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from nbagent import Agent, tool
from nbagent.events import EventBus, RunFinished, RunStarted, StepStarted
from nbagent.llm.types import ModelResponse, TokenUsage, ToolCall
from nbagent.runtime import Runtime
from nbagent.store import RunStore

BAD = os.fsdecode(b"name-\xff")  # "name-\udcff"
ESCAPED = "name-\\udcff"


class OneToolCall:
    """A model that calls the agent's tool once, then answers with what the tool said."""

    model_name = "one-tool-call"

    async def request(self, req: Any, *, run_id: str | None = None, on_text: Any = None) -> ModelResponse:
        last = req.messages[-1]
        if last.get("role") == "tool":
            return ModelResponse(text=f"the tool said {last['content']}", finish_reason="stop",
                                 usage=TokenUsage(20, 5, 0))
        name = req.tools[0]["function"]["name"]
        return ModelResponse(text="", tool_calls=[ToolCall("call_1", name, "{}")], finish_reason="tool_calls",
                             usage=TokenUsage(10, 3, 0))


@tool
def list_files() -> str:
    """A directory listing with a name that is not UTF-8."""
    return BAD


@tool
def greet() -> str:
    """A greeting."""
    return "hello"


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_lone_surrogate_beside_80_runs_drops_nothing(tmp_path: Path, writer: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    store = RunStore(tmp_path / "runs.db", writer=writer)
    if writer == "process":  # the writer process is ready before the runs: the whole burst goes through it
        bus.tap(store.record)
        bus.emit(RunStarted(run_id="warm-up"))
        assert await asyncio.to_thread(store.flush, 60.0)
        bus = EventBus()
    store.attach(bus)
    bad = Agent(OneToolCall(), [list_files], runtime=Runtime(bus=bus))
    good = Agent(OneToolCall(), [greet], runtime=Runtime(bus=bus))
    with caplog.at_level(logging.INFO, logger="nbagent"):
        results = await asyncio.gather(bad.run("list the files"), *(good.run(f"greet {i}") for i in range(80)))
        assert await asyncio.to_thread(store.flush, 60.0)
    st = store.stats()
    assert st["writer"] == writer
    assert all(r.ok for r in results)
    assert st["dropped"] == 0 and st["write_errors"] == 0 and st["written"] == st["enqueued"]
    for r in results:  # every run, its events and messages are stored
        stored = store.load(r.run_id)
        assert stored.status == "ok" and len(stored.events) == len(r.events)
        assert stored.messages and stored.output == r.output.replace(BAD, ESCAPED)
    kept = store.load(results[0].run_id)
    assert kept.output == f"the tool said {ESCAPED}"
    assert kept.messages[-2]["content"] == ESCAPED
    finished = [e for e in kept.events if e.kind == "tool_finished"]
    assert finished[0].output_preview == ESCAPED
    store.close()
    # nothing of the store's (an earlier test's unclosed HTTP pool, collected now, is asyncio's, not ours)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("nbagent")]


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_value_sqlite_refuses_costs_only_its_own_event(tmp_path: Path, writer: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    store = RunStore(tmp_path / "runs.db", writer=writer, flush_interval=60.0, batch_size=10_000)
    bus = EventBus()
    bus.tap(store.record)
    if writer == "process":
        bus.emit(RunStarted(run_id="warm-up"))
        assert await asyncio.to_thread(store.flush, 60.0)
    with caplog.at_level(logging.ERROR, logger="nbagent.store"):
        for i in range(40):  # one batch: the reads below flush it
            rid = f"r{i}"
            bus.emit(RunStarted(run_id=rid, prompt=BAD if i == 7 else "fine"))
            bus.emit(StepStarted(run_id=rid, step=1))
            # 2**70 does not fit SQLite's 64-bit integers: the run row of r13's end cannot be written
            bus.emit(RunFinished(run_id=rid, status="ok", steps=2**70 if i == 13 else 1, stop_reason="stop"))
        assert await asyncio.to_thread(store.flush, 60.0)
    st = store.stats()
    assert st["dropped"] == 1 and st["write_errors"] == 1  # r13's RunFinished, and nothing else
    rows = {r["run_id"]: r for r in store.runs(limit=None)}
    assert all(rows[f"r{i}"]["status"] == "ok" for i in range(40) if i != 13)
    assert rows["r13"]["status"] == "running" and rows["r13"]["dropped"] == 1
    assert rows["r7"]["prompt"] == ESCAPED
    assert store.count_events() == 40 * 3 - 1 + (writer == "process")
    store.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "1 events could not be written" in errors[0] and len(errors[0]) < 400, errors
