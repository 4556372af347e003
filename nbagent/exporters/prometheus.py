"""A runtime's metrics in the Prometheus text exposition format, and a loopback ``/metrics`` endpoint.

Names follow Prometheus conventions: ``nbagent_`` prefix, dots to underscores, the unit as a suffix
(``_seconds``, ``_usd``, ``_tokens``... unless the name already says it), ``_total`` on counters. Histograms
are summaries (``quantile`` 0.5, 0.9, 0.95, 0.99, with ``_sum`` and ``_count``). Metric names that carry a
value (``runs.status.ok``, ``llm.retries.429``, ``tool.duration.lookup``, ``cache.tool.hits``...) become one
family with a label (``nbagent_runs_total{status="ok"}``). Gauges also show their peak as ``<name>_max``.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from ..metrics.registry import MetricsRegistry

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime import Runtime

__all__ = ["PrometheusServer", "serve_prometheus", "to_prometheus"]

QUANTILES = (0.5, 0.9, 0.95, 0.99)
_UNITS = {"s": "seconds", "usd": "usd", "tokens": "tokens", "ratio": "ratio", "bytes": "bytes", "steps": "steps"}

# (pattern over the nbagent name, family name, label names): names that carry values become labels
_LABELLED: tuple[tuple[re.Pattern[str], str, tuple[str, ...]], ...] = tuple(
    (re.compile(p, re.DOTALL), family, labels) for p, family, labels in (
        (r"^runs\.status\.(.+)$", "runs.by_status", ("status",)),
        (r"^limits\.(.+)$", "limits.hit", ("limit",)),
        (r"^llm\.retries\.(.+)$", "llm.retries.by_reason", ("reason",)),
        (r"^llm\.errors\.(.+)$", "llm.errors.by_type", ("error_type",)),
        (r"^tool\.duration\.(.+)$", "tool.duration.by_tool", ("tool",)),
        (r"^cache\.([^.]+)\.(hits|lookup)\.(.+)$", "cache.{1}.by_tier", ("cache", "tier")),
        (r"^cache\.([^.]+)\.([^.]+)$", "cache.{1}", ("cache",)),
    ))


def _family(name: str) -> tuple[str, dict[str, str]]:
    for pattern, family, labels in _LABELLED:
        m = pattern.match(name)
        if m is None:
            continue
        groups = m.groups()
        if len(labels) == 2:  # cache.<cache>.<what>.<tier>
            return family.replace("{1}", groups[1]), {labels[0]: groups[0], labels[1]: groups[2]}
        if "{1}" in family:  # cache.<cache>.<what>
            return family.replace("{1}", groups[1]), {labels[0]: groups[0]}
        return family, {labels[0]: groups[0]}
    return name, {}


def metric_name(name: str, unit: str, kind: str, prefix: str = "nbagent") -> str:
    """The Prometheus name of an nbagent metric (without ``_total``/summary suffixes for non-counters)."""
    base = re.sub(r"[^a-zA-Z0-9_]", "_", f"{prefix}_{name}" if prefix else name)
    if not re.match(r"[a-zA-Z_]", base):
        base = "_" + base
    suffix = _UNITS.get(unit.lower(), re.sub(r"[^a-z0-9_]", "_", unit.lower())) if unit else ""
    if suffix and suffix not in base.lower().split("_"):
        base += "_" + suffix
    if kind == "counter" and not base.endswith("_total"):
        base += "_total"
    return base


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    items = {**labels, **(extra or {})}
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items.items()) + "}"


def _num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


def to_prometheus(registry: MetricsRegistry, *, prefix: str = "nbagent") -> str:
    """``registry`` in the Prometheus text format (version 0.0.4), families sorted by name."""
    families: dict[str, dict[str, Any]] = {}

    def family(prom: str, kind: str, help_text: str) -> list[str]:
        fam = families.setdefault(prom, {"type": kind, "help": help_text, "lines": []})
        if fam["type"] != kind:
            raise ValueError(f"two metric types for Prometheus family {prom!r}")
        lines: list[str] = fam["lines"]
        return lines

    for name, counter in registry.counters.items():
        fam, labels = _family(name)
        prom = metric_name(fam, registry.unit(name), "counter", prefix)
        family(prom, "counter", f"nbagent {fam}").append(f"{prom}{_labels(labels)} {_num(counter.value)}")
    for name, gauge in registry.gauges.items():
        fam, labels = _family(name)
        prom = metric_name(fam, registry.unit(name), "gauge", prefix)
        family(prom, "gauge", f"nbagent {fam}").append(f"{prom}{_labels(labels)} {_num(gauge.value)}")
        if gauge.max is not None:
            family(prom + "_max", "gauge", f"peak of nbagent {fam}").append(
                f"{prom}_max{_labels(labels)} {_num(gauge.max)}")
    for name, hist in registry.histograms.items():
        fam, labels = _family(name)
        prom = metric_name(fam, registry.unit(name), "summary", prefix)
        lines = family(prom, "summary", f"nbagent {fam}")
        if hist.count:
            for q, v in zip(QUANTILES, hist.quantiles(QUANTILES), strict=True):
                lines.append(f"{prom}{_labels(labels, {'quantile': str(q)})} {_num(v)}")
        lines.append(f"{prom}_sum{_labels(labels)} {_num(hist.sum)}")
        lines.append(f"{prom}_count{_labels(labels)} {hist.count}")
    out: list[str] = []
    for prom in sorted(families):
        entry = families[prom]
        out.append(f"# HELP {prom} {entry['help'].replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
        out.append(f"# TYPE {prom} {entry['type']}")
        out.extend(entry["lines"])
    return "\n".join(out) + "\n" if out else ""


class PrometheusServer:
    """``GET /metrics`` on 127.0.0.1 serving :func:`to_prometheus` of a runtime's global metrics."""

    def __init__(self, runtime: Runtime, port: int = 0, host: str = "127.0.0.1") -> None:
        self.runtime, self.host, self.port = runtime, host, port
        self._runner: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def start(self) -> PrometheusServer:
        if self._runner is not None:
            return self
        from aiohttp import web

        self.runtime.metrics  # noqa: B018 - the runtime measures from first use: start now, not at the first scrape

        async def metrics(request: web.Request) -> web.Response:
            text = to_prometheus(self.runtime.metrics.global_)
            return web.Response(text=text, content_type="text/plain", charset="utf-8",
                                headers={"X-Content-Type-Options": "nosniff"})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot serve Prometheus metrics on {self.host}:{self.port}: {exc.strerror}") from exc
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def __repr__(self) -> str:
        return f"<PrometheusServer {self.url}{'' if self._runner else ' (stopped)'}>"


async def serve_prometheus(runtime: Runtime | None = None, *, port: int = 0,
                           host: str = "127.0.0.1") -> PrometheusServer:
    """Serve ``runtime``'s metrics at ``http://127.0.0.1:<port>/metrics`` (port 0: a free one; see ``.port``)
    until the runtime closes. Idempotent per runtime (the part ``"prometheus"``)."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"the metrics endpoint binds to loopback only, got host {host!r}")
    if runtime is None:
        from ..runtime import runtime as default_runtime

        runtime = default_runtime()
    server = runtime.part("prometheus", lambda rt: PrometheusServer(rt, port, host))
    return await server.start()
