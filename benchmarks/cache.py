"""Response cache figures, in one process run, against the simulated server in a separate process.

1. Memory-tier hit latency: ``CachedModel.request`` answered from the in-memory LRU (key included; the
   metrics registry tapped on the bus, as in an agent). Target p50 <= 50 us.
2. SQLite-tier hit latency: the same with no memory tier, over a file of ``--entries`` entries.
   Target p50 <= 1 ms.
3. Miss overhead: sequential uncached calls vs the same calls through the cache in read-write mode (every one
   a miss, then a store), server latency ``--latency``. Reported as the difference of median call times and as
   the cache's own measured miss-lookup time. Target <= 5 %.
4. Notebook re-run: the same ``--runs`` agent runs (prompt -> tool call -> answer) twice, ``--concurrency`` at a
   time; the second pass is served from the cache. Reports both wall times and the speed-up.

    python benchmarks/cache.py [--latency 0.05 --entries 1000 --runs 50 --concurrency 1]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nbagent import Agent, Settings, tool
from nbagent.cache import ResponseCache
from nbagent.events import EventBus
from nbagent.llm import EndpointModel, LLMClient, Model, ModelRequest
from nbagent.metrics import MetricsRegistry
from nbagent.runtime import Runtime
from nbagent.testing import SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


SYSTEM = "You are a careful research assistant. Answer briefly and cite the tool output you used."


def request(i: int) -> ModelRequest:
    """A notebook-sized request: system prompt, a short history, one tool, sampling parameters."""
    return ModelRequest(
        model="sim",
        messages=[{"role": "system", "content": SYSTEM},
                  {"role": "user", "content": f"Load dataset {i} and report the mean of column 'x'."},
                  {"role": "assistant", "content": "I will look it up."},
                  {"role": "user", "content": f"Question {i}: what is the mean?"}],
        tools=[lookup.schema], params={"temperature": 0.0, "max_tokens": 256, "seed": 7})


def settings_for(url: str) -> Settings:
    return Settings.load(env={"NBAGENT_BASE_URL": url, "NBAGENT_MODEL": "sim", "NBAGENT_HOME": "/nonexistent"})


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)]


async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def hit_latencies(model: Model, reqs: list[ModelRequest], n: int) -> list[float]:
    rng = random.Random(1)
    out = []
    gc.disable()
    try:
        for _ in range(n):
            req = reqs[rng.randrange(len(reqs))]
            t0 = time.perf_counter()
            resp = await model.request(req)
            out.append(time.perf_counter() - t0)
            assert resp.cached
    finally:
        gc.enable()
    return out


async def bench_hits(url: str, tmp: Path, args: argparse.Namespace) -> None:
    bus = EventBus()
    MetricsRegistry().attach(bus)
    client = LLMClient(settings_for(url), bus=bus)
    endpoint = EndpointModel(client, client.settings.endpoint())
    reqs = [request(i) for i in range(args.entries)]

    mem = ResponseCache(":memory:", bus=bus, memory_size=args.entries)
    m = mem.wrap(endpoint)
    for r in reqs[:100]:
        await m.request(r)
    lat = await hit_latencies(m, reqs[:100], args.hits)
    print(f"memory-tier hit   p50 {pct(lat, .5) * 1e6:7.1f} us   p99 {pct(lat, .99) * 1e6:7.1f} us   "
          f"({len(lat)} hits; target p50 <= 50 us)")

    disk = ResponseCache(tmp / "hits.sqlite3", bus=bus, memory_size=0)
    d = disk.wrap(endpoint)
    await asyncio.gather(*(d.request(r) for r in reqs))
    await disk.flush()
    lat = await hit_latencies(d, reqs, args.hits)
    print(f"sqlite-tier hit   p50 {pct(lat, .5) * 1e6:7.1f} us   p99 {pct(lat, .99) * 1e6:7.1f} us   "
          f"({len(lat)} hits over {disk.stats().entries} entries, {disk.stats().bytes / 1024:.0f} KiB; "
          f"target p50 <= 1000 us)")
    await mem.aclose()
    await disk.aclose()
    await client.aclose()


async def bench_miss_overhead(url: str, tmp: Path, args: argparse.Namespace, latency: float) -> None:
    bus = EventBus()
    client = LLMClient(settings_for(url), bus=bus)
    endpoint = EndpointModel(client, client.settings.endpoint())
    cache = ResponseCache(tmp / f"miss-{latency}.sqlite3", bus=bus)
    cached = cache.wrap(endpoint)
    for i in range(20):  # warm up the pool, tiktoken and the file
        await endpoint.request(request(10_000_000 + i))
        await cached.request(request(20_000_000 + i))
    plain_t: list[float] = []
    cached_t: list[float] = []
    n = args.miss_calls
    for i in range(n):  # interleaved, so drift on the machine hits both alike
        t0 = time.perf_counter()
        await endpoint.request(request(30_000_000 + i))
        plain_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        resp = await cached.request(request(40_000_000 + i))
        cached_t.append(time.perf_counter() - t0)
        assert not resp.cached
    await cache.flush()
    p_plain, p_cached = statistics.median(plain_t), statistics.median(cached_t)
    own = cache.stats().lookup_p50.get("miss", 0.0)
    print(f"miss overhead @ {latency * 1000:4.0f} ms server latency: uncached p50 {p_plain * 1000:7.2f} ms, "
          f"through cache p50 {p_cached * 1000:7.2f} ms -> {(p_cached - p_plain) / p_plain:+6.1%}; "
          f"the cache's own miss lookup p50 {own * 1e6:.0f} us = {own / p_plain:.1%} (target <= 5 %)")
    await cache.aclose()
    await client.aclose()


async def bench_rerun(url: str, tmp: Path, args: argparse.Namespace) -> None:
    bus = EventBus()
    registry = MetricsRegistry()
    registry.attach(bus)
    settings = settings_for(url)
    client = LLMClient(settings, bus=bus)
    cache = ResponseCache(tmp / "rerun.sqlite3", bus=bus, namespace="notebook")
    agent = Agent("sim", [lookup], runtime=Runtime(settings, bus=bus, client=client), cache=cache, system=SYSTEM)
    sem = asyncio.Semaphore(args.concurrency)

    async def one(i: int) -> str:
        async with sem:
            r = await agent.run(f"Analyse sample {i}: what is its mean?")
            if not r.ok:
                raise RuntimeError(r.stop_reason)
            return r.output

    async def notebook() -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(one(i) for i in range(args.runs)))
        return time.perf_counter() - t0, list(outs)

    first, out1 = await notebook()
    second, out2 = await notebook()
    assert out1 == out2
    s = cache.stats()
    print(f"notebook re-run: {args.runs} agent runs ({args.concurrency} at a time, {s.misses} model calls): "
          f"first {first:.2f} s, re-run {second * 1000:.1f} ms from cache -> {first / second:,.0f}x faster; "
          f"hit rate {registry.hit_rate('response'):.0%}, {s.tokens_saved:,} tokens and {s.latency_saved:.1f} s "
          f"of model time saved")
    await cache.aclose()
    await client.aclose()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with SimServer.spawn(latency=0.0, tool_calls_per_run=1) as srv:
            await bench_hits(srv.url, tmp, args)
            await bench_miss_overhead(srv.url, tmp, args, 0.0)
            srv.configure(latency=args.latency)
            await bench_miss_overhead(srv.url, tmp, args, args.latency)
            await bench_rerun(srv.url, tmp, args)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=float, default=0.05, help="simulated model latency (s)")
    p.add_argument("--entries", type=int, default=1000, help="entries in the SQLite file for tier-2 hits")
    p.add_argument("--hits", type=int, default=5000, help="hits timed per tier")
    p.add_argument("--miss-calls", type=int, default=200, help="calls timed per side for the miss overhead")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=1, help="runs in flight at once (1: cells one by one)")
    asyncio.run(main(p.parse_args()))
