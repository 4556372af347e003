"""One record of every run: its events folded, in exactly one place, into spans, tokens, cost and status.

A :class:`RunRecord` is a tree of :class:`Span` (run > step > model call > attempts, with retry backoffs and the
wait for the first token; tool call > policy decision, approval wait, sandbox lease wait, exec; cache lookups),
each with start and end times (seconds since the epoch), plus the run's tokens, cost (``None`` when a model's
price is unknown, never 0), status and error. :meth:`RunRecord.apply` is the fold; the live run, the store
(``load_run(id).record``), the notebook views, the metrics and the exporters all read records built by it.

Packages with events of their own add to the fold with :func:`register_span_handler`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .events import Event, EventBus

__all__ = ["BREAKDOWN_KEYS", "RecordIndex", "RunRecord", "Span", "SpanHandler", "format_cost", "register_span_handler"]


@dataclass(eq=True)
class Span:
    """One interval of a run. ``kind``: run, step, model, attempt, wait (for the first token), generate,
    backoff, cache, tool, policy, approval, lease, exec (or a kind a package registers)."""

    kind: str
    name: str
    start: float
    end: float | None = None
    status: str = "ok"
    attrs: dict[str, Any] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    def add(self, kind: str, name: str, start: float, end: float | None = None, **attrs: Any) -> Span:
        span = Span(kind, name, start, end, attrs=attrs)
        self.children.append(span)
        return span

    def walk(self, depth: int = 0) -> Iterator[tuple[int, Span]]:
        """This span and every descendant, depth first, with their depth."""
        yield depth, self
        for child in self.children:
            yield from child.walk(depth + 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "start": self.start, "end": self.end, "status": self.status,
                "attrs": dict(self.attrs), "children": [c.to_dict() for c in self.children]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Span:
        return cls(d["kind"], d["name"], d["start"], d.get("end"), d.get("status", "ok"), dict(d.get("attrs", {})),
                   [cls.from_dict(c) for c in d.get("children", ())])


SpanHandler = Callable[["RunRecord", Any], None]
_HANDLERS: dict[str, SpanHandler] = {}


def register_span_handler(kind: str, handler: SpanHandler) -> None:
    """Fold events of ``kind`` (their ``kind`` class attribute) into records with ``handler(record, event)``.

    Registration happens at import time of the package that defines the events (one registry for the process,
    like the event classes themselves); a kind has one handler.
    """
    _HANDLERS[kind] = handler


# The order in which the breakdown attributes a moment covered by several spans (first wins).
BREAKDOWN_KEYS = ("approval_wait", "retry_backoff", "sandbox_wait", "tools", "generation", "model_wait",
                  "cache", "startup", "client_overhead")
_CATEGORY = {"approval": "approval_wait", "backoff": "retry_backoff", "lease": "sandbox_wait", "exec": "tools",
             "tool": "tools", "generate": "generation", "wait": "model_wait", "cache": "cache", "startup": "startup",
             "attempt": "model_wait"}  # an attempt that failed before any answer was still a wait on the model


@dataclass(eq=False)
class RunRecord:
    """Everything known about one run, folded from its events (see the module docstring).

    Two records are equal when their facts and spans are (``events``, ``messages`` and ``output`` are kept
    for convenience and left out of the comparison).
    """

    run_id: str
    name: str = ""
    model: str = ""
    prompt: str = ""
    status: str = "running"
    stop_reason: str = ""
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    steps: int = 0
    llm_calls: int = 0
    cached_calls: int = 0
    attempts: int = 0
    retries: int = 0
    retry_wait: float = 0.0
    llm_errors: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    priced_cost: float = 0.0
    unpriced_calls: int = 0
    limit: str | None = None
    tags: tuple[str, ...] = ()
    root: Span = field(default_factory=lambda: Span("run", "", 0.0))
    events: list[Event] = field(default_factory=list, repr=False)
    output: str = field(default="", repr=False)
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _open: dict[str, Span] = field(default_factory=dict, repr=False)
    _step: Span | None = field(default=None, repr=False)

    # --- the fold ----------------------------------------------------------------------------------

    def apply(self, ev: Event) -> None:
        """Fold one event of this run into the record (events of unknown kinds are kept, not folded)."""
        self.events.append(ev)
        handler = _HANDLERS.get(ev.kind)
        if handler is not None:
            handler(self, ev)

    @classmethod
    def from_events(cls, run_id: str, events: Iterable[Event]) -> RunRecord:
        rec = cls(run_id)
        for ev in events:
            rec.apply(ev)
        return rec

    # --- derived facts -----------------------------------------------------------------------------

    @property
    def cost(self) -> float | None:
        """USD cost of the run; None when a model call had no known price (never a misleading 0)."""
        return None if self.unpriced_calls else self.priced_cost

    @property
    def done(self) -> bool:
        return self.ended is not None

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return None if self.ended is None else self.ended - self.started

    @property
    def spans(self) -> list[Span]:
        """Every span below the run, depth first."""
        return [s for _, s in self.root.walk()][1:]

    def parent_for(self, kinds: tuple[str, ...] = ("tool",)) -> Span:
        """The newest open span of one of ``kinds`` (e.g. the tool call a sandbox exec belongs to), else the
        current step, else the run."""
        for span in reversed(self._open.values()):
            if span.kind in kinds:
                return span
        return self._step or self.root

    def open_span(self, key: str, parent: Span, kind: str, name: str, start: float, **attrs: Any) -> Span:
        span = parent.add(kind, name, start, **attrs)
        self._open[key] = span
        return span

    def close_span(self, key: str, end: float, status: str = "ok") -> Span | None:
        span = self._open.pop(key, None)
        if span is not None:
            span.end, span.status = end, status
        return span

    def breakdown(self, now: float | None = None) -> dict[str, float]:
        """Where the wall time went, in seconds, summing to the run's wall time.

        Each moment of the run is attributed once, to the first of :data:`BREAKDOWN_KEYS` whose spans cover it
        (a tool and a model call in parallel count as the tool); a moment no span covers is client overhead
        (the agent loop, token counting, events). :meth:`segments` gives the same attribution in time order.
        """
        out = dict.fromkeys(BREAKDOWN_KEYS, 0.0)
        for t0, t1, cat in self.segments(now):
            out[cat] += t1 - t0
        return out

    def segments(self, now: float | None = None) -> list[tuple[float, float, str]]:
        """The run's wall time as ``(start, end, category)`` intervals in time order, each moment in exactly
        one category of :data:`BREAKDOWN_KEYS` (the attribution that :meth:`breakdown` sums); adjacent
        intervals of one category are merged. A running run ends at ``now`` (default: its newest event)."""
        start = self.started if self.started is not None else self.root.start
        end = self.ended if self.ended is not None else (now if now is not None else self._last_ts())
        if end <= start:
            return []
        rank = {k: i for i, k in enumerate(BREAKDOWN_KEYS)}
        edges: list[tuple[float, int, int]] = []  # (time, +1/-1, rank)
        for _, span in self.root.walk():
            cat = _CATEGORY.get(span.kind)
            if cat is None:
                continue
            s0 = max(span.start, start)
            s1 = min(span.end if span.end is not None else end, end)
            if s1 > s0:
                edges.append((s0, 1, rank[cat]))
                edges.append((s1, -1, rank[cat]))
        edges.sort(key=lambda e: e[0])
        active = [0] * len(BREAKDOWN_KEYS)
        out: list[tuple[float, float, str]] = []

        def put(t0: float, t1: float, cat: str) -> None:
            if out and out[-1][2] == cat and out[-1][1] == t0:
                out[-1] = (out[-1][0], t1, cat)
            else:
                out.append((t0, t1, cat))

        t = start
        for when, delta, r in edges:
            if when > t:
                cat_i = next((i for i, n in enumerate(active) if n > 0), rank["client_overhead"])
                put(t, when, BREAKDOWN_KEYS[cat_i])
                t = when
            active[r] += delta
        if end > t:
            put(t, end, "client_overhead")
        return out

    def timeline(self, **options: Any) -> Any:
        """This run's waterfall (see :func:`nbagent.timeline.timeline`): HTML/SVG in a notebook, ``to_svg()``."""
        from .timeline import timeline

        return timeline(self, **options)

    def to_chrome_trace(self) -> dict[str, Any]:
        """This run as Chrome trace-event JSON (opens in Perfetto; see :func:`nbagent.timeline.to_chrome_trace`)."""
        from .timeline import to_chrome_trace

        return to_chrome_trace([self])

    def _last_ts(self) -> float:
        return self.events[-1].ts if self.events else self.root.start

    def summary(self) -> dict[str, Any]:
        """The facts of the run as a flat, JSON-safe dict (what lists and tables show)."""
        return {"run_id": self.run_id, "name": self.name, "model": self.model, "status": self.status,
                "stop_reason": self.stop_reason, "error": self.error, "started": self.started,
                "duration": self.duration, "steps": self.steps, "llm_calls": self.llm_calls,
                "cached_calls": self.cached_calls, "retries": self.retries, "tool_calls": self.tool_calls,
                "tool_errors": self.tool_errors, "input_tokens": self.input_tokens,
                "output_tokens": self.output_tokens, "cached_tokens": self.cached_tokens, "cost": self.cost,
                "tags": list(self.tags)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "prompt": self.prompt, "ended": self.ended, "attempts": self.attempts,
                "retry_wait": self.retry_wait, "llm_errors": self.llm_errors, "priced_cost": self.priced_cost,
                "unpriced_calls": self.unpriced_calls, "limit": self.limit, "root": self.root.to_dict()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunRecord):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


from . import record_fold as _record_fold  # noqa: E402, F401, I001 - registers the built-in fold


class RecordIndex:
    """The records of the runs on one bus, by run id: one tap folds every event into its run's record.

    A record is made at its run's ``run_started``; at most ``max_runs`` finished records are kept (oldest
    dropped first). Running runs are never dropped.
    """

    def __init__(self, bus: EventBus, *, max_runs: int = 1000) -> None:
        self.max_runs = max_runs
        self._live: dict[str, RunRecord] = {}
        self._done: OrderedDict[str, RunRecord] = OrderedDict()
        self.detach = bus.tap(self._on_event)

    @classmethod
    def of(cls, bus: EventBus, *, max_runs: int = 1000) -> RecordIndex:
        """The index of ``bus`` (made on first use): every runtime on one bus shares one fold of its runs."""
        index = bus.records
        if index is None:
            index = bus.records = cls(bus, max_runs=max_runs)
        else:
            index.max_runs = max(index.max_runs, max_runs)
        return index  # type: ignore[no-any-return]

    def _on_event(self, ev: Event) -> None:
        rid = ev.run_id
        if rid is None:
            return
        rec = self._live.get(rid)
        if rec is None:
            if ev.kind != "run_started":
                rec = self._done.get(rid)  # what follows a run's end (a budget breach) belongs to it too
                if rec is not None:
                    rec.apply(ev)
                return
            rec = self._live[rid] = RunRecord(rid)
        rec.events.append(ev)  # RunRecord.apply, inline: this runs for every event of every run
        kind = ev.kind
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(rec, ev)
        if kind == "run_finished":
            del self._live[rid]
            done = self._done
            done[rid] = rec
            while len(done) > self.max_runs:
                done.popitem(last=False)

    def get(self, run_id: str) -> RunRecord | None:
        return self._live.get(run_id) or self._done.get(run_id)

    def __getitem__(self, run_id: str) -> RunRecord:
        rec = self.get(run_id)
        if rec is None:
            raise KeyError(run_id)
        return rec

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._live or run_id in self._done

    def __len__(self) -> int:
        return len(self._live) + len(self._done)

    def running(self) -> list[RunRecord]:
        return list(self._live.values())

    def finished(self) -> list[RunRecord]:
        return list(self._done.values())

    def all(self) -> list[RunRecord]:
        return [*self._done.values(), *self._live.values()]

    def totals(self) -> dict[str, float | None]:
        """What the kept runs add up to: runs, steps, LLM calls (endpoint and cached), attempts, retries, errors,
        tool calls, tokens and cost (None when some call had no price). The runtime's metrics fold the same
        events and agree with these figures while no record has been dropped (a test checks)."""
        recs = self.all()
        out: dict[str, float | None] = {"runs": float(len(recs))}
        for name in _SUMMED:
            out[name] = float(sum(getattr(r, name) for r in recs))
        out["cost"] = None if any(r.unpriced_calls for r in recs) else sum(r.priced_cost for r in recs)
        return out


_SUMMED = ("steps", "llm_calls", "cached_calls", "attempts", "retries", "llm_errors", "tool_calls", "tool_errors",
           "input_tokens", "output_tokens", "cached_tokens", "unpriced_calls")


def format_cost(cost: float | None) -> str:
    """A cost as every view shows it: ``$0.000038`` (six decimals), or ``unknown`` when a price is missing."""
    return "unknown" if cost is None else f"${cost:.6f}"
