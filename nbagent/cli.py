"""``nbagent`` on the command line: ``run``, ``demo`` and the sub-commands other packages register."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import math
import sys
from typing import Any

from nbagent.runtime import Runtime

__all__ = ["main"]

# packages that add sub-commands through ``register(subparsers)``; a missing one is skipped
_PLUGINS = ("nbagent.sandbox.cli", "nbagent.cache.cli", "nbagent.store.cli", "nbagent.bench.cli",
            "nbagent.exporters.cli")


def _seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0 (``nan`` and ``inf`` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="model name (default: settings / NBAGENT_MODEL)")
    p.add_argument("--base-url", help="OpenAI-compatible base URL (default: settings / OPENAI_BASE_URL)")
    p.add_argument("--system", "-s", help="system prompt")
    p.add_argument("--max-steps", type=int, help="stop after this many model calls")
    p.add_argument("--stream", action="store_true", help="stream the answer as it is generated")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nbagent", description="Run and measure LLM agents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="run one agent prompt and print the answer, usage and timings")
    run.add_argument("prompt", help="the prompt")
    _add_run_args(run)
    run.set_defaults(func=_cmd_run)
    demo = sub.add_parser("demo", help="an agent run with a tool against the built-in simulated server")
    demo.add_argument("--prompt", default="What is 6 times 7? Use the calculator.")
    demo.add_argument("--runs", type=int, default=3, help="how many concurrent runs")
    demo.add_argument("--latency", type=_seconds, default=0.05, help="simulated model latency (s)")
    demo.set_defaults(func=_cmd_demo)
    ex = sub.add_parser("execute", help="run a notebook headless and export it to HTML")
    ex.add_argument("notebook", help="the .ipynb to run")
    ex.add_argument("--out", default="artifacts", help="folder for the executed notebook and its HTML")
    ex.add_argument("--timeout", type=_seconds, default=900.0, help="seconds allowed per cell")
    ex.set_defaults(func=_cmd_execute)
    for name in _PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        mod.register(sub)
    return parser


def _print_result(result: Any, as_json: bool, streamed: bool) -> None:
    if as_json:
        u = result.usage
        print(json.dumps({
            "run_id": result.run_id, "name": result.name, "status": result.status,
            "stop_reason": result.stop_reason, "output": result.output, "steps": u.steps, "requests": u.requests,
            "input_tokens": u.tokens.input_tokens, "output_tokens": u.tokens.output_tokens,
            "cached_tokens": u.tokens.cached_tokens, "cost": u.cost, "timings": result.timings,
        }, indent=2))
        return
    if streamed:
        print()
    else:
        print(result.output)
    print(f"\n-- {result.summary()}", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    from . import local_model
    from .agent import Agent
    from .config import Settings
    from .errors import ConfigError, EndpointNotConfigured

    try:
        settings = Settings.load()
        agent = Agent(args.model, system=args.system, max_steps=args.max_steps, runtime=Runtime(settings),
                      base_url=args.base_url, stream=args.stream)
        agent.endpoint()
    except EndpointNotConfigured as exc:
        if not (settings.embedded and local_model.available()):  # otherwise the run falls back to the embedded model
            print(f"nbagent: {exc}", file=sys.stderr)
            return 2
    except ConfigError as exc:
        print(f"nbagent: {exc}", file=sys.stderr)
        return 2

    def on_text(delta: str) -> None:
        print(delta, end="", flush=True)

    result = agent.run_sync(args.prompt, on_text=on_text if args.stream and not args.json else None)
    _print_result(result, args.json, args.stream and not args.json)
    if result.error is not None:
        print(f"nbagent: run failed: {result.stop_reason}", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return asyncio.run(run_demo(prompt=args.prompt, runs=args.runs, latency=args.latency))


def _cmd_execute(args: argparse.Namespace) -> int:
    from .execute import execute_notebook

    try:
        result = execute_notebook(args.notebook, args.out, timeout=args.timeout)
    except (FileNotFoundError, ImportError) as exc:
        print(f"nbagent: {exc}", file=sys.stderr)
        return 2
    print(f"executed {result.cells} code cells of {args.notebook} in {result.seconds:.1f} s")
    print(f"  notebook with outputs: {result.notebook.resolve()}")
    print(f"  HTML to open in a browser: {result.html.resolve()}")
    for err in result.errors:
        print(f"nbagent: a cell failed: {err}", file=sys.stderr)
    return 1 if result.errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
