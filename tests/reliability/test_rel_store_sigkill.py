"""SIGKILL in the middle of a burst of runs: the runs that had finished are in the database.

A child process keeps 30 runs in flight for 6 s against a model that answers at once, with the process-wide
store on, reports every finished run (its id and end time, in a file written every 10 runs), and kills itself
with SIGKILL (``benchmarks/store_sigkill.py`` is the child, and the benchmark of the same thing). The
parent counts the reported runs the database does not hold as finished.

The bound asserted is the one that holds whatever the machine does: a run's end waits for the writer once
``max_uncommitted_runs`` finished runs are uncommitted, so at most that many runs that ended are ever lost.
How long before the kill the lost runs ended (the time bound, ``durable_within``) and the longest event-loop
stall are recorded, not asserted: these machines are shared.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_RUNS = 100  # the store's max_uncommitted_runs in the child: small, so that the bound is exercised


def benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("store_sigkill", ROOT / "benchmarks" / "store_sigkill.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_sigkill_during_a_burst_loses_no_more_finished_runs_than_the_bound(
        tmp_path: Path, record_property: pytest.RecordProperty, writer: str) -> None:
    r = benchmark().kill_once(tmp_path, seconds=6.0, concurrency=30, writer=writer, max_runs=MAX_RUNS)
    s = r["stats"]
    for name in ("done", "stored", "lost", "oldest_lost_age", "stall"):
        record_property(name, r[name])
    print(f"{writer} writer: {r['done']} runs done, {r['stored']} stored, {r['lost']} lost (the oldest ended "
          f"{r['oldest_lost_age'] * 1000:.0f} ms before the kill); loop stall max {r['stall'] * 1000:.1f} ms; "
          f"store lag max {s['max_lag'] * 1000:.0f} ms, {s['admit_waits']} run ends waited, max_pending "
          f"{s['max_pending']}")
    assert r["integrity"] == "ok"
    assert r["done"] > MAX_RUNS  # the burst got far enough for the bound to matter
    assert s["writer"] == writer and s["dropped"] == 0 and s["admit_timeouts"] == 0
    assert s["max_pending"] >= s["pending"]
    assert 0 <= r["lost"] <= MAX_RUNS
