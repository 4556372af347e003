"""``nbagent bench``: a load test from the command line, with a progress bar and a JSON/CSV result."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="load-test an agent setup: N runs at concurrency C (simulated server by default)")
    p.add_argument("--runs", "-n", type=int, default=200, help="how many runs (default 200)")
    p.add_argument("--concurrency", "-c", type=int, default=20, help="runs in flight at once (default 20)")
    p.add_argument("--ramp-up", type=float, default=0.0, help="seconds over which to reach full concurrency")
    p.add_argument("--prompt", default=None, help="the prompt of every run")
    p.add_argument("--base-url", help="benchmark this OpenAI-compatible endpoint instead of the simulated server")
    p.add_argument("--model", "-m", help="model name (with --base-url)")
    p.add_argument("--latency", type=float, default=0.05, help="simulated model latency in seconds (default 0.05)")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of simulated requests that fail (0..1)")
    p.add_argument("--fault-kinds", default="500", help="comma-separated simulated fault kinds (default 500)")
    p.add_argument("--tool-calls", type=int, default=1, help="tool calls per simulated run (default 1)")
    p.add_argument("--stream", action="store_true", help="stream the answers (measures time to first token)")
    p.add_argument("--budget", action="append", default=[],
                   help="a performance budget such as 'p95 latency <= 2s' (repeatable)")
    p.add_argument("--timeout", type=float, help="cancel what is still running after this many seconds")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated faults")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON ('-' for stdout)")
    p.add_argument("--csv", metavar="PATH", help="write per-phase latencies as CSV ('-' for stdout)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .runner import DEFAULT_PROMPT, run_bench

    try:
        result = run_bench(
            args.runs, args.concurrency, ramp_up=args.ramp_up, prompt=args.prompt or DEFAULT_PROMPT,
            base_url=args.base_url, model=args.model, latency=args.latency, fault_rate=args.fault_rate,
            fault_kinds=[k.strip() for k in args.fault_kinds.split(",") if k.strip()], tool_calls=args.tool_calls,
            stream=args.stream, budgets=", ".join(args.budget) or None, progress=not args.no_progress,
            timeout=args.timeout, seed=args.seed,
        )
    except (ConfigError, ValueError) as exc:
        print(f"nbagent bench: {exc}", file=sys.stderr)
        return 2
    quiet = args.json == "-" or args.csv == "-"
    if args.json:
        text = result.to_json(None if args.json == "-" else args.json)
        if args.json == "-":
            print(text)
    if args.csv:
        text = result.to_csv(None if args.csv == "-" else args.csv)
        if args.csv == "-":
            print(text, end="")
    print(result.summary(), file=sys.stderr if quiet else sys.stdout)
    return 0 if result.budgets_ok else 1
