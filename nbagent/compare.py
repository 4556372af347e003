"""Runs side by side: latency percentiles, tokens, cost, steps, errors and cache hits of two or more groups of
runs, with bootstrap confidence intervals on the differences and a one-line verdict.

::

    cmp = nbagent.compare("tag:gpt-4o", "tag:mini")        # or run name globs, results, batches, records
    print(cmp)   # mini is 31 % faster (±6 %, 95 % CI), uses 12 % more tokens (±3 %, 95 % CI) than gpt-4o
    cmp          # in a notebook: the table

A group is a :class:`~nbagent.record.RunRecord`, a ``RunResult``, a ``StoredRun``, a ``BatchResult``, a list of
those, or a string: ``tag:NAME`` (runs tagged NAME), a run id, or a name glob (``eval-*``). Strings are looked
up in the runtime's live records first, then in the run store, so a later kernel compares the runs an earlier
one kept. Every group is compared with the first one.

The intervals are percentile bootstrap intervals (``resamples`` resamplings of both groups, seeded): of the
relative difference of medians for latency, of means for tokens, cost and steps. When an interval holds 0 the
verdict says "no clear difference". Costs stay unknown when a run called a model with no price.
"""

from __future__ import annotations

import fnmatch
import functools
import html
import math
import random
import statistics
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .record import RunRecord, format_cost

if TYPE_CHECKING:  # pragma: no cover
    from .runtime import Runtime
    from .store.runs import RunStore

__all__ = ["Comparison", "Difference", "Group", "bootstrap_ci", "compare", "resolve_group"]

_FINISHED = ("ok", "error", "limit", "stuck", "cancelled")


@dataclass
class Group:
    """One side of a comparison: a label and the finished runs' records."""

    label: str
    records: list[RunRecord]

    def values(self, metric: str) -> list[float] | None:
        """The metric of every run (None when one of them is unknown, e.g. a cost without a price)."""
        out: list[float] = []
        for rec in self.records:
            v = _METRICS[metric](rec)
            if v is None:
                return None
            out.append(float(v))
        return out


_METRICS: dict[str, Callable[[RunRecord], float | None]] = {
    "latency": lambda r: r.duration,
    "tokens": lambda r: r.input_tokens + r.output_tokens,
    "cost": lambda r: r.cost,
    "steps": lambda r: r.steps,
    "errors": lambda r: 0.0 if r.status == "ok" else 1.0,
}
#: metric -> (statistic compared, words when B is above A, words when below)
_COMPARED: dict[str, tuple[str, str, str]] = {
    "latency": ("median", "slower", "faster"),
    "tokens": ("mean", "uses {} more tokens", "uses {} fewer tokens"),
    "cost": ("mean", "costs {} more", "costs {} less"),
    "steps": ("mean", "takes {} more steps", "takes {} fewer steps"),
}


@dataclass
class Difference:
    """The relative difference ``B / A - 1`` of one statistic, with its bootstrap interval (None: not computable)."""

    metric: str
    estimate: float | None
    low: float | None
    high: float | None
    note: str = ""

    @property
    def clear(self) -> bool:
        """True when the interval excludes 0."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def words(self) -> str:
        """``is 31 % faster (±6 %``... without the interval's level: the verdict adds it once."""
        _, up, down = _COMPARED[self.metric]
        if self.estimate is None or self.low is None or self.high is None:
            return f"{self.metric} {self.note or 'not comparable'}"
        pct = f"{abs(self.estimate) * 100:.0f} %"
        half = f"±{(self.high - self.low) * 50:.0f} %"
        phrase = up if self.estimate > 0 else down
        return f"{phrase.format(pct)} ({half}" if "{}" in phrase else f"is {pct} {phrase} ({half}"

    def cell(self) -> str:
        if self.estimate is None or self.low is None or self.high is None:
            return self.note or "–"
        return f"{self.estimate * 100:+.0f} % [{self.low * 100:+.0f}, {self.high * 100:+.0f}]"


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _mean(xs: Sequence[float]) -> float:
    return float(math.fsum(xs) / len(xs))


def bootstrap_ci(a: Sequence[float], b: Sequence[float], stat: str = "median", *, resamples: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(estimate, low, high)`` of ``stat(b) / stat(a) - 1`` by the percentile bootstrap (both groups
    resampled with replacement, ``resamples`` times, seeded). Uses numpy when installed."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the bootstrap needs at least 2 runs in each group")
    fn = _median if stat == "median" else _mean
    base = fn(a)
    if base == 0:
        raise ValueError(f"the {stat} of the first group is 0: no relative difference")
    estimate = fn(b) / base - 1
    diffs = _resampled(a, b, stat, resamples, seed)
    if not diffs:
        raise ValueError(f"the {stat} of the first group is 0 in every resample")
    diffs.sort()
    tail = (1 - confidence) / 2
    return estimate, _quantile(diffs, tail), _quantile(diffs, 1 - tail)


def _resampled(a: Sequence[float], b: Sequence[float], stat: str, resamples: int, seed: int) -> list[float]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is optional in the core
        np = None  # type: ignore[assignment]
    if np is not None:
        rng = np.random.default_rng(seed)
        xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        ra = xa[rng.integers(0, len(xa), size=(resamples, len(xa)))]
        rb = xb[rng.integers(0, len(xb), size=(resamples, len(xb)))]
        sa = np.median(ra, axis=1) if stat == "median" else ra.mean(axis=1)
        sb = np.median(rb, axis=1) if stat == "median" else rb.mean(axis=1)
        keep = sa != 0
        return [float(x) for x in sb[keep] / sa[keep] - 1]
    rnd = random.Random(seed)
    fn = _median if stat == "median" else _mean
    out = []
    for _ in range(resamples):
        sa = fn(rnd.choices(a, k=len(a)))
        if sa != 0:
            out.append(fn(rnd.choices(b, k=len(b))) / sa - 1)
    return out


def _quantile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _percentile(xs: Sequence[float], q: float) -> float:
    return _quantile(sorted(xs), q)


@dataclass
class Comparison:
    """Groups of runs side by side; ``differences[i]`` compares ``groups[i + 1]`` with ``groups[0]``."""

    groups: list[Group]
    differences: list[dict[str, Difference]] = field(default_factory=list)
    confidence: float = 0.95
    resamples: int = 2000

    def verdicts(self) -> list[str]:
        """One line per group after the first, e.g. ``B is 31 % faster (±6 %, 95 % CI), uses 12 % more tokens
        (±3 %) than A``; ``no clear difference`` when every interval holds 0."""
        base, level = self.groups[0].label, f"{self.confidence * 100:.0f} % CI"
        lines = []
        for group, diffs in zip(self.groups[1:], self.differences, strict=True):
            clear = [d.words() for d in diffs.values() if d.clear]
            unclear = [d.metric for d in diffs.values() if not d.clear and d.estimate is not None]
            missing = [d.words() for d in diffs.values() if d.estimate is None]
            if clear:
                clear[0] += f", {level}"
                text = f"{group.label} " + "), ".join(clear) + f") than {base}"
                if unclear:
                    text += f"; no clear difference in {', '.join(unclear)}"
            else:
                text = f"{group.label} vs {base}: no clear difference ({level})"
            lines.append("; ".join([text, *missing]))
        return lines

    def rows(self) -> list[list[str]]:
        """The table: one row per figure, one column per group (then the differences with the first group)."""
        rows: list[list[str]] = []

        def row(name: str, fn: Callable[[Group], str], metric: str | None = None) -> None:
            cells = [name, *(fn(g) for g in self.groups)]
            if metric is not None:
                cells += [d[metric].cell() for d in self.differences]
            else:
                cells += [""] * len(self.differences)
            rows.append(cells)

        row("runs", lambda g: str(len(g.records)))
        for q, label in ((0.5, "latency p50"), (0.95, "latency p95"), (0.99, "latency p99")):
            row(label, functools.partial(_fmt_pct, q=q), "latency" if q == 0.5 else None)
        row("tokens (mean)", lambda g: _fmt_n(_avg(g, "tokens")), "tokens")
        row("cost (mean)", _fmt_cost, "cost")
        row("steps (mean)", lambda g: _fmt_n(_avg(g, "steps"), 2), "steps")
        row("errors", lambda g: f"{int(sum(g.values('errors') or ()))} of {len(g.records)}")
        row("cache hits", _fmt_hits)
        return rows

    def header(self) -> list[str]:
        base = self.groups[0].label
        return ["", *(g.label for g in self.groups),
                *(f"{g.label} vs {base} ({self.confidence * 100:.0f} % CI)" for g in self.groups[1:])]

    def __str__(self) -> str:
        table = [self.header(), *self.rows()]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
        return "\n".join([*self.verdicts(), "", *lines])

    def __repr__(self) -> str:
        return f"<Comparison of {', '.join(f'{g.label} ({len(g.records)} runs)' for g in self.groups)}>"

    def _repr_html_(self) -> str:
        cell = "<td style='text-align:left;padding:1px 8px'>{}</td>"
        head = "".join(f"<th style='text-align:left;padding:1px 8px'>{html.escape(h)}</th>" for h in self.header())
        body = "".join("<tr>" + "".join(cell.format(html.escape(c)) for c in r) + "</tr>" for r in self.rows())
        verdicts = "".join(f"<div><b>{html.escape(v)}</b></div>" for v in self.verdicts())
        note = (f"<div style='color:#666'>intervals: percentile bootstrap, {self.resamples:,} resamples; "
                f"latency compares medians, the rest means</div>")
        return (f'<div class="nbagent-compare" style="font-size:12px">{verdicts}'
                f'<table class="nbagent-table" style="border-collapse:collapse"><tr>{head}</tr>{body}</table>'
                f"{note}</div>")


def _pct(g: Group, metric: str, q: float) -> float | None:
    xs = g.values(metric)
    return _percentile(xs, q) if xs else None


def _fmt_pct(g: Group, q: float) -> str:
    return _fmt_s(_pct(g, "latency", q))


def _avg(g: Group, metric: str) -> float | None:
    xs = g.values(metric)
    return _mean(xs) if xs else None


def _fmt_s(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def _fmt_n(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def _fmt_cost(g: Group) -> str:
    if not g.records:
        return "–"
    return format_cost(_avg(g, "cost"))


def _fmt_hits(g: Group) -> str:
    hits = sum(r.cached_calls for r in g.records)
    calls = hits + sum(r.llm_calls for r in g.records)
    return f"{hits} of {calls} calls" + (f" ({hits / calls:.0%})" if calls else "")


def _difference(a: Group, b: Group, metric: str, resamples: int, confidence: float, seed: int) -> Difference:
    xa, xb = a.values(metric), b.values(metric)
    if xa is None or xb is None:
        return Difference(metric, None, None, None, "unknown (a model has no price: see [prices])")
    try:
        est, lo, hi = bootstrap_ci(xa, xb, _COMPARED[metric][0], resamples=resamples, confidence=confidence,
                                   seed=seed)
    except ValueError as exc:
        note = "too few runs" if "at least 2" in str(exc) else "0 in the first group"
        return Difference(metric, None, None, None, note)
    return Difference(metric, est, lo, hi)


def compare(*groups: Any, runtime: Runtime | None = None, store: RunStore | None = None,
            labels: Sequence[str] | None = None, resamples: int = 2000, confidence: float = 0.95,
            seed: int = 0) -> Comparison:
    """Compare two or more groups of runs (see the module docstring for what a group may be)."""
    if len(groups) < 2:
        raise ValueError("compare needs at least two groups of runs, e.g. compare('tag:a', 'tag:b')")
    if labels is not None and len(labels) != len(groups):
        raise ValueError(f"{len(labels)} labels for {len(groups)} groups")
    resolved = [resolve_group(g, runtime=runtime, store=store, label=None if labels is None else labels[i])
                for i, g in enumerate(groups)]
    for g in resolved:
        if not g.records:
            raise ValueError(f"no finished runs match {g.label!r} (a run name glob, a run id, or tag:NAME)")
    diffs = [{m: _difference(resolved[0], g, m, resamples, confidence, seed) for m in _COMPARED}
             for g in resolved[1:]]
    return Comparison(resolved, diffs, confidence, resamples)


def resolve_group(group: Any, *, runtime: Runtime | None = None, store: RunStore | None = None,
                  label: str | None = None) -> Group:
    """The finished runs' records of one group (see the module docstring)."""
    if isinstance(group, Group):
        return group if label is None else Group(label, group.records)
    if isinstance(group, str):
        return Group(label or group, _lookup(group, runtime, store))
    items = list(getattr(group, "results", None) or ()) if hasattr(group, "results") else None
    if items is None:
        items = list(group) if isinstance(group, Iterable) else [group]
    records = [_record_of(x) for x in items]
    return Group(label or _label_of(records), [r for r in records if r.status in _FINISHED])


def _record_of(item: Any) -> RunRecord:
    if isinstance(item, RunRecord):
        return item
    rec = getattr(item, "record", None)
    if isinstance(rec, RunRecord):
        return rec
    raise TypeError(f"cannot compare a {type(item).__name__}: give records, results, stored runs or a batch")


def _label_of(records: list[RunRecord]) -> str:
    names = sorted({r.name for r in records})
    if len(names) == 1:
        return names[0]
    tags = set.intersection(*(set(r.tags) for r in records)) if records else set()
    return f"tag:{sorted(tags)[0]}" if tags else f"{len(records)} runs"


def _matches(rec: RunRecord, query: str) -> bool:
    if query.startswith("tag:"):
        return query[4:] in rec.tags
    return rec.run_id == query or fnmatch.fnmatchcase(rec.name, query)


def _lookup(query: str, runtime: Runtime | None, store: RunStore | None) -> list[RunRecord]:
    """Live records first; when none match, the runs kept in the store."""
    if runtime is None:
        from .runtime import runtime as default_runtime

        runtime = default_runtime()
    live = [r for r in runtime.records.finished() if r.status in _FINISHED and _matches(r, query)]
    if live:
        return live
    store = store or runtime.store
    if store is None:
        from .store import store_disabled

        if store_disabled():
            return []
        from .store.runs import RunStore, default_path

        if not default_path().exists():
            return []
        store = RunStore()
    return stored_records(store, query)


def stored_records(store: RunStore, query: str) -> list[RunRecord]:
    """The records of the finished runs in ``store`` matching ``query`` (``tag:NAME``, a run id or a name glob)."""
    if query.startswith("tag:"):
        rows = store.runs(tag=query[4:], status=_FINISHED, limit=None)
    else:
        rows = store.runs(name=query if any(c in query for c in "*?[") else None, status=_FINISHED, limit=None)
        rows = [r for r in rows if r["run_id"] == query or fnmatch.fnmatchcase(r["name"] or "", query)]
    return [store.load(r["run_id"]).record for r in reversed(rows)]  # oldest first, as the live records


class _CallableModule(types.ModuleType):
    """``nbagent.compare(...)`` works whether ``nbagent.compare`` names this module or its function."""

    def __call__(self, *groups: Any, **kwargs: Any) -> Comparison:
        return compare(*groups, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
