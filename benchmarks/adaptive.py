"""Adaptive concurrency against a server with a fixed capacity, next to a sweep of fixed limits.

The simulated server (a separate process) serves at most ``--capacity`` requests at once (default 64) with
``--latency`` seconds per answer; beyond that it either queues (``queue``) or answers 429 with
``Retry-After`` (``reject``). For each mode, ``--workers`` coroutines (default 256) send requests in a closed
loop (``--seconds``, or ``--adaptive-seconds`` for adaptive runs) through one
:class:`~nbagent.llm.LLMClient`, whose limit is fixed (the sweep) or adaptive, starting far too low (2) and
far too high (512). Every 429 is retried after its Retry-After.

Printed per run: successful requests per second over the whole run and its second half (steady state), each
with its ratio to the best fixed limit of that mode, the share of requests the server rejected (all, and after the
first second: a limit that starts far too high sends one wave the server turns away), mean latency of a
successful call (retries and waits for a slot included), and the limit at the end. Targets for adaptive:
>= 90 % of the best fixed throughput, <= 1 % rejected. The default run takes under two minutes.

    python benchmarks/adaptive.py [--capacity 64 --latency 0.25 --seconds 5 --adaptive-seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from nbagent import Settings
from nbagent.events import EventBus
from nbagent.llm import LLMClient, ModelRequest
from nbagent.testing import SimServer

REQ = ModelRequest(model="sim", messages=[{"role": "user", "content": "hi"}])


async def wait_idle(srv: Any) -> None:
    """Wait until the server has no request in flight (cancelled ones from the last run included)."""
    for _ in range(500):
        if (await asyncio.to_thread(srv.stats))["in_flight"] == 0:
            return
        await asyncio.sleep(0.02)


async def one_run(srv: Any, concurrency: str, initial: int, workers: int, seconds: float) -> dict[str, Any]:
    settings = Settings.load(env={"NBAGENT_BASE_URL": srv.url, "NBAGENT_MODEL": "sim"})
    settings.count_tokens = False
    settings.http = dataclasses.replace(settings.http, concurrency=concurrency, concurrency_initial=initial)
    settings.retry = dataclasses.replace(settings.retry, max_attempts=1000, budget_min=1e9)
    client = LLMClient(settings, bus=EventBus())
    await asyncio.to_thread(srv.reset)
    done = 0
    latency = 0.0

    async def worker() -> None:
        nonlocal done, latency
        while True:
            t0 = time.perf_counter()
            await client.request(REQ)
            latency += time.perf_counter() - t0
            done += 1

    tasks = [asyncio.ensure_future(worker()) for _ in range(workers)]
    started = time.perf_counter()
    await asyncio.sleep(1.0)
    first = (await asyncio.to_thread(srv.stats))["capacity"]["rejected"]  # the first round trips' rejections
    await asyncio.sleep(seconds / 2 - 1.0)
    done_warm, t_warm = done, time.perf_counter()  # steady state: the second half of the run
    await asyncio.sleep(seconds / 2)
    elapsed = time.perf_counter() - started
    steady = (done - done_warm) / (time.perf_counter() - t_warm)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats = await asyncio.to_thread(srv.stats)
    (limiter,) = client.limiters
    await client.aclose()
    await wait_idle(srv)
    cap = stats["capacity"]
    return {"throughput": done / elapsed, "steady": steady, "requests": stats["requests"], "rejected": cap["rejected"],
            "rejected_pct": 100.0 * cap["rejected"] / max(stats["requests"], 1),
            "rejected_later_pct": 100.0 * (cap["rejected"] - first) / max(stats["requests"], 1),
            "latency": latency / max(done, 1), "limit": limiter.limit}


async def sweep(mode: str, args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    srv = await asyncio.to_thread(SimServer.spawn, latency=args.latency, capacity=args.capacity, overload=mode,
                                  overload_retry_after=args.retry_after, record_history=False)
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        for n in args.sweep:
            rows.append((f"fixed {n}", await one_run(srv, str(n), n, args.workers, args.seconds)))
        for start in args.starts:
            rows.append((f"adaptive from {start}",
                         await one_run(srv, "adaptive", start, args.workers, args.adaptive_seconds)))
    finally:
        await asyncio.to_thread(srv.stop)
    return rows


def show(mode: str, rows: list[tuple[str, dict[str, Any]]], capacity: int) -> None:
    best = max(r["throughput"] for name, r in rows if name.startswith("fixed"))
    best_steady = max(r["steady"] for name, r in rows if name.startswith("fixed"))
    beyond = "queues" if mode == "queue" else "answers 429"
    print(f"\n{mode}: the server takes {capacity} at once, beyond that it {beyond}")
    print(f"{'limit':<18}{'req/s':>7}{'vs best':>9}{'2nd half':>10}{'vs best':>9}{'rejected':>10}{'after 1 s':>11}"
          f"{'latency':>9}{'final limit':>13}")
    for name, r in rows:
        flag = ""
        if name.startswith("adaptive"):
            whole = r["throughput"] >= 0.9 * best and r["rejected_pct"] <= 1.0
            steady = r["steady"] >= 0.9 * best_steady and r["rejected_later_pct"] <= 1.0
            flag = "  targets met" if whole else "  targets met in 2nd half" if steady else "  targets missed"
        print(f"{name:<18}{r['throughput']:>7.0f}{r['throughput'] / best:>9.0%}{r['steady']:>10.0f}"
              f"{r['steady'] / best_steady:>9.0%}{r['rejected_pct']:>9.1f}%{r['rejected_later_pct']:>10.1f}%"
              f"{r['latency'] * 1000:>7.0f}ms{r['limit']:>13}{flag}")


async def main(args: argparse.Namespace) -> None:
    out: dict[str, Any] = {}
    for mode in args.modes:
        rows = await sweep(mode, args)
        show(mode, rows, args.capacity)
        out[mode] = dict(rows)
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(out, indent=2))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--capacity", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.25, help="seconds per answer (default 0.25)")
    p.add_argument("--retry-after", type=float, default=0.5, help="Retry-After of a 429 (default 0.5 s)")
    p.add_argument("--workers", type=int, default=256, help="requests wanted at once (default 256)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of a run at a fixed limit (default 5)")
    p.add_argument("--adaptive-seconds", type=float, default=10.0, help="length of an adaptive run (default 10)")
    p.add_argument("--sweep", type=lambda s: [int(x) for x in s.split(",")], default=[16, 32, 64, 128, 256])
    p.add_argument("--starts", type=lambda s: [int(x) for x in s.split(",")], default=[2, 512])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["queue", "reject"])
    p.add_argument("--json", help="write the figures as JSON")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
