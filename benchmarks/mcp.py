"""MCP tool calls: a pooled session vs a session per call, at 1 and at 50 concurrent calls, in one run.

Against the project's test MCP server (``nbagent.testing.mcp_server``, its ``echo`` tool) in a separate process,
over streamable HTTP by default (a session per call over stdio would start a Python process per call; ``--stdio``
measures that too, at concurrency 1 only). For each mode and concurrency: median and p95 latency per call and
client CPU per call (this process's CPU time / calls; the server's CPU is not counted), then the ratios
per-call / pooled.

    python benchmarks/mcp.py [--calls 200 --per-call-calls 60 --stdio]
"""

from __future__ import annotations

import sys
from pathlib import Path

# this file is named mcp.py: keep its folder off the path, or it would shadow the mcp package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import nbagent  # noqa: E402
from nbagent.events import EventBus  # noqa: E402
from nbagent.mcp import MCPServer, MCPSession  # noqa: E402

ROOT = str(Path(nbagent.__file__).resolve().parents[1])


async def pooled(server: MCPServer, calls: int, concurrency: int) -> tuple[list[float], float]:
    session = MCPSession(server, EventBus())
    await session.ensure()
    await session.call("echo", {"text": "warm"})
    try:
        return await measure(lambda i: session.call("echo", {"text": f"m{i}"}), calls, concurrency)
    finally:
        await session.aclose()


async def per_call(server: MCPServer, calls: int, concurrency: int) -> tuple[list[float], float]:
    async def one(i: int) -> Any:
        session = MCPSession(server, EventBus())
        try:
            return await session.call("echo", {"text": f"m{i}"})
        finally:
            await session.aclose()

    return await measure(one, calls, concurrency)


async def measure(fn: Any, calls: int, concurrency: int) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def run(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            await fn(i)
            latencies.append(time.perf_counter() - t0)

    cpu0 = time.process_time()
    await asyncio.gather(*(run(i) for i in range(calls)))
    return latencies, (time.process_time() - cpu0) / calls


def row(label: str, lat: list[float], cpu: float) -> dict[str, float]:
    lat = sorted(lat)
    p50, p95 = statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.95))]
    print(f"  {label:<28} p50 {p50 * 1e3:8.2f} ms  p95 {p95 * 1e3:8.2f} ms  CPU/call {cpu * 1e3:7.3f} ms")
    return {"p50": p50, "p95": p95, "cpu": cpu}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_http_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nbagent.testing.mcp_server", "--http", str(port)],
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the MCP test server did not start")


async def main(args: argparse.Namespace) -> None:
    proc, url = start_http_server()
    try:
        server = MCPServer(url=url, name="bench", timeout=120, startup_timeout=120)
        for conc in (1, 50):
            print(f"streamable HTTP, {conc} concurrent call(s):")
            a = row("pooled session", *await pooled(server, args.calls, conc))
            b = row("session per call", *await per_call(server, args.per_call_calls, conc))
            print(f"  ratio per-call / pooled: latency p50 {b['p50'] / a['p50']:.1f}x, "
                  f"CPU per call {b['cpu'] / a['cpu']:.1f}x")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    if args.stdio:
        server = MCPServer(command=sys.executable, args=["-m", "nbagent.testing.mcp_server"],
                           env={"PYTHONPATH": ROOT}, name="bench-stdio", startup_timeout=120)
        print("stdio, 1 call at a time:")
        a = row("pooled session", *await pooled(server, args.calls, 1))
        b = row("session per call (a process)", *await per_call(server, 3, 1))
        print(f"  ratio per-call / pooled: latency p50 {b['p50'] / a['p50']:.0f}x, "
              f"CPU per call {b['cpu'] / a['cpu']:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per pooled measurement")
    parser.add_argument("--per-call-calls", type=int, default=60, help="calls per session-per-call measurement")
    parser.add_argument("--stdio", action="store_true", help="also stdio at concurrency 1 (a process per call)")
    asyncio.run(main(parser.parse_args()))
