"""CPU cost of the run store's writing side per event, without the client, the socket or the scheduler.

Packs the events of ``--runs`` runs (the 12 events of ``benchmarks/store.py``'s ``run_events`` plus each run's
result, as ``--concurrency`` runs interleaved would arrive), pickles them in batches of ``--batch`` records as
the store's thread sends them to its writer process, then times what the writer process does with them:
unpickling and ``BatchWriter.write`` (encoding, redaction, SQL statements, commits) into a fresh database.
CPU time (``time.process_time``) is robust to a busy machine where wall time is not; the best and median of
``--repeat`` passes are reported, then a breakdown of one pass (cProfile, plus the SQL statements and
commits timed on their own).

    python benchmarks/store_writer.py [--runs 2000 --concurrency 200 --batch 300 --repeat 7]
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pickle
import pstats
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nbagent.store.batch import BatchWriter, Packer, connect
from nbagent.store.migrations import migrate
from nbagent.store.redact import Redactor

sys.path.insert(0, str(Path(__file__).parent))
from store import run_events  # noqa: E402

SECRETS = ("sk-test-0123456789abcdefghij", "nb-secret-key-0001")


def result(i: int) -> tuple[str, list[Any], str, dict[str, float], dict[str, Any]]:
    """What a run's result adds to its events (the shape of the simulated server's answer)."""
    prompt = f"Look up the key 'x' ({i})."
    output = f"Answer to: {prompt} (tool said: value-of-x)"
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"key":"x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "value-of-x"},
        {"role": "assistant", "content": output},
    ]
    timings = {"total": 0.103, "model": 0.1023, "tools": 0.00034, "startup": 3.9e-05, "overhead": 0.00027}
    return f"run{i:08d}", messages, output, timings, {}


def batches(runs: int, concurrency: int, size: int) -> tuple[list[bytes], int]:
    """Pickled batches as the store's thread sends them, and the number of events in them."""
    packer = Packer()
    rng = random.Random(0)
    rid_of: dict[int, str] = {}
    records: list[Any] = []
    n_events = 0
    # ``concurrency`` runs in flight, each one event further per turn: runs start and end in every batch
    active: list[tuple[int, list[Any]]] = []
    nxt = 0
    while nxt < runs or active:
        while len(active) < concurrency and nxt < runs:
            rid = f"{rng.getrandbits(48):012x}"  # run ids are random, as the agent's are
            active.append((nxt, [dataclasses.replace(ev, run_id=rid) for ev in run_events(nxt)]))
            rid_of[nxt] = rid
            nxt += 1
        still = []
        for i, evs in active:
            if rng.random() < 0.5:  # runs move at their own pace
                still.append((i, evs))
                continue
            packer.event(evs.pop(0), records)
            n_events += 1
            if evs:
                still.append((i, evs))
            else:
                records.append(packer.result(rid_of[i], *result(i)[1:]))
        active = still
    out = []
    for seq, k in enumerate(range(0, len(records), size)):
        chunk = records[k:k + size]
        secrets = SECRETS if seq == 0 else None
        out.append(pickle.dumps(("batch", seq + 1, chunk, {}, secrets, False), pickle.HIGHEST_PROTOCOL))
    return out, n_events


class TimedConnection:
    """A connection whose statements are timed: commits apart from everything else."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.times: dict[str, float] = {}

    def _timed(self, fn: Any, sql: str, *args: Any) -> Any:
        t0 = time.process_time()
        try:
            return fn(sql, *args)
        finally:
            what = " ".join(sql.split()[:3]) if sql.startswith("INSERT") else sql.split()[0]
            self.times[what] = self.times.get(what, 0.0) + time.process_time() - t0

    def execute(self, sql: str, *args: Any) -> Any:
        return self._timed(self.conn.execute, sql, *args)

    def executemany(self, sql: str, *args: Any) -> Any:
        return self._timed(self.conn.executemany, sql, *args)


def one_pass(data: list[bytes], path: Path, conn_wrapper: Any = None) -> float:
    conn = connect(path, "NORMAL")
    migrate(conn)
    db = conn if conn_wrapper is None else conn_wrapper(conn)
    writer = BatchWriter(Redactor(env={}), 1234, "host")
    t0 = time.process_time()
    for blob in data:
        msg = pickle.loads(blob)
        if msg[4]:
            for s in msg[4]:
                writer.redactor.add_secret(s)  # type: ignore[union-attr]
        writer.write(db, msg[2], msg[3])
    cpu = time.process_time() - t0
    conn.close()
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--batch", type=int, default=300, help="records per transaction")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--top", type=int, default=25, help="functions to list in the profile")
    args = ap.parse_args()
    data, n = batches(args.runs, args.concurrency, args.batch)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cpus = [one_pass(data, tmp / f"w{k}.db") for k in range(args.repeat)]
        best, med = min(cpus), statistics.median(cpus)
        print(f"{n:,} events of {args.runs:,} runs in {len(data)} transactions: CPU {1e6 * best / n:.2f} us/event "
              f"best, {1e6 * med / n:.2f} median of {args.repeat} ({1e3 * best / args.runs:.3f} ms per run); "
              f"{(tmp / 'w0.db').stat().st_size / 1e6:.1f} MB")
        timed: list[TimedConnection] = []

        def wrap(conn: sqlite3.Connection) -> TimedConnection:
            timed.append(TimedConnection(conn))
            return timed[-1]

        one_pass(data, tmp / "timed.db", wrap)
        t = timed[0]
        print("SQL per event: " + ", ".join(f"{what} {1e6 * v / n:.2f} us" for what, v in
                                           sorted(t.times.items(), key=lambda kv: -kv[1])))
        prof = cProfile.Profile()
        prof.enable()
        one_pass(data, tmp / "prof.db")
        prof.disable()
        stats = pstats.Stats(prof)
        rows = stats.stats  # type: ignore[attr-defined]
        total = sum(v[2] for v in rows.values())
        print(f"profile (tottime per event, {1e6 * total / n:.2f} us/event under the profiler):")
        top = sorted(rows.items(), key=lambda kv: kv[1][2], reverse=True)[:args.top]
        for (file, line, fn), (_, ncalls, tottime, cumtime, _) in top:
            where = f"{Path(file).name}:{line}" if line else file
            print(f"  {1e6 * tottime / n:7.2f} tot {1e6 * cumtime / n:7.2f} cum {ncalls:8d}  {fn} ({where})")


if __name__ == "__main__":
    main()
