"""The run store under load: its raw write rate, and what logging every event costs 200 concurrent runs.

1. Sustained write rate: a realistic mix of events (the 12 events of a run with one tool call) is emitted
   on a bus as fast as the emitter can go; the figure is events per second until the last one is committed,
   plus the emitter's cost per event (what the run pays) and the back-pressure waits.
2. Run throughput with the store on vs off: ``--runs`` agent runs at ``--concurrency`` 200 against the
   simulated server in a child process, in rounds of one off and one on measurement back to back (the order
   alternates); every event of every run is logged when on. The figures are the ratio of the median
   throughputs, the median of the per-round ratios, and the CPU time per run (all threads of this process;
   the server's CPU and that of the store's writer process are not counted). The target is a throughput loss
   under 5 %. The store runs with its defaults (``writer="auto"``: it moves to a writer process during the
   warm-up, when it sees a busy store); ``NBAGENT_STORE_WRITER=thread`` measures the in-process writer.

3. The same comparison interleaved finely (the headline figure): one client keeps ``--concurrency`` runs in
   flight without a break while the store is attached to its bus and detached again, in windows of
   ``--window`` seconds in the order off, on, on, off, ... (so a steady drift cancels out). The first
   ``--settle`` seconds after each switch are not counted (runs in flight then started in the other mode);
   each window's throughput is the events the runs emitted in the rest of it per second, divided by the 12
   events of a run (counted by a tap that stays on in both modes: completions alone come in waves, as the
   runs move in step, and would add noise). On a shared machine whose
   speed drifts by 20 % over tens of seconds, windows two seconds apart see the same machine where rounds a
   minute apart do not. Reported: the median and the mean of the ratios of neighbouring (on, off) windows
   with a bootstrap 95 % interval of the mean, the CPU per run in each mode, and the CPU the store's own
   threads used per run (from ``/proc``, Linux). The store stays open when detached; an idle store wakes
   its thread every ``flush_interval``, which is part of what "off" costs here (about nothing).

    python benchmarks/store.py [--events 200000 --runs 2000 --concurrency 200 --latency 0.05 --rounds 4
                                --windows 120 --window 2.0 --settle 0.6]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from nbagent import Agent, Settings, tool
from nbagent.events import (
    Event,
    EventBus,
    LLMRequestStarted,
    LLMResponse,
    RunFinished,
    RunStarted,
    StepStarted,
    TokenDrift,
    ToolFinished,
    ToolStarted,
)
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.testing import SimServer

STORE_OPTIONS: dict[str, Any] = {}


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def run_events(i: int) -> list[Event]:
    rid = f"run{i:08d}"
    return [
        RunStarted(run_id=rid, name=f"bench-{i}", model="sim", prompt="Look up the key 'x' and tell me its value."),
        StepStarted(run_id=rid, step=1),
        LLMRequestStarted(run_id=rid, request_id="req_1", model="sim", input_tokens_local=66),
        TokenDrift(run_id=rid, request_id="req_1", local=66, server=47),
        LLMResponse(run_id=rid, request_id="req_1", model="sim", latency=0.051, input_tokens=47, output_tokens=12,
                    finish_reason="tool_calls", tool_calls=1),
        ToolStarted(run_id=rid, call_id="call_1", name="lookup", arguments='{"key": "x"}'),
        ToolFinished(run_id=rid, call_id="call_1", name="lookup", duration=0.0004, output_chars=10,
                     output_preview="value-of-x"),
        StepStarted(run_id=rid, step=2),
        LLMRequestStarted(run_id=rid, request_id="req_2", model="sim", input_tokens_local=90),
        TokenDrift(run_id=rid, request_id="req_2", local=90, server=71),
        LLMResponse(run_id=rid, request_id="req_2", model="sim", latency=0.050, input_tokens=71, output_tokens=13,
                    finish_reason="stop"),
        RunFinished(run_id=rid, status="ok", stop_reason="stop", duration=0.11, steps=2, input_tokens=118,
                    output_tokens=25),
    ]


def write_rate(n_events: int, tmp: Path) -> dict[str, float]:
    runs = max(n_events // 12, 1)
    events = [ev for i in range(runs) for ev in run_events(i)]
    bus = EventBus()
    store = RunStore(tmp / "rate.db")
    store.attach(bus)
    store.flush()
    gc.collect()
    t0 = time.perf_counter()
    for ev in events:
        bus.emit(ev)
    t_emit = time.perf_counter() - t0
    store.flush(timeout=600)
    total = time.perf_counter() - t0
    stats = store.stats()
    store.close()
    return {"events": len(events), "seconds": total, "events_per_s": len(events) / total,
            "emit_us_per_event": 1e6 * (t_emit - stats["wait_seconds"]) / len(events),
            "written": stats["written"], "commits": stats["commits"], "dropped": stats["dropped"],
            "backpressure_waits": stats["waits"], "wait_seconds": stats["wait_seconds"], "writer": stats["writer"],
            "db_mb": (tmp / "rate.db").stat().st_size / 1e6}


def stat_cpu(path: str) -> float | None:
    """CPU seconds (user + system) in a ``/proc/.../stat`` file (Linux), None when it cannot be read."""
    try:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds used so far by another process, None when unknown."""
    return None if pid is None else stat_cpu(f"/proc/{pid}/stat")


async def throughput(url: str, runs: int, concurrency: int, store_path: Path | None) -> dict[str, Any]:
    settings = Settings.load(env={"NBAGENT_BASE_URL": url, "NBAGENT_MODEL": "sim", "NBAGENT_HOME": "/nonexistent"})
    bus = EventBus()
    client = LLMClient(settings, bus=bus)
    agent = Agent("sim", [lookup], runtime=Runtime(settings, bus=bus, client=client))
    store = None
    if store_path is not None:
        store = RunStore(store_path, **STORE_OPTIONS)
        store.attach(bus)
    # warm the pool and the tokenizer outside the measurement
    await asyncio.gather(*(agent.run("warm up") for _ in range(concurrency)))
    writer_pid, writer_cpu, written, commits = None, None, 0, 0
    if store is not None:
        await store.aflush()
        st = store.stats()
        writer_pid, written, commits = st["writer_pid"], st["written"], st["commits"]
        writer_cpu = process_cpu(writer_pid)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            r = await agent.run(f"Look up the key 'x' ({i}).")
            ok += r.ok

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(runs)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out: dict[str, Any] = {"runs_per_s": runs / elapsed, "ok": ok, "seconds": elapsed,
                           "cpu_ms_per_run": 1000 * cpu / runs}
    if store is not None:
        await store.aflush()
        out["store"] = st = store.stats()
        out["events"], out["commits"] = st["written"] - written, st["commits"] - commits
        after = process_cpu(writer_pid)
        if writer_cpu is not None and after is not None:  # the writer process's CPU for the measured runs
            out["writer_ms_per_run"] = 1000 * (after - writer_cpu) / runs
            out["writer_us_per_event"] = 1e6 * (after - writer_cpu) / max(out["events"], 1)
        store.close()
    await client.aclose()
    return out


def thread_cpu(prefix: str) -> float | None:
    """CPU seconds used so far by this process's threads whose name starts with ``prefix`` (Linux)."""
    found = [stat_cpu(f"/proc/self/task/{t.native_id}/stat") for t in threading.enumerate()
             if t.name.startswith(prefix) and t.native_id is not None]
    read = [x for x in found if x is not None]
    return sum(read) if read else None


class Window(NamedTuple):
    """What one interleaved window measured."""

    seconds: float
    cpu: float  # CPU seconds of this process
    completed: int  # runs completed
    events: int  # events emitted
    gc: float  # seconds in the garbage collector


def bootstrap_mean(values: list[float], n: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval of the mean of ``values``."""
    rng = random.Random(seed)
    k = len(values)
    means = sorted(sum(rng.choices(values, k=k)) / k for _ in range(n))
    return means[int(0.025 * n)], means[int(0.975 * n) - 1]


async def interleaved(url: str, concurrency: int, windows: int, window: float, settle: float,
                      store_path: Path) -> dict[str, Any]:
    """Throughput with the store attached and detached in alternating windows of one steady load."""
    settings = Settings.load(env={"NBAGENT_BASE_URL": url, "NBAGENT_MODEL": "sim", "NBAGENT_HOME": "/nonexistent"})
    bus = EventBus()
    client = LLMClient(settings, bus=bus)
    agent = Agent("sim", [lookup], runtime=Runtime(settings, bus=bus, client=client))
    store = RunStore(store_path, **STORE_OPTIONS)
    detach = store.attach(bus)
    # warm the pool and the tokenizer, and let writer="auto" move to its process, outside the measurement
    for _ in range(2):
        await asyncio.gather(*(agent.run("warm up") for _ in range(concurrency)))
    await store.aflush()
    detach()
    done = emitted = 0
    stop = False

    def count(_: Event) -> None:
        nonlocal emitted
        emitted += 1

    bus.tap(count)

    async def worker(w: int) -> None:
        nonlocal done
        i = 0
        while not stop:
            await agent.run(f"Look up the key 'x' ({w}-{i}).")
            done += 1
            i += 1

    gc_time = [0.0, 0.0]  # seconds in collections so far; start of the one running

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_time[1] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - gc_time[1]

    gc.callbacks.append(on_gc)
    tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
    measured: dict[str, list[Window]] = {"off": [], "on": []}
    store_cpu = 0.0
    try:
        await asyncio.sleep(settle)
        for k in range(windows):
            mode = "on" if k % 4 in (1, 2) else "off"
            if mode == "on":
                detach = store.attach(bus)
            await asyncio.sleep(settle)
            gc.collect()
            n0, e0, t0, c0, g0 = done, emitted, time.perf_counter(), time.process_time(), gc_time[0]
            s0 = thread_cpu("nbagent-run-store")
            await asyncio.sleep(window - settle)
            n1, e1, t1, c1, g1 = done, emitted, time.perf_counter(), time.process_time(), gc_time[0]
            s1 = thread_cpu("nbagent-run-store")
            if mode == "on":
                detach()
                if s0 is not None and s1 is not None:
                    store_cpu += s1 - s0
            measured[mode].append(Window(t1 - t0, c1 - c0, n1 - n0, e1 - e0, g1 - g0))
    finally:
        stop = True
        await asyncio.gather(*tasks)
        gc.callbacks.remove(on_gc)
    await store.aflush()
    stats = store.stats()
    store.close()
    await client.aclose()
    per_run = len(run_events(0))
    # neighbours: windows 4j and 4j+1 (off, on), 4j+2 and 4j+3 (on, off)
    ratios = [(on.events / on.seconds) / (off.events / off.seconds)
              for on, off in zip(measured["on"], measured["off"], strict=False)]
    total = {m: Window(*map(sum, zip(*ws, strict=True))) for m, ws in measured.items()}
    runs = {m: w.events / per_run for m, w in total.items()}
    return {
        "ratios": ratios, "runs": runs,
        "completed": {m: w.completed for m, w in total.items()},
        "runs_per_s": {m: runs[m] / w.seconds for m, w in total.items()},
        "cpu_ms_per_run": {m: 1000 * w.cpu / max(runs[m], 1) for m, w in total.items()},
        "gc_us_per_run": {m: 1e6 * w.gc / max(runs[m], 1) for m, w in total.items()},
        "store_thread_us_per_run": 1e6 * store_cpu / max(runs["on"], 1), "stats": stats,
    }


def report_interleaved(r: dict[str, Any], args: argparse.Namespace) -> None:
    ratios = [100 * (x - 1) for x in r["ratios"]]
    lo, hi = bootstrap_mean(ratios)
    rps, cpu, st = r["runs_per_s"], r["cpu_ms_per_run"], r["stats"]
    print(f"3. interleaved: {args.windows} windows of {args.window:.1f} s ({args.settle:.1f} s settling), "
          f"{args.concurrency} runs always in flight, model latency {args.latency * 1000:.0f} ms: "
          f"{rps['off']:.1f} runs/s with the store detached, {rps['on']:.1f} runs/s with every event logged "
          f"({100 * (rps['on'] / rps['off'] - 1):+.1f} %; {r['runs']['off']:,.0f} and {r['runs']['on']:,.0f} runs' "
          f"worth of events, {r['completed']['off']:,} and {r['completed']['on']:,} runs completed)")
    print(f"   neighbouring windows on/off: median {statistics.median(ratios):+.1f} %, mean "
          f"{statistics.fmean(ratios):+.1f} % (95 % interval {lo:+.1f} to {hi:+.1f} %; single pairs "
          f"{min(ratios):+.1f} to {max(ratios):+.1f} %)")
    cpu_change = 100 * (cpu["on"] / cpu["off"] - 1)
    print(f"   CPU per run {cpu['off']:.3f} ms off, {cpu['on']:.3f} ms on ({cpu_change:+.1f} %), of which the "
          f"garbage collector {r['gc_us_per_run']['off']:.0f} and {r['gc_us_per_run']['on']:.0f} us; "
          f"the store's threads {r['store_thread_us_per_run']:.1f} us per run; {st['writer']} writer, "
          f"dropped {st['dropped']}, waits {st['waits']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--windows", type=int, default=120, help="interleaved windows (a multiple of 4; 120: ~4 min)")
    ap.add_argument("--window", type=float, default=2.0, help="seconds per interleaved window")
    ap.add_argument("--settle", type=float, default=0.6, help="seconds not counted after each switch")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rate = write_rate(args.events, tmp)
        print(f"1. write rate: {rate['events']:,} events committed in {rate['seconds']:.2f} s = "
              f"{rate['events_per_s']:,.0f} events/s ({rate['commits']:,} commits, {rate['db_mb']:.1f} MB); emitter "
              f"cost {rate['emit_us_per_event']:.2f} us/event; back-pressure waits {rate['backpressure_waits']} "
              f"({rate['wait_seconds']:.2f} s); dropped {rate['dropped']}; {rate['writer']} writer at the end")
        with SimServer.spawn(latency=args.latency, record_history=False) as srv:
            if args.rounds:
                paired_rounds(srv.url, args, tmp)
            if args.windows:
                report_interleaved(asyncio.run(interleaved(srv.url, args.concurrency, args.windows, args.window,
                                                           args.settle, tmp / "interleaved.db")), args)


def paired_rounds(url: str, args: argparse.Namespace, tmp: Path) -> None:
    """Part 2: rounds of one store-off and one store-on measurement back to back."""
    figures: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    last: dict[str, Any] = {}
    for k in range(args.rounds):
        order = ("off", "on") if k % 2 == 0 else ("on", "off")  # alternate, so drift cancels out
        for mode in order:
            db = tmp / f"runs{k}.db" if mode == "on" else None
            r = asyncio.run(throughput(url, args.runs, args.concurrency, db))
            figures[mode].append(r)
            if mode == "on":
                last = r["store"]
        off, on = figures["off"][-1], figures["on"][-1]
        print(f"   round {k + 1}: store off {off['runs_per_s']:.1f} runs/s ({off['cpu_ms_per_run']:.2f} ms CPU "
              f"per run), on {on['runs_per_s']:.1f} runs/s ({on['cpu_ms_per_run']:.2f} ms CPU per run; "
              f"{on['events']:,} events in {on['commits']} commits, dropped {last['dropped']}, "
              f"waits {last['waits']}, {last['writer']} writer{writer_cpu(on)})")
    writer = [x["writer_ms_per_run"] for x in figures["on"] if "writer_ms_per_run" in x]
    ratios = [b["runs_per_s"] / a["runs_per_s"] for a, b in zip(figures["off"], figures["on"], strict=True)]
    print("   per-round ratios on/off: " + ", ".join(f"{100 * (r - 1):+.1f} %" for r in ratios)
          + (f"; writer process CPU per run: median {statistics.median(writer):.3f} ms" if writer else ""))
    med = {m: statistics.median(x["runs_per_s"] for x in figures[m]) for m in figures}
    cpu = {m: statistics.median(x["cpu_ms_per_run"] for x in figures[m]) for m in figures}
    # rounds are pairs measured back to back: the median of the paired ratios is robust to a machine
    # whose load changes between rounds
    paired = statistics.median(ratios)
    print(f"2. {args.runs} runs at concurrency {args.concurrency}, model latency {args.latency * 1000:.0f} ms, "
          f"{args.rounds} rounds: median {med['off']:.1f} runs/s with the store off, {med['on']:.1f} runs/s "
          f"with every event logged ({100 * (med['on'] / med['off'] - 1):+.1f} %; median of the paired "
          f"rounds {100 * (paired - 1):+.1f} %); CPU per run "
          f"{cpu['off']:.2f} ms off, {cpu['on']:.2f} ms on ({100 * (cpu['on'] / cpu['off'] - 1):+.1f} %); "
          f"last round: {last['written']:,} events in {last['commits']:,} commits, max queue "
          f"{last['max_pending']:,}, dropped {last['dropped']}")


def writer_cpu(r: dict[str, Any]) -> str:
    if "writer_ms_per_run" not in r:
        return ""
    return f", its CPU {r['writer_ms_per_run']:.3f} ms per run = {r['writer_us_per_event']:.1f} us per event"


if __name__ == "__main__":
    main()
