"""Cost of a policy check on a tool call: a cached decision vs an uncached one (target cached p50 <= 5 us).

    python benchmarks/policy.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from nbagent.events import EventBus
from nbagent.policy import Policy, Rule


def rules() -> list[Rule]:
    return [Rule("shell", "deny", when={"command": r"\brm\s+-rf\b"}), Rule("shell", "ask", when={"command": "^sudo"}),
            Rule("write_file", "deny", when={"path": r"^/(etc|usr)/"}), Rule("*", "allow")]


async def measure(n: int, cached: bool) -> list[float]:
    policy = Policy(rules(), bus=EventBus(), cache_size=max(n * 2, 16))
    args = [{"command": f"ls {i}", "cwd": "/tmp"} for i in range(n)]
    if cached:
        await policy.decide("shell", args[0])
        args = [args[0]] * n
    times = []
    for a in args:
        t0 = time.perf_counter()
        await policy.decide("shell", a)
        times.append(time.perf_counter() - t0)
    return times


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))] * 1e6


async def main(n: int) -> None:
    await measure(1000, True)  # warm up
    hit = await measure(n, True)
    miss = await measure(n, False)
    print(f"cached decision   p50 {pct(hit, .5):6.2f} us  p99 {pct(hit, .99):6.2f} us  (target p50 <= 5 us)")
    print(f"uncached decision p50 {pct(miss, .5):6.2f} us  p99 {pct(miss, .99):6.2f} us  ({n} distinct calls)")
    print(f"RESULT policy_cached_p50_us={pct(hit, .5):.2f} policy_uncached_p50_us={pct(miss, .5):.2f} "
          f"mean_ratio={statistics.mean(miss) / statistics.mean(hit):.1f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20000)
    asyncio.run(main(p.parse_args().n))
