"""The run store never makes the event loop wait; when its writer is behind, runs' ends wait instead.

The writer is held up deterministically: another connection holds the database's write lock, so the writer's
commit waits in SQLite until the test lets go (no sleeps, no timing assertions).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nbagent.events import EventBus, RunFinished, RunStarted, StepStarted
from nbagent.store import RunStore

LIMIT = 60.0  # seconds: only to fail instead of hanging


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold the database's write lock (readers go on; the store's writer waits in its commit)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def opened(path: Path, writer: str, **options: object) -> tuple[RunStore, EventBus]:
    s = RunStore(path, writer=writer, **options)  # type: ignore[arg-type]
    bus = EventBus()
    bus.tap(s.record)
    bus.emit(RunStarted(run_id="warm-up"))
    assert s.flush(LIMIT)  # the database exists and, with "process", the writer process writes
    assert s.stats()["writer"] == writer
    return s, bus


async def stuck(s: RunStore, n: int) -> None:
    """Let the loop run until ``n`` events wait in the queue (the writer holds the batch before them)."""
    for _ in range(int(LIMIT * 100)):
        if s.stats()["pending"] >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the queue never held {n} events: {s.stats()}")


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_full_queue_never_makes_the_loop_wait(tmp_path: Path, writer: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    s, bus = opened(tmp_path / "full.db", writer, queue_size=200, batch_size=10, flush_interval=0.01)
    with write_locked(s.path), caplog.at_level(logging.WARNING, logger="nbagent.store"):
        bus.emit(RunStarted(run_id="r"))
        for i in range(1000):
            bus.emit(StepStarted(run_id="r", step=i))
            if i % 50 == 0:
                await asyncio.sleep(0)  # let the writer take its batch and get stuck committing it
        st = s.stats()
    # the tap never waited: what did not fit was dropped, counted and reported once
    assert st["waits"] == 0 and st["wait_seconds"] == 0.0
    assert st["dropped"] > 0 and st["enqueued"] + st["dropped"] == 1001 + 1
    assert st["max_pending"] >= st["pending"] and st["max_pending"] <= 200
    shed = [r for r in caplog.records if "dropping new events" in r.getMessage()]
    assert len(shed) == 1
    assert await asyncio.to_thread(s.flush, LIMIT)
    run = s.run("r")
    assert run is not None and run["dropped"] == st["dropped"]
    assert s.count_events("r") + st["dropped"] == 1001
    s.close()


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_a_runs_end_waits_for_the_writer_once_too_many_finished_runs_are_uncommitted(
        tmp_path: Path, writer: str) -> None:
    s, bus = opened(tmp_path / "admit.db", writer, max_uncommitted_runs=3, durable_within=None)
    with write_locked(s.path):
        for i in range(3):
            bus.emit(RunStarted(run_id=f"r{i}"))
            bus.emit(RunFinished(run_id=f"r{i}", status="ok"))
            await s.admit()  # at most 3 finished runs uncommitted: no wait
        assert s.stats()["admit_waits"] == 0
        bus.emit(RunStarted(run_id="r3"))
        bus.emit(RunFinished(run_id="r3", status="ok"))
        end = asyncio.ensure_future(s.admit())  # a fourth: this run's end waits for the writer
        ticks = 0
        while s.stats()["admit_waits"] == 0 and ticks < 1000:
            await asyncio.sleep(0)
            ticks += 1
        for _ in range(100):  # the loop keeps turning while the run waits
            await asyncio.sleep(0)
        assert s.stats()["admit_waits"] == 1 and not end.done()
    await asyncio.wait_for(end, LIMIT)  # the lock is gone: the writer commits, the run's end goes on
    # when it returned, the run was committed (read without flushing)
    assert s.run("r3", flush=False)["status"] == "ok"  # type: ignore[index]
    st = s.stats()
    assert st["admit_timeouts"] == 0 and st["uncommitted"] == 0 and st["dropped"] == 0
    s.close()


async def test_a_writer_that_stays_behind_lets_runs_go_after_max_wait(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    s, bus = opened(tmp_path / "late.db", "thread", max_uncommitted_runs=1, max_wait=0.05)
    with write_locked(s.path), caplog.at_level(logging.WARNING, logger="nbagent.store"):
        for i in range(2):
            bus.emit(RunFinished(run_id=f"r{i}", status="ok"))
        await s.admit()  # gives up after max_wait: counted, and said once
        assert s.stats()["admit_timeouts"] == 1
        assert any("finished runs may be lost" in r.getMessage() for r in caplog.records)
    assert await asyncio.to_thread(s.flush, LIMIT)
    s.close()


def test_a_plain_thread_still_waits_for_room(tmp_path: Path) -> None:
    """Off an event loop (a script), a full queue waits for the writer as before: nothing is dropped."""
    s = RunStore(tmp_path / "script.db", queue_size=10, batch_size=1000, flush_interval=3600, writer="thread")
    bus = EventBus()
    bus.tap(s.record)
    for i in range(500):
        bus.emit(StepStarted(run_id="r", step=i))
    assert s.flush(LIMIT)
    st = s.stats()
    assert st["dropped"] == 0 and st["waits"] >= 1 and s.count_events("r") == 500
    s.close()
