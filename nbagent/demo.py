"""The main job until the embedded model lands: concurrent agent runs with a tool against the built-in
simulated OpenAI-compatible server (real HTTP on loopback), with live progress and the figures that matter.
"""

from __future__ import annotations

import asyncio
import sys
import time

from nbagent.runtime import Runtime

from .agent import Agent, tool
from .config import Settings
from .events import EventBus, RunFinished
from .llm import LLMClient
from .metrics import MetricsRegistry
from .testing import SimServer

__all__ = ["run_demo"]


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as ``6 * 7``.

    Args:
        expression: digits, + - * / ( ) and spaces only
    """
    if not expression or set(expression) - set("0123456789+-*/(). "):
        raise ValueError("only digits, spaces and + - * / ( ) are allowed")
    return str(eval(expression, {"__builtins__": {}}, {}))  # noqa: S307 - input restricted to arithmetic above


def _progress(done: int, total: int, start: float) -> None:
    width = 30
    filled = width * done // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\r  runs [{bar}] {done}/{total}  {time.perf_counter() - start:5.2f} s")
    sys.stderr.flush()


async def run_demo(prompt: str = "What is 6 times 7? Use the calculator.", runs: int = 3,
                   latency: float = 0.05) -> int:
    """Start the simulated server, run ``runs`` agents at once, print answers, usage, latency and pool figures."""

    def reply(body: dict) -> object:  # the simulated model: call the calculator once, then answer with its result
        from .testing import Reply

        msgs = body["messages"]
        tool_results = [m for m in msgs if m["role"] == "tool"]
        if not tool_results:
            return Reply(tool_calls=[("calculator", {"expression": "6 * 7"})])
        return Reply(text=f"6 times 7 is {tool_results[-1]['content']}.")

    async with SimServer(latency=latency, behavior=reply) as srv:  # type: ignore[arg-type]
        print(f"nbagent demo: {runs} concurrent agent runs against the simulated server at {srv.url}")
        print(f"  (simulated model latency {latency * 1000:.0f} ms; no API key or network needed)\n")
        bus = EventBus()
        metrics = MetricsRegistry()
        metrics.attach(bus)
        settings = Settings.load(base_url=srv.url, model="sim-model")
        client = LLMClient(settings, bus=bus)
        agent = Agent("sim-model", [calculator], system="You are a careful calculator.",
                      runtime=Runtime(settings, bus=bus, client=client))
        done = 0
        start = time.perf_counter()

        def on_event(ev: object) -> None:
            nonlocal done
            if isinstance(ev, RunFinished):
                done += 1
                _progress(done, runs, start)

        bus.tap(on_event)
        _progress(0, runs, start)
        results = await asyncio.gather(*(agent.run(prompt, name=f"demo-{i + 1}") for i in range(runs)))
        sys.stderr.write("\n\n")
        for r in results:
            print(f"[{r.name}] {r.output}")
            print(f"    {r.summary()}")
        lat = metrics.histogram("llm.latency")
        tools = metrics.histogram("tool.duration")
        print("\nAcross all runs:")
        p50, p95, p99 = ((q or 0.0) * 1000 for q in (lat.p50, lat.p95, lat.p99))
        print(f"  model calls      {metrics.counter('llm.calls').value:.0f}  latency p50 {p50:.1f} ms, "
              f"p95 {p95:.1f} ms, p99 {p99:.1f} ms")
        print(f"  tool calls       {metrics.counter('tool.calls').value:.0f}  duration p50 "
              f"{(tools.p50 or 0) * 1e6:.0f} us")
        print(f"  tokens           in {metrics.counter('tokens.input').value:.0f}, "
              f"out {metrics.counter('tokens.output').value:.0f}")
        retries, errors = metrics.counter("llm.retries").value, metrics.counter("llm.errors").value
        print(f"  retries / errors {retries:.0f} / {errors:.0f}")
        pool = client.pool_stats()
        print(f"  HTTP pool        peak {pool['peak_in_flight']} requests in flight, "
              f"{pool.get('connections_idle', '?')} idle connections kept, {pool['pool_waits']} waits for a connection")
        print(f"  wall time        {time.perf_counter() - start:.2f} s for {runs} runs")
        await client.aclose()
        return 0 if all(r.ok for r in results) else 1
