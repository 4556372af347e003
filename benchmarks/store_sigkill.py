"""What a SIGKILL costs the run store: finished runs lost per kill, and the longest event-loop stall.

Each kill: a child process keeps ``--concurrency`` runs in flight for ``--seconds`` against a model whose
``request`` returns at once (one tool call, then the answer: the run store is the only slow part), with the
process-wide store on (``nbagent.store.enable``). It appends every finished run's id and end time to a report
file (written every 10 runs), measures how late a 10 ms ``asyncio.sleep`` wakes (the loop-lag probe), and
then kills itself with SIGKILL. The parent waits until the writer process (if any) has exited, then counts
the runs the child reported done that the database does not hold as finished.

Reported per kill: runs done, runs lost, how long before the kill the oldest lost run ended, the longest
loop stall, and the store's own figures (its longest lag, how often runs waited for it).

    python benchmarks/store_sigkill.py [--kills 10 --seconds 6 --concurrency 30 --writer auto]

``--child DB REPORT`` is the child's side (also used by ``tests/reliability/test_rel_store_sigkill.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROBE = 0.01  # the loop-lag probe sleeps this long and measures how late it wakes


# --- the child ------------------------------------------------------------------------------------


async def burst(db: str, report: str, seconds: float, concurrency: int, writer: str, max_runs: int) -> None:
    """Runs in flight for ``seconds``, every finished run reported, then SIGKILL (never returns)."""
    from nbagent import Agent, Runtime, tool
    from nbagent.llm.types import ModelResponse, TokenUsage, ToolCall

    class Instant:
        """A model that answers at once: a tool call first, then the answer."""

        model_name = "instant"

        async def request(self, req: Any, *, run_id: str | None = None, on_text: Any = None) -> ModelResponse:
            if req.messages[-1].get("role") == "tool":
                return ModelResponse(text="done", finish_reason="stop", usage=TokenUsage(40, 5, 0))
            return ModelResponse(text="", tool_calls=[ToolCall("call_1", "lookup", '{"key": "x"}')],
                                 finish_reason="tool_calls", usage=TokenUsage(30, 8, 0))

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-of-{key}"

    rt = Runtime()
    st = None if writer == "off" else rt.enable_store(path=db, writer=writer, max_wait=60.0,
                                                      max_uncommitted_runs=max_runs)
    agent = Agent(Instant(), [lookup], runtime=rt, name="burst")
    fd = os.open(report, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    lines: list[str] = []
    stall, stall_at, start = 0.0, 0.0, time.perf_counter()
    stop = False

    async def probe() -> None:
        nonlocal stall, stall_at
        while not stop:
            t0 = time.perf_counter()
            await asyncio.sleep(PROBE)
            late = time.perf_counter() - t0 - PROBE
            if late > stall:
                stall, stall_at = late, t0 - start

    async def worker() -> None:
        while not stop:
            result = await agent.run("go")
            lines.append(f"{time.monotonic():.6f} {result.run_id}\n")
            if len(lines) >= 10:
                os.write(fd, "".join(lines).encode())
                lines.clear()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    tasks.append(asyncio.create_task(probe()))
    await asyncio.sleep(seconds)
    stop = True
    # no await from here on: no run ends between the last report and the kill
    os.write(fd, "".join(lines).encode())
    stats = st.stats() if st is not None else {}
    stats.update(kill=time.monotonic(), stall=stall, stall_at=stall_at, pid=os.getpid())
    os.write(fd, ("# " + json.dumps(stats) + "\n").encode())
    os.kill(os.getpid(), signal.SIGKILL)


# --- the parent -----------------------------------------------------------------------------------


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting to be reaped counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def kill_once(tmp: Path, *, seconds: float, concurrency: int, writer: str, max_runs: int,
              limit: float = 120.0) -> dict[str, Any]:
    """One child burst and kill; what the database holds afterwards. ``limit`` only keeps a broken child from
    hanging the caller."""
    db, report = tmp / "runs.db", tmp / "done.txt"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(db), str(report), "--seconds", str(seconds),
           "--concurrency", str(concurrency), "--writer", writer, "--max-runs", str(max_runs)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    child = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
    if child.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the child ended with {child.returncode}, not SIGKILL: {child.stderr[-2000:]}")
    done: dict[str, float] = {}
    stats: dict[str, Any] = {}
    for line in report.read_text().splitlines():
        if line.startswith("# "):
            stats = json.loads(line[2:])
        elif line:
            t, run_id = line.split()
            done[run_id] = float(t)
    writer_pid = stats.get("writer_pid")
    deadline = time.monotonic() + limit
    while writer_pid and not gone(int(writer_pid)):  # it commits what it received, then exits
        if time.monotonic() > deadline:
            raise RuntimeError("the writer process outlived its parent")
        time.sleep(0.01)
    integrity, finished = "no store", set()
    if writer != "off":
        with sqlite3.connect(db) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finished = {r[0] for r in conn.execute("SELECT run_id FROM runs WHERE status != 'running'")}
    lost = sorted(done[r] for r in done if r not in finished)
    kill = float(stats["kill"])
    return {"done": len(done), "stored": len(finished), "lost": len(lost),
            "oldest_lost_age": kill - lost[0] if lost else 0.0, "stall": float(stats["stall"]),
            "stall_at": float(stats["stall_at"]),
            "integrity": integrity, "stats": stats, "max_runs": max_runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("DB", "REPORT"), help=argparse.SUPPRESS)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--concurrency", type=int, default=30)
    ap.add_argument("--writer", default="auto", choices=("auto", "thread", "process", "off"),
                    help="the store's writer; off: no store (the baseline of throughput and loop stalls)")
    ap.add_argument("--max-runs", type=int, default=1000, help="the store's max_uncommitted_runs")
    args = ap.parse_args()
    if args.child:
        asyncio.run(burst(args.child[0], args.child[1], args.seconds, args.concurrency, args.writer, args.max_runs))
        return
    results = []
    for i in range(args.kills):
        with tempfile.TemporaryDirectory(prefix="nbagent-sigkill-") as tmp:
            r = kill_once(Path(tmp), seconds=args.seconds, concurrency=args.concurrency, writer=args.writer,
                          max_runs=args.max_runs)
        s = r["stats"]
        results.append(r)
        store = "no store" if args.writer == "off" else (
            f"store: {s['writer']} writer, lag max {s['max_lag'] * 1000:.0f} ms, {s['admit_waits']} run ends "
            f"waited {s['admit_wait_seconds']:.2f} s, max_pending {s['max_pending']:,}, dropped {s['dropped']}; "
            f"integrity {r['integrity']}")
        print(f"kill {i + 1}: {r['done']:,} runs done, {r['lost']} lost (the oldest ended "
              f"{r['oldest_lost_age'] * 1000:.0f} ms before the kill); loop stall max {r['stall'] * 1000:.1f} ms "
              f"({r['stall_at']:.2f} s in); {store}", flush=True)
    lost = [r["lost"] for r in results]
    ages = [r["oldest_lost_age"] for r in results]
    stalls = [r["stall"] for r in results]
    done = [r["done"] for r in results]
    print(f"{len(results)} kills, {args.concurrency} runs in flight for {args.seconds:g} s, {args.writer} writer: "
          f"runs done median {statistics.median(done):,.0f} ({statistics.median(done) / args.seconds:,.0f}/s); "
          f"runs lost per kill median {statistics.median(lost):g}, max {max(lost)} "
          f"({100 * sum(lost) / max(sum(done), 1):.2f} % of all); oldest lost run ended at most "
          f"{max(ages) * 1000:.0f} ms before its kill; loop stall max {max(stalls) * 1000:.1f} ms "
          f"(median of the kills {statistics.median(stalls) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
