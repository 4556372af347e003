"""Command line: ``python -m nbagent.testing`` runs the simulated chat server until interrupted.

The bound port is printed alone on the first line of standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import SimConfig
from .core import SimCore
from .faults import FAULT_KINDS
from .server import format_base_url, start_site


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m nbagent.testing", description="Simulated OpenAI-compatible server.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--config-json", default=None, help="settings as a JSON object (flags below override it)")
    p.add_argument("--latency", type=float)
    p.add_argument("--ttft", type=float)
    p.add_argument("--chunk-delay", type=float)
    p.add_argument("--tool-calls-per-run", type=int)
    p.add_argument("--no-usage", dest="report_usage", action="store_const", const=False)
    p.add_argument("--api-key")
    p.add_argument("--context-window", type=int)
    p.add_argument("--fault-rate", type=float)
    p.add_argument("--fault-kinds", help="comma-separated, from: " + ",".join(FAULT_KINDS))
    p.add_argument("--fault-delay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-history", dest="record_history", action="store_const", const=False)
    p.add_argument("--capacity", type=int, help="at most this many chat requests at once")
    p.add_argument("--overload", choices=("queue", "reject"), help="beyond the capacity: queue, or 429")
    p.add_argument("--overload-retry-after", type=float, help="Retry-After of a rejection (seconds)")
    p.add_argument("--watch-stdin", action="store_true", help="exit when standard input reaches end of file")
    p.add_argument("--quiet", action="store_true", help="print only the port")
    p.add_argument("--uvloop", action="store_true",
                   help="serve on uvloop's event loop: about a quarter less CPU per request, for benchmarks where "
                        "the server shares the machine with the client it serves")
    return p


def settings_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Merge ``--config-json`` with the individual flags into :class:`SimConfig` keyword arguments."""
    settings: dict[str, Any] = json.loads(args.config_json) if args.config_json else {}
    for name in (
        "latency",
        "ttft",
        "chunk_delay",
        "tool_calls_per_run",
        "report_usage",
        "api_key",
        "context_window",
        "fault_rate",
        "fault_delay",
        "seed",
        "record_history",
        "capacity",
        "overload",
        "overload_retry_after",
    ):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    if args.fault_kinds:
        settings["fault_kinds"] = [k.strip() for k in args.fault_kinds.split(",") if k.strip()]
    if "fault_kinds" in settings:
        settings["fault_kinds"] = tuple(settings["fault_kinds"])
    return settings


async def serve(host: str, port: int, config: SimConfig, *, watch_stdin: bool = False, quiet: bool = False) -> None:
    """Serve until SIGINT/SIGTERM (or end of standard input with ``watch_stdin``)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    core = SimCore(config)
    runner, bound = await start_site(core, host, port)
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, done.set)
        except (NotImplementedError, RuntimeError):  # not available on this platform
            pass
    if watch_stdin:

        def wait_eof() -> None:
            try:
                fd = sys.stdin.fileno()
                while os.read(fd, 4096):
                    pass
            except (OSError, ValueError):
                pass
            loop.call_soon_threadsafe(done.set)

        threading.Thread(target=wait_eof, name="stdin-watch", daemon=True).start()
    print(bound, flush=True)
    if not quiet:
        print(f"simulated OpenAI server at {format_base_url(host, bound)}", file=sys.stderr, flush=True)
    try:
        await done.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        config = SimConfig(**settings_from_args(args))
    except (TypeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            print("error: --uvloop needs the uvloop package (pip install uvloop)", file=sys.stderr)
            return 2
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(serve(args.host, args.port, config, watch_stdin=args.watch_stdin, quiet=args.quiet))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
