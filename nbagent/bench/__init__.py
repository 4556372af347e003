"""Load tests: N agent runs at concurrency C against an endpoint (by default the built-in simulated server).

::

    from nbagent.bench import bench, run_bench

    result = await bench(200, 50, latency=0.1, fault_rate=0.02)   # in a notebook or async code
    result = run_bench(200, 50, ramp_up=5)                        # blocking
    print(result.summary()); result.figure()                      # plotly, notebooks only
    result.to_json("bench.json"); result.to_csv("bench.csv")

On the command line: ``nbagent bench --runs 200 --concurrency 50 --latency 0.1 --json bench.json``.
"""

from __future__ import annotations

from .report import PHASES, BenchResult
from .runner import bench, run_bench

__all__ = ["PHASES", "BenchResult", "bench", "run_bench"]
