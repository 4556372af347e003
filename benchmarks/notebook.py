"""Event-loop lag and run throughput with a live dashboard vs no UI, in a real ipykernel.

Workload: ``--runs`` runs, ``--concurrency`` in flight (default 400 and 100), each prompt -> tool call ->
tool call -> answer, against the simulated server in a separate process (its CPU is not counted). The runs
execute inside a real kernel started with jupyter_client; a thread of this process reads the kernel's
IOPub channel as a frontend would, counting widget messages.

The first hundred runs start spread over one answer time, so the load is a steady stream rather than
waves of a hundred answers arriving in the same millisecond (which the simulated server's fixed latency
would otherwise keep in lockstep). Modes, measured in the same kernel one after the other (after a warm-up):

* ``no UI``: ``agent.run`` on a private bus, no registry, no widget;
* ``dashboard``: the same runs through the notebook registry, with a live dashboard displayed;
* ``dashboard + widgets`` (``--widgets``): every run also shows its own run widget, as ``%%agent`` does.

For each mode: event-loop lag p50 / p99 / max (a 10 ms ticker), runs per second, widget update messages
per second and their volume, and how many widget models were created. Targets: lag p99 <= 20 ms with the
dashboard, throughput within 10 % of the no-UI figure.

    python benchmarks/notebook.py [--runs 400 --concurrency 100 --latency 1.0 --repeat 2 --widgets]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import start_new_kernel

from nbagent.testing import SimServer

ROOT = Path(__file__).resolve().parents[1]

KERNEL_CODE = r'''
import asyncio, json, time
from IPython.display import display
from nbagent import Agent, tool
from nbagent.config import Settings
from nbagent.events import EventBus
from nbagent.llm import LLMClient
from nbagent.metrics import MetricsRegistry
from nbagent.metrics.loopmon import LoopMonitor
from nbagent.notebook.dashboard import Dashboard
from nbagent.notebook.session import RunRegistry
from nbagent.notebook.widgets import RunOutput

@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return "v-" + key

async def _bench(mode, runs, concurrency, stagger):
    settings = Settings.load()
    registry = dash = None
    if mode == "none":
        bus = EventBus()
        agent = Agent("sim", [lookup], settings=settings, client=LLMClient(settings, bus=bus), bus=bus)
    else:
        registry = RunRegistry(EventBus(), settings=settings)
        agent = registry.agent("sim", [lookup])
        dash = Dashboard(registry)
        display(dash)
    lag = MetricsRegistry()
    monitor = LoopMonitor(interval=0.01, threshold=0.25, registry=lag)
    sem = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(i):
        nonlocal ok
        if i < concurrency:  # spread the first wave over one answer time: a steady stream, not lockstep waves
            await asyncio.sleep(stagger * i / concurrency)
        async with sem:
            if registry is None:
                result = await agent.run(f"question {i}")
            else:
                view = (lambda e: RunOutput(e.name, get_ipython()).show()) if mode == "widgets" else None
                entry = registry.submit(agent, f"question {i}", name=f"b{i}", view_factory=view)
                result = await entry.handle.task
            ok += result.ok

    monitor.start()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(runs)))
    wall = time.perf_counter() - t0
    await asyncio.sleep(0.6)  # the last redraws
    monitor.stop()
    s = monitor.lag.summary()
    out = {"mode": mode, "runs": runs, "ok": ok, "wall": wall, "runs_per_s": runs / wall,
           "lag_p50": s["p50"], "lag_p99": s["p99"], "lag_max": s["max"], "lag_samples": s["count"],
           "draws": dash.draws if dash else 0, "renders": registry.renders if registry else 0}
    if registry is not None:
        dash.close()
        await registry.aclose()
    else:
        await agent.client.aclose()
    print("BENCH " + json.dumps(out))
'''


class IOPubReader(threading.Thread):
    """Reads the kernel's IOPub like a frontend: counts widget (comm) messages and collects stdout."""

    def __init__(self, kc: Any) -> None:
        super().__init__(daemon=True)
        self.kc = kc
        self.comm_msgs = 0
        self.comm_bytes = 0
        self.comm_opens = 0
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        self.stopping = False

    def run(self) -> None:
        while not self.stopping:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            kind = msg["msg_type"]
            if kind == "comm_msg":  # widget updates (creating a widget sends comm_open, counted apart)
                self.comm_msgs += 1
                self.comm_bytes += len(json.dumps(msg["content"], default=str))
            elif kind == "comm_open":
                self.comm_opens += 1
            elif kind == "stream":
                for line in msg["content"]["text"].splitlines():
                    self.lines.put(line)
            elif kind == "error":
                self.errors.append("\n".join(msg["content"]["traceback"]))


def run_mode(kc: Any, reader: IOPubReader, mode: str, runs: int, concurrency: int, stagger: float) -> dict[str, Any]:
    msgs0, bytes0, opens0 = reader.comm_msgs, reader.comm_bytes, reader.comm_opens
    kc.execute(f"await _bench({mode!r}, {runs}, {concurrency}, {stagger})")
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if reader.errors:
            raise RuntimeError(reader.errors[-1])
        try:
            line = reader.lines.get(timeout=1.0)
        except queue.Empty:
            continue
        if line.startswith("BENCH "):
            result: dict[str, Any] = json.loads(line[6:])
            time.sleep(0.2)
            result["comm_msgs_per_s"] = (reader.comm_msgs - msgs0) / result["wall"]
            result["comm_kib_per_s"] = (reader.comm_bytes - bytes0) / 1024 / result["wall"]
            result["widgets_created"] = reader.comm_opens - opens0
            return result
    raise TimeoutError(f"mode {mode} did not finish")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--latency", type=float, default=1.0, help="seconds before each simulated answer")
    ap.add_argument("--repeat", type=int, default=2, help="measurements per mode (the best lag p99 is kept)")
    ap.add_argument("--widgets", action="store_true", help="also measure a run widget per run")
    args = ap.parse_args()

    sim = SimServer.spawn(latency=args.latency, tool_calls_per_run=2, record_history=False)
    home = tempfile.mkdtemp(prefix="nbagent-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NBAGENT_"))}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])), NBAGENT_MODEL="sim",
               NBAGENT_BASE_URL=sim.url, NBAGENT_HOME=home, NBAGENT_LIMITS__STUCK_REPEATS="0",
               JUPYTER_PLATFORM_DIRS="1")
    km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=home)
    reader = IOPubReader(kc)
    reader.start()
    try:
        setup = kc.execute(KERNEL_CODE)
        reply = kc.get_shell_msg(timeout=120)
        assert reply["parent_header"]["msg_id"] == setup and reply["content"]["status"] == "ok", reader.errors
        run_mode(kc, reader, "none", min(args.runs, 100), args.concurrency, args.latency)  # warm-up
        modes = ["none", "dashboard"] + (["widgets"] if args.widgets else [])
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for mode in modes:
                results[mode].append(run_mode(kc, reader, mode, args.runs, args.concurrency, args.latency))
    finally:
        reader.stopping = True
        km.shutdown_kernel(now=True)
        sim.stop()

    label = {"none": "no UI", "dashboard": "dashboard", "widgets": "dashboard + widgets"}
    print(f"\n{args.runs} runs x 3 model calls, {args.concurrency} in flight, simulated latency {args.latency} s, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; best of {args.repeat} by lag p99\n")
    print(f"{'mode':<22}{'lag p50':>10}{'lag p99':>10}{'lag max':>10}{'runs/s':>10}{'vs no UI':>10}"
          f"{'updates/s':>11}{'KiB/s':>8}{'widgets':>9}")
    base = max(r["runs_per_s"] for r in results["none"])
    for mode in modes:
        best = min(results[mode], key=lambda r: r["lag_p99"])
        rate = max(r["runs_per_s"] for r in results[mode])
        print(f"{label[mode]:<22}{best['lag_p50'] * 1e3:>8.1f}ms{best['lag_p99'] * 1e3:>8.1f}ms"
              f"{best['lag_max'] * 1e3:>8.1f}ms{rate:>10.1f}{(rate / base - 1) * 100:>+9.1f}%"
              f"{best['comm_msgs_per_s']:>11.1f}{best['comm_kib_per_s']:>8.1f}{best['widgets_created']:>9}")
    dash = min(results["dashboard"], key=lambda r: r["lag_p99"])
    rate = max(r["runs_per_s"] for r in results["dashboard"])
    print(f"\ntarget lag p99 <= 20 ms with the dashboard: {'met' if dash['lag_p99'] <= 0.020 else 'MISSED'}; "
          f"throughput within 10% of no UI: {'met' if rate >= 0.9 * base else 'MISSED'}")


if __name__ == "__main__":
    main()
