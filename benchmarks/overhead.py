"""Client overhead of nbagent vs the floor (raw HTTP) and a bare ``openai`` SDK loop, in one process run.

Workload: N runs, each prompt -> tool call -> tool call -> answer, against the simulated server in a
separate process (so its CPU is not counted here).

The floor is the least a client can do on a stock HTTP client: one pooled aiohttp session, ``json.dumps`` /
``json.loads``, the same 3-call loop and nothing else. nbagent runs with metrics, token counting and the run
store on. Its direct transport does not use aiohttp's request machinery for these requests (it has its own
HTTP/1.1 connections, ``nbagent/llm/conns.py``), so part of what it spends on its own work is won back there.

The floor calls the tool on the event loop. nbagent runs the same function twice: declared
``@tool(inline=True)`` (called on the loop, like the floor) and as a plain sync tool (the default: called in
a thread of the runtime, so that a slow tool cannot block the loop; the hand-over costs CPU, shown apart).

Both nbagent and the floor keep the same number of requests in flight: nbagent's endpoint limit is fixed at
the benchmark's concurrency. The adaptive limit (the default) reads latency: against a server that shares
this machine's two cores it holds fewer requests in flight, which changes what is measured (it has its own
benchmark, ``benchmarks/adaptive.py``); the throughput part prints the adaptive default as well.

1. CPU per LLM call at moderate concurrency (server answers at once): process CPU time / LLM calls,
   for the floor, the bare SDK loop and nbagent, in five interleaved rounds; nbagent's ratio to both as the
   median of per-round ratios (and the ratio of the best rounds). Then the same streamed.
2. Throughput at high concurrency (default 1,000 runs, 500 in flight, server answers after 100 ms):
   LLM calls per second for the floor, nbagent (fixed and adaptive limit) in five interleaved rounds (the
   best round of each, and nbagent's ratio to the floor as the median of per-round ratios), then the bare SDK
   loop with its default client and with the SDK's aiohttp client; peak traced memory per in-flight nbagent
   run. The simulated server shares the machine: at these rates it uses about half a core on uvloop (about
   70 % on asyncio's own loop).

    python benchmarks/overhead.py [--runs 500 --concurrency 20 --hc-runs 1000 --hc-concurrency 500]
                                  [--parts cpu,stream,throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai

from nbagent import Agent, Settings, tool
from nbagent.events import EventBus
from nbagent.llm import LLMClient
from nbagent.metrics import MetricsRegistry
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.testing import SimServer


def _lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


lookup = tool(name="lookup")(_lookup)  # a sync tool: run in a thread of the runtime (the default)
lookup_inline = tool(name="lookup", inline=True)(_lookup)  # declared quick: called on the event loop

TOOLS = [lookup.schema]


async def bare_run(client: openai.AsyncOpenAI, prompt: str) -> int:
    """The loop a user would write directly on the SDK."""
    messages: list[Any] = [{"role": "user", "content": prompt}]
    calls = 0
    while True:
        resp = await client.chat.completions.create(model="sim", messages=messages, tools=TOOLS)  # type: ignore
        calls += 1
        msg = resp.choices[0].message
        if not msg.tool_calls:
            return calls
        messages.append({"role": "assistant", "content": msg.content or "",
                         "tool_calls": [tc.model_dump() for tc in msg.tool_calls]})
        for tc in msg.tool_calls:
            args = json.loads(tc.function.arguments)
            messages.append({"role": "tool", "tool_call_id": tc.id, "content": lookup(**args)})


async def floor_run(session: aiohttp.ClientSession, url: str, prompt: str) -> int:
    """The floor: the same loop over one pooled aiohttp session with json.dumps / json.loads, nothing else."""
    messages: list[Any] = [{"role": "user", "content": prompt}]
    calls = 0
    while True:
        body = json.dumps({"model": "sim", "messages": messages, "tools": TOOLS})
        async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                          "Authorization": "Bearer k"}) as r:
            data = json.loads(await r.read())
        calls += 1
        msg = data["choices"][0]["message"]
        if not msg.get("tool_calls"):
            return calls
        messages.append({"role": "assistant", "content": msg.get("content") or "", "tool_calls": msg["tool_calls"]})
        for tc in msg["tool_calls"]:
            args = json.loads(tc["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": lookup(**args)})


async def floor_stream_run(session: aiohttp.ClientSession, url: str, prompt: str) -> int:
    """The floor, streaming: the same loop, each answer read as server-sent events over the pooled session."""
    messages: list[Any] = [{"role": "user", "content": prompt}]
    calls = 0
    while True:
        body = json.dumps({"model": "sim", "messages": messages, "tools": TOOLS, "stream": True,
                           "stream_options": {"include_usage": True}})
        text: list[str] = []
        calls_by_index: dict[int, dict[str, Any]] = {}
        async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                          "Authorization": "Bearer k"}) as r:
            async for line in r.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                chunk = json.loads(line[6:])
                for choice in chunk.get("choices") or ():
                    delta = choice["delta"]
                    if delta.get("content"):
                        text.append(delta["content"])
                    for tc in delta.get("tool_calls") or ():
                        acc = calls_by_index.setdefault(tc["index"], {"id": "", "type": "function",
                                                                      "function": {"name": "", "arguments": ""}})
                        acc["id"] = tc.get("id") or acc["id"]
                        fn = tc.get("function") or {}
                        acc["function"]["name"] += fn.get("name") or ""
                        acc["function"]["arguments"] += fn.get("arguments") or ""
        calls += 1
        if not calls_by_index:
            return calls
        tool_calls = [calls_by_index[i] for i in sorted(calls_by_index)]
        messages.append({"role": "assistant", "content": "".join(text), "tool_calls": tool_calls})
        for tc in tool_calls:
            args = json.loads(tc["function"]["arguments"])
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": lookup(**args)})


def floor_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))


async def gather_bounded(n: int, concurrency: int, fn: Callable[[int], Awaitable[int]]) -> int:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            return await fn(i)

    return sum(await asyncio.gather(*(one(i) for i in range(n))))


STORE_DIR = tempfile.TemporaryDirectory(prefix="nbagent-overhead-")


def make_agent(url: str, bus: EventBus, *, inline: bool = True, concurrency: int | str = "adaptive",
               stream: bool = False) -> tuple[Agent, LLMClient, MetricsRegistry]:
    """An agent with metrics, token counting and the run store on (a store file of its own)."""
    settings = Settings.load(env={"NBAGENT_BASE_URL": url, "NBAGENT_MODEL": "sim", "NBAGENT_HOME": "/nonexistent"})
    settings = settings.replace(http__concurrency=concurrency)
    client = LLMClient(settings, bus=bus)
    registry = MetricsRegistry()
    registry.attach(bus)
    rt = Runtime(settings, bus=bus, client=client)
    rt.enable_store(RunStore(f"{STORE_DIR.name}/runs-{time.monotonic_ns()}.db"))
    return Agent("sim", [lookup_inline if inline else lookup], runtime=rt, stream=stream), client, registry


async def measure(name: str, n: int, concurrency: int, fn: Callable[[int], Awaitable[int]]) -> dict[str, float]:
    gc.collect()
    c0, t0 = time.process_time(), time.perf_counter()
    calls = await gather_bounded(n, concurrency, fn)
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    out = {"calls": calls, "cpu_us_per_call": cpu / calls * 1e6, "calls_per_s": calls / wall, "wall_s": wall}
    print(f"  {name:<34} {calls:6d} calls  {out['cpu_us_per_call']:8.0f} us CPU/call  "
          f"{out['calls_per_s']:8.0f} calls/s  ({wall:.2f} s)")
    return out


async def measure_or_fail(name: str, n: int, concurrency: int,
                          fn: Callable[[int], Awaitable[int]]) -> dict[str, float]:
    """:func:`measure`, or zero calls/s when the loop fails (the SDK's httpx pool times out under load)."""
    try:
        return await measure(name, n, concurrency, fn)
    except Exception as exc:  # noqa: BLE001 - a failed baseline is a figure too
        print(f"  {name:<34} failed: {type(exc).__name__}: {exc}")
        return {"calls": 0, "cpu_us_per_call": float("nan"), "calls_per_s": 0.0, "wall_s": float("nan")}


def paired(ours: list[dict[str, float]], floor: list[dict[str, float]]) -> float:
    """The median of the per-round ratios (each round against the baseline's round run just before it): on a
    shared machine whose speed drifts from round to round, steadier than the ratio of the best rounds."""
    return statistics.median(o["cpu_us_per_call"] / f["cpu_us_per_call"] for o, f in zip(ours, floor, strict=True))


async def nbagent_fn(agent: Agent) -> Callable[[int], Awaitable[int]]:
    async def fn(i: int) -> int:
        r = await agent.run(f"task {i}")
        if r.status != "ok":
            raise RuntimeError(r.stop_reason)
        return r.usage.requests
    return fn


async def main(args: argparse.Namespace) -> None:
    print("simulated server (its own process): " + ("uvloop" if SERVER["uvloop"] else
                                                   "asyncio (pip install uvloop: it then takes less of the CPU)"))
    parts = set(args.parts.split(","))
    if unknown := parts - PARTS:
        raise SystemExit(f"--parts: unknown {', '.join(sorted(unknown))} (choose from {', '.join(sorted(PARTS))})")
    if "cpu" in parts:
        await cpu_part(args)
    if "stream" in parts:
        await stream_part(args)
    if "throughput" in parts:
        await throughput_part(args)


PARTS = {"cpu", "stream", "throughput"}
#: The simulated server stands in for a model server on another machine, yet here it shares this machine's
#: cores with the client being measured; so it is made as cheap as it can be: on uvloop when that is installed
#: (about a quarter less CPU per request), and keeping no request history (a list growing by every request body
#: would slow the server's garbage collections round by round). The floor and nbagent meet the same server.
SERVER = {"tool_calls_per_run": 2, "record_history": False, "uvloop": importlib.util.find_spec("uvloop") is not None}


async def cpu_part(args: argparse.Namespace) -> None:
    with SimServer.spawn(latency=0.0, **SERVER) as srv:
        print(f"CPU per LLM call: {args.runs} runs x 3 calls, {args.concurrency} in flight, server latency 0 ms")
        bus = EventBus()
        agent, client, registry = make_agent(srv.url, bus, concurrency=args.concurrency)
        agent_t, client_t, _ = make_agent(srv.url, EventBus(), inline=False, concurrency=args.concurrency)
        bare = openai.AsyncOpenAI(base_url=srv.url, api_key="k", max_retries=0)
        session = floor_session()
        url = f"{srv.url}/chat/completions"
        # warm up every path (imports, pools, tiktoken)
        await measure("warm-up nbagent", 20, 10, await nbagent_fn(agent))
        await measure("warm-up nbagent, tool thread", 20, 10, await nbagent_fn(agent_t))
        await measure("warm-up bare SDK", 20, 10, lambda i: bare_run(bare, f"task {i}"))
        await measure("warm-up floor", 20, 10, lambda i: floor_run(session, url, f"task {i}"))
        res_nb, res_nbt, res_bare, res_floor = [], [], [], []
        for _ in range(args.repeat):
            res_floor.append(await measure("floor (aiohttp + json)", args.runs, args.concurrency,
                                           lambda i: floor_run(session, url, f"task {i}")))
            res_bare.append(await measure("bare openai SDK loop", args.runs, args.concurrency,
                                          lambda i: bare_run(bare, f"task {i}")))
            res_nb.append(await measure("nbagent (metrics, tokens, store)", args.runs, args.concurrency,
                                        await nbagent_fn(agent)))
            res_nbt.append(await measure("nbagent, sync tool in a thread", args.runs, args.concurrency,
                                         await nbagent_fn(agent_t)))
        nb = min(r["cpu_us_per_call"] for r in res_nb)
        nbt = min(r["cpu_us_per_call"] for r in res_nbt)
        ba = min(r["cpu_us_per_call"] for r in res_bare)
        fl = min(r["cpu_us_per_call"] for r in res_floor)
        print(f"RESULT cpu_us_per_call nbagent={nb:.0f} floor={fl:.0f} bare_sdk={ba:.0f} (best rounds) "
              f"nbagent/floor={paired(res_nb, res_floor):.2f}x (median of rounds; target <= 2.0x; best rounds "
              f"{nb / fl:.2f}x) nbagent/bare_sdk={paired(res_nb, res_bare):.2f}x")
        print(f"       with the tool in a thread (the default for a sync tool): nbagent={nbt:.0f} "
              f"nbagent/floor={paired(res_nbt, res_floor):.2f}x (best rounds {nbt / fl:.2f}x) "
              f"nbagent/bare_sdk={paired(res_nbt, res_bare):.2f}x")
        print(f"       metrics saw {registry.counter('llm.calls').value:.0f} calls, "
              f"p50 latency {(registry.histogram('llm.latency').p50 or 0) * 1000:.2f} ms")
        await client.aclose()
        await client_t.aclose()
        await bare.close()
        await session.close()


async def stream_part(args: argparse.Namespace) -> None:
    with SimServer.spawn(latency=0.0, **SERVER) as srv:
        session = floor_session()
        url = f"{srv.url}/chat/completions"
        print("\nStreaming: the same, each answer streamed (server-sent events; live text events in nbagent)")
        agent_s, client_s, _ = make_agent(srv.url, EventBus(), concurrency=args.concurrency, stream=True)
        await measure("warm-up nbagent, stream", 20, 10, await nbagent_fn(agent_s))
        await measure("warm-up floor, stream", 20, 10, lambda i: floor_stream_run(session, url, f"task {i}"))
        res_s, res_fs = [], []
        for _ in range(args.repeat):
            res_fs.append(await measure("floor, stream", args.runs, args.concurrency,
                                        lambda i: floor_stream_run(session, url, f"task {i}")))
            res_s.append(await measure("nbagent, stream", args.runs, args.concurrency, await nbagent_fn(agent_s)))
        nbs = min(r["cpu_us_per_call"] for r in res_s)
        fls = min(r["cpu_us_per_call"] for r in res_fs)
        print(f"RESULT stream cpu_us_per_call nbagent={nbs:.0f} floor={fls:.0f} (best rounds) "
              f"nbagent/floor={paired(res_s, res_fs):.2f}x (median of rounds; best rounds {nbs / fls:.2f}x)")
        await client_s.aclose()
        await session.close()


async def throughput_part(args: argparse.Namespace) -> None:
    with SimServer.spawn(latency=args.latency, **SERVER) as srv:
        print(f"\nThroughput: {args.hc_runs} runs x 3 calls, {args.hc_concurrency} in flight, "
              f"server latency {args.latency * 1000:.0f} ms (ideal {args.hc_concurrency / args.latency:.0f} calls/s)")
        session = floor_session()
        url = f"{srv.url}/chat/completions"
        agent, client, _ = make_agent(srv.url, EventBus(), concurrency=args.hc_concurrency)
        agent_a, client_a, _ = make_agent(srv.url, EventBus())
        hc_floor, hc_nb, hc_adaptive = [], [], []
        for _ in range(args.hc_repeat):  # interleaved rounds: the server shares this machine's two cores
            hc_floor.append(await measure("floor (aiohttp + json)", args.hc_runs, args.hc_concurrency,
                                          lambda i: floor_run(session, url, f"task {i}")))
            hc_nb.append(await measure("nbagent (store on)", args.hc_runs, args.hc_concurrency,
                                       await nbagent_fn(agent)))
            hc_adaptive.append(await measure("nbagent, adaptive limit", args.hc_runs, args.hc_concurrency,
                                             await nbagent_fn(agent_a)))
        await session.close()
        await client.aclose()
        await client_a.aclose()
        floor_res, nb_res, nb_adaptive = (max(rs, key=lambda r: r["calls_per_s"]) for rs in (hc_floor, hc_nb,
                                                                                               hc_adaptive))
        rate_ratio = statistics.median(n["calls_per_s"] / f["calls_per_s"]
                                       for n, f in zip(hc_nb, hc_floor, strict=True))
        bare = openai.AsyncOpenAI(base_url=srv.url, api_key="k", max_retries=0)
        bare_res = await measure_or_fail("bare SDK, default client", args.hc_runs, args.hc_concurrency,
                                         lambda i: bare_run(bare, f"task {i}"))
        await bare.close()
        aio = openai.AsyncOpenAI(base_url=srv.url, api_key="k", max_retries=0,
                                 http_client=openai.DefaultAioHttpClient())
        aio_res = await measure_or_fail("bare SDK, DefaultAioHttpClient", args.hc_runs, args.hc_concurrency,
                                        lambda i: bare_run(aio, f"task {i}"))
        await aio.close()
        print(f"RESULT calls_per_s floor={floor_res['calls_per_s']:.0f} nbagent={nb_res['calls_per_s']:.0f} "
              f"(best rounds; target >= 2000) nbagent/floor={rate_ratio:.2f}x (median of rounds) "
              f"adaptive={nb_adaptive['calls_per_s']:.0f} "
              f"bare_default={bare_res['calls_per_s']:.0f} bare_aiohttp={aio_res['calls_per_s']:.0f}")

        # memory: peak traced allocation while hc_concurrency nbagent runs are in flight at once
        bus = EventBus()
        agent, client, registry = make_agent(srv.url, bus, concurrency=args.hc_concurrency)
        await measure("nbagent warm-up for memory", 50, 50, await nbagent_fn(agent))
        gc.collect()
        tracemalloc.start()
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await gather_bounded(args.hc_concurrency, args.hc_concurrency, await nbagent_fn(agent))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"RESULT peak_memory_per_inflight_run={(peak - base) / args.hc_concurrency / 1024:.1f} KiB "
              f"({args.hc_concurrency} runs in flight, traced by tracemalloc)")
        await client.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--hc-runs", type=int, default=1000)
    p.add_argument("--hc-concurrency", type=int, default=500)
    p.add_argument("--hc-repeat", type=int, default=5)
    p.add_argument("--latency", type=float, default=0.1)
    p.add_argument("--parts", default="cpu,stream,throughput",
                   help="which parts to run, comma-separated: cpu, stream, throughput")
    asyncio.run(main(p.parse_args()))
