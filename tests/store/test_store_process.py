"""The writer process: when it starts, what crosses to it, and what happens when it dies."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from nbagent.events import Event, EventBus, RunFinished, RunStarted, StepStarted, _frozen
from nbagent.store import RunStore
from nbagent.store.redact import REDACTED, Redactor


@dataclass(**_frozen)  # type: ignore[call-overload]
class OddEvent(Event):
    """An event with a field pickle cannot carry (a lock) and one JSON cannot (a set)."""

    kind: ClassVar[str] = "odd_event"
    handle: Any = None
    tags: Any = None


def wait_until(cond: Any, what: str, limit: float = 20.0) -> None:
    """Poll ``cond`` (a generous deadline only to fail instead of hanging; never a timing assertion)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_values_pickle_cannot_carry_are_stored_as_the_thread_would(tmp_path: Path) -> None:
    stored = {}
    lock = threading.Lock()
    for writer in ("thread", "process"):
        s = RunStore(tmp_path / f"{writer}.db", writer=writer)
        bus = EventBus()
        s.attach(bus)
        bus.emit(OddEvent(run_id="r", ts=1.0, handle=lock, tags={"a"}))
        bus.emit(StepStarted(run_id="r", ts=2.0, step=1))
        s.flush()
        assert s.stats()["writer"] == writer
        stored[writer] = s.events("r")
        s.close()
    assert stored["thread"] == stored["process"]
    assert stored["process"][0]["handle"].startswith("<unlocked _thread.lock") and stored["process"][1]["step"] == 1


def test_secrets_added_later_reach_the_writer_process(tmp_path: Path) -> None:
    redactor = Redactor(env={})
    s = RunStore(tmp_path / "late.db", writer="process", redactor=redactor)
    bus = EventBus()
    s.attach(bus)
    bus.emit(RunStarted(run_id="a", prompt="nothing secret yet"))
    s.flush()
    redactor.add_secret("qq-late-credential-42")
    bus.emit(RunStarted(run_id="b", prompt="now qq-late-credential-42 is known"))
    s.flush()
    assert s.stats()["writer"] == "process"
    assert s.run("b")["prompt"] == f"now {REDACTED} is known"
    s.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("late.db*"))
    assert b"qq-late-credential-42" not in raw


def started_run_in_a_writer_process(path: Path) -> tuple[RunStore, EventBus, int]:
    """A store writing in its process, with run ``r`` started and committed; and the process's pid."""
    s = RunStore(path, writer="process")
    bus = EventBus()
    s.attach(bus)
    bus.emit(RunStarted(run_id="r", name=path.stem))
    s.flush()
    pid = s.stats()["writer_pid"]
    assert pid is not None
    return s, bus, pid


def test_a_dead_writer_process_is_counted_and_replaced_by_the_thread(tmp_path: Path) -> None:
    s, bus, pid = started_run_in_a_writer_process(tmp_path / "dies.db")
    os.kill(pid, signal.SIGKILL)
    for i in range(500):
        bus.emit(StepStarted(run_id="r", step=i))
    bus.emit(RunFinished(run_id="r", status="ok"))
    assert s.flush()  # never hangs on a writer that is gone
    wait_until(lambda: s.stats()["writer"] == "thread", "the store to write in its thread again")
    for i in range(500, 600):
        bus.emit(StepStarted(run_id="r", step=i))
    s.flush()
    st = s.stats()
    # every event is either committed or counted as dropped (a batch in flight may be both: over-counted)
    assert st["written"] + st["dropped"] >= st["enqueued"] == 602
    assert s.count_events("r") + s.run("r")["dropped"] >= 602
    assert s.count_events("r") >= 101  # the first event and everything after the fallback
    s.close()
    with sqlite3.connect(tmp_path / "dies.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_batches_in_flight_when_the_writer_process_dies_are_counted_as_dropped(tmp_path: Path) -> None:
    s, bus, pid = started_run_in_a_writer_process(tmp_path / "inflight.db")
    os.kill(pid, signal.SIGSTOP)  # the child takes nothing more off the socket and acknowledges nothing
    try:
        for i in range(300):
            bus.emit(StepStarted(run_id="r", step=i))
        proc = s._proc
        assert proc is not None
        # the writer thread has taken them off the queue and sent them: they are in flight, kept as bytes
        wait_until(lambda: s.stats()["pending"] == 0 and proc._inflight, "the batches to be sent")
        assert all(isinstance(entry[0], bytes) for entry in proc._inflight.values())
    finally:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: s.stats()["writer"] == "thread", "the store to write in its thread again")
    assert s.flush()
    # the child committed none of them: every one is counted, in the stats and in the run's row
    assert s.stats()["dropped"] == 300 and s.stats()["enqueued"] == 301
    assert s.run("r")["dropped"] == 300 and s.count_events("r") == 1
    s.close()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="auto keeps the thread on one core")
def test_auto_moves_a_busy_store_to_a_writer_process(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "auto.db")  # writer="auto"
    bus = EventBus()
    s.attach(bus)
    bus.emit(StepStarted(run_id="r", step=0))
    s.flush()
    assert s.stats()["writer"] == "thread"  # a quiet store starts no process
    n = 1
    deadline = time.monotonic() + 60  # only to fail instead of hanging
    while s.stats()["writer"] != "process":
        assert time.monotonic() < deadline, "auto never started the writer process"
        for _ in range(2000):
            bus.emit(StepStarted(run_id="r", step=n))
            n += 1
        time.sleep(0.05)
    for _ in range(100):
        bus.emit(StepStarted(run_id="r", step=n))
        n += 1
    s.flush()
    steps = [e["step"] for e in s.events("r")]
    assert steps == list(range(n))  # in order across the hand-over, nothing lost
    assert s.stats()["dropped"] == 0
    s.close()


def test_close_reaps_the_writer_process(tmp_path: Path) -> None:
    s = RunStore(tmp_path / "reap.db", writer="process")
    s.flush()
    proc = s._proc
    assert proc is not None
    s.close()
    assert proc.process.poll() == 0
