"""``nbagent export-otel``: send stored runs to an OpenTelemetry collector (Phoenix, Langfuse, Jaeger...)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("export-otel", help="export stored runs as OpenTelemetry traces to an OTLP/HTTP endpoint")
    p.add_argument("--since", default="1d", help="runs started at or after: an ISO date/time or an age (default 1d)")
    p.add_argument("--until", help="runs started before: an ISO date/time or an age")
    p.add_argument("--name", help="runs whose name contains this (or matches a glob with * ?)")
    p.add_argument("--status", action="append", help="ok, error, limit, stuck, cancelled, interrupted")
    p.add_argument("--limit", type=int, default=None, help="at most this many runs (default: all)")
    p.add_argument("--endpoint", help="OTLP/HTTP base URL (default: [otel] endpoint, OTEL_EXPORTER_OTLP_* variables, "
                                      "else http://localhost:4318)")
    p.add_argument("--service-name", help="service.name of the traces (default: OTEL_SERVICE_NAME or nbagent)")
    p.add_argument("--project", help="Phoenix project name (resource attribute openinference.project.name)")
    p.add_argument("--db", metavar="PATH", help="the store database (default: $NBAGENT_STORE_PATH or the home dir)")
    p.set_defaults(func=_cmd_export_otel)


def _cmd_export_otel(args: argparse.Namespace) -> int:
    try:
        from .otel import OtelExporter
    except ImportError as exc:
        print(f"nbagent export-otel: OpenTelemetry is not installed ({exc.name}): pip install 'nbagent[otel]'",
              file=sys.stderr)
        return 2
    from ..config import Settings
    from ..store.cli import register_configured_keys
    from ..store.runs import RunStore
    from .otel_config import otel_options

    register_configured_keys()
    try:
        opts = otel_options(Settings.load().otel, endpoint=args.endpoint, service_name=args.service_name,
                            project=args.project, metrics=False)
    except ValueError as exc:
        print(f"nbagent export-otel: {exc}", file=sys.stderr)
        return 2
    store = RunStore(args.db)
    try:
        rows = store.runs(name=args.name, status=args.status, since=args.since, until=args.until, limit=args.limit)
        records = [store.load(r["run_id"]).record for r in rows if r["status"] != "running"]
    except ValueError as exc:
        print(f"nbagent export-otel: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    exporter = OtelExporter(None, **opts)
    exporter.export_many(records)
    ok = exporter.flush()
    exporter.close()
    where = opts["endpoint"] or "the OTEL_EXPORTER_OTLP_* endpoint"
    if not ok:
        print(f"nbagent export-otel: could not send every trace to {where} in time", file=sys.stderr)
        return 1
    print(f"exported {len(records)} runs as traces to {where}")
    return 0
