"""Sandbox figures: cold create + first exec, warm lease latency, exec overhead vs a raw exec.

    python benchmarks/sandbox.py [--backend docker|local|both] [--iterations N]

Targets: warm lease p50 <= 5 ms and >= 100x faster than a cold create + first exec; exec overhead
<= 1.2x a raw ``docker exec`` of the same command (through the Docker SDK, and the CLI for reference);
for the local backend, overhead vs the same ``bwrap`` command line spawned directly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nbagent.events import EventBus  # noqa: E402
from nbagent.sandbox import PoolConfig, SandboxManager, SandboxSpec  # noqa: E402
from nbagent.sandbox.stats import percentile  # noqa: E402

COMMAND = ["echo", "hi"]


def ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.2f} ms"


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def cold_starts(spec: SandboxSpec, n: int) -> list[float]:
    """A fresh manager with an empty pool: lease (create) and run the first command."""
    out = []
    for _ in range(n):
        m = SandboxManager(spec, PoolConfig(min_idle=0, max_total=1), bus=EventBus(), prune_on_start=False)
        started = time.perf_counter()
        async with m.lease() as sb:
            await sb.exec(COMMAND)
        out.append(time.perf_counter() - started)
        await m.aclose()
    return out


async def warm_leases(m: SandboxManager, n: int) -> list[float]:
    """Lease from a warm pool: the time until the sandbox is in hand (the check runs after release)."""
    out = []
    for _ in range(n):
        await m.settle()  # the returned sandbox is checked and idle again
        cm = m.lease()
        started = time.perf_counter()
        await cm.__aenter__()
        out.append(time.perf_counter() - started)
        await cm.__aexit__(None, None, None)
    return out


def report(name: str, cold: list[float], warm: list[float], ours: list[float], raws: dict[str, list[float]]) -> None:
    cold_p50 = statistics.median(cold)
    warm_p50, warm_p95 = percentile(warm, 50), percentile(warm, 95)
    assert warm_p50 is not None
    print(f"\n== {name} ==")
    print(f"cold create + first exec   p50 {ms(cold_p50)}  (n={len(cold)})")
    verdict = "ok" if warm_p50 <= 0.005 and cold_p50 / warm_p50 >= 100 else "MISSED"
    print(f"warm lease                 p50 {ms(warm_p50)}  p95 {ms(warm_p95)}  "
          f"-> {cold_p50 / warm_p50:,.0f}x faster than cold  [{verdict}: p50 <= 5 ms, >= 100x]")
    ours_p50 = statistics.median(ours)
    print(f"exec {' '.join(COMMAND)!r:<21} p50 {ms(ours_p50)}  p95 {ms(percentile(ours, 95))}  (sandbox.exec)")
    for label, raw in raws.items():
        raw_p50 = statistics.median(raw)
        ratio = ours_p50 / raw_p50
        print(f"  raw {label:<22} p50 {ms(raw_p50)}  -> overhead {ratio:.2f}x"
              + ("" if "CLI" in label else f"  [{'ok' if ratio <= 1.2 else 'MISSED'}: <= 1.2x]"))


async def bench_docker(iterations: int) -> None:
    import docker

    client = docker.from_env()
    spec = SandboxSpec(backend="docker", timeout=30)
    cold = await cold_starts(spec, 5)
    m = SandboxManager(spec, PoolConfig(min_idle=1, max_total=2), bus=EventBus(), prune_on_start=False)
    try:
        await m.start()
        warm = await warm_leases(m, iterations)
        ours: list[float] = []
        sdk: list[float] = []
        cli: list[float] = []
        async with m.lease() as sb:
            container = client.containers.get(sb.id)
            for _ in range(5):  # warm up connections and caches
                await sb.exec(COMMAND)
                await asyncio.to_thread(container.exec_run, COMMAND, user=spec.user)
            for _ in range(iterations):  # interleaved, so drift hits both alike
                ours.append(await timed(lambda: sb.exec(COMMAND)))
                sdk.append(await timed(lambda: asyncio.to_thread(container.exec_run, COMMAND, user=spec.user)))
            for _ in range(max(10, iterations // 5)):
                cli.append(await timed(lambda: asyncio.to_thread(
                    subprocess.run, ["docker", "exec", "-u", spec.user, sb.id, *COMMAND], capture_output=True)))
        report("docker", cold, warm, ours, {"docker SDK exec_run": sdk, "`docker exec` CLI": cli})
    finally:
        await m.aclose()
        client.close()


async def bench_local(iterations: int) -> None:
    from nbagent.sandbox.local import LocalBackend, _bwrap_args, _drop_privileges

    root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="nbagent-bench-"))
    await asyncio.to_thread(os.chmod, root, 0o711)
    backend = LocalBackend(root)
    spec = SandboxSpec(backend="local", timeout=30)
    try:
        cold = []
        for _ in range(5):
            m = SandboxManager(spec, PoolConfig(min_idle=0, max_total=1), bus=EventBus(), prune_on_start=False,
                               backends={"local": backend})
            started = time.perf_counter()
            async with m.lease() as sb:
                await sb.exec(COMMAND)
            cold.append(time.perf_counter() - started)
            await m.aclose()
        m = SandboxManager(spec, PoolConfig(min_idle=1, max_total=2), bus=EventBus(), prune_on_start=False,
                           backends={"local": backend})
        try:
            await m.start()
            warm = await warm_leases(m, iterations)
            ours: list[float] = []
            raw: list[float] = []
            async with m.lease() as sb:
                workspace = str(root / sb.id / "workspace")
                argv = [*_bwrap_args(backend.bwrap or "bwrap", spec, workspace), "--", *COMMAND]

                async def direct() -> None:
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                        stdin=asyncio.subprocess.DEVNULL, **_drop_privileges(spec))
                    await proc.communicate()

                for _ in range(5):
                    await sb.exec(COMMAND)
                    await direct()
                for _ in range(iterations):
                    ours.append(await timed(lambda: sb.exec(COMMAND)))
                    raw.append(await timed(direct))
            mode = "bubblewrap" if sb.isolated else "plain subprocess (not isolated)"
            report(f"local ({mode})", cold, warm, ours, {"bwrap spawn": raw})
        finally:
            await m.aclose()
    finally:
        await asyncio.to_thread(shutil.rmtree, root, True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("docker", "local", "both"), default="both")
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    print(f"sandbox benchmark: {args.iterations} iterations, command {' '.join(COMMAND)!r}")
    if args.backend in ("docker", "both"):
        await bench_docker(args.iterations)
    if args.backend in ("local", "both"):
        await bench_local(args.iterations)


if __name__ == "__main__":
    asyncio.run(main())
