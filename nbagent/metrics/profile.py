"""Profiling one run: a sampling profile, measured memory, and where the wall time went.

``await agent.run(prompt, profile=True)`` (``%%agent --profile`` in a notebook) returns a result whose
``profile`` is a :class:`RunProfile`:

* ``html`` / ``text``: a pyinstrument sampling profile of the run's task (time awaiting I/O shows as
  ``[await]`` frames), shown inline in notebooks and kept in the run store;
* ``memory_peak``: the peak growth of the process's resident set during the run (sampled every 5 ms) and
  ``rss_delta``: its growth at the end of the run. Both are process-wide: exact for a run that runs alone,
  an upper bound for runs that overlap;
* ``breakdown``: the run's wall time split as its record's (:meth:`~nbagent.record.RunRecord.breakdown`:
  model wait, generation, tools, sandbox wait, approval wait, retry backoff, cache, start-up and client
  overhead), plus ``total``; the parts add up to it;
* ``awaited``: wall time by the await chain the run task was suspended in (:mod:`nbagent.metrics.awaits`),
  so a wait on the network shows as the call that waited, not as the selector's ``select``.

:func:`wall_breakdown` is the older estimate from a result's phase timings (for runs stored without a record).
"""

from __future__ import annotations

import asyncio
import html as _html
import logging
import os
import threading
import time
import tracemalloc as _tm
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..events import Event
from ..record import BREAKDOWN_KEYS
from .awaits import AwaitSampler

__all__ = ["BREAKDOWN_KEYS", "WALL_BREAKDOWN_KEYS", "RunProfile", "RunProfiler", "rss_bytes", "wall_breakdown"]

log = logging.getLogger("nbagent.metrics.profile")

#: The parts of :func:`wall_breakdown` (a profile's ``breakdown`` has the record's :data:`BREAKDOWN_KEYS`).
WALL_BREAKDOWN_KEYS = ("model", "tools", "sandbox_wait", "cache", "startup", "overhead")


def wall_breakdown(events: Iterable[Event], timings: dict[str, float]) -> dict[str, float]:
    """Split a run's wall time (``timings["total"]``) into :data:`WALL_BREAKDOWN_KEYS`, plus ``total``.

    The loop measures ``timings["model"]`` (inside ``Model.request``, response-cache lookups included) and
    ``timings["tools"]`` (the wall time of tool phases, lease waits and tool-cache lookups included). Events
    refine them: model wait is the sum of ``LLMResponse``/``LLMRequestFailed`` latencies, cache time the sum
    of ``CacheHit``/``CacheMiss`` lookups, sandbox wait the sum of lease waits. Each part is clamped to the
    phase that contains it, and ``overhead`` is the rest, so the parts add up to the total.
    """
    total = float(timings.get("total", 0.0))
    model_time = float(timings.get("model", 0.0))
    tool_time = float(timings.get("tools", 0.0))
    llm_wait = resp_lookup = tool_lookup = lease_wait = 0.0
    for ev in events:
        kind = ev.kind
        if kind == "llm_response":
            if not getattr(ev, "cached", False):
                llm_wait += getattr(ev, "latency", 0.0)
        elif kind == "llm_failed":
            llm_wait += getattr(ev, "latency", 0.0)
        elif kind in ("cache_hit", "cache_miss"):
            if getattr(ev, "cache", "response") == "tool":
                tool_lookup += getattr(ev, "lookup_seconds", 0.0)
            else:
                resp_lookup += getattr(ev, "lookup_seconds", 0.0)
        elif kind in ("sandbox_leased", "sandbox_lease_timeout"):
            lease_wait += getattr(ev, "wait", 0.0)
    resp_lookup = min(resp_lookup, model_time)
    model = min(llm_wait, model_time - resp_lookup)
    tool_lookup = min(tool_lookup, tool_time)
    sandbox_wait = min(lease_wait, tool_time - tool_lookup)
    tools = max(tool_time - tool_lookup - sandbox_wait, 0.0)
    cache = resp_lookup + tool_lookup
    startup = min(float(timings.get("startup", 0.0)), total)  # e.g. starting the embedded model server
    overhead = max(total - model - tools - sandbox_wait - cache - startup, 0.0)
    return {"total": total, "model": model, "tools": tools, "sandbox_wait": sandbox_wait, "cache": cache,
            "startup": startup, "overhead": overhead}


def rss_bytes() -> int | None:
    """This process's resident set size in bytes (``/proc`` on Linux, psutil elsewhere), or None."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class RunProfile:
    """The profile of one run (see the module docs)."""

    run_id: str
    breakdown: dict[str, float]
    html: str = field(default="", repr=False)
    text: str = field(default="", repr=False)
    memory_peak: int | None = None
    rss_delta: int | None = None
    memory_traced: int | None = None
    duration: float = 0.0
    awaited: str = field(default="", repr=False)  # wall time by await chain (see nbagent.metrics.awaits)

    def to_dict(self) -> dict[str, Any]:
        """Breakdown and memory figures (not the profile itself), JSON-ready."""
        return {"run_id": self.run_id, "breakdown": self.breakdown, "memory_peak": self.memory_peak,
                "rss_delta": self.rss_delta, "memory_traced": self.memory_traced, "duration": self.duration}

    def artifacts(self) -> dict[str, Any]:
        """What the run store keeps: ``profile.html``, ``profile.txt``, ``breakdown``, ``profile.json``."""
        out: dict[str, Any] = {"breakdown": self.breakdown, "profile.json": self.to_dict()}
        if self.html:
            out["profile.html"] = self.html
        if self.text:
            out["profile.txt"] = self.text
        if self.awaited:
            out["awaited.txt"] = self.awaited
        return out

    def breakdown_table(self) -> str:
        """The breakdown as aligned text: seconds and share of the total."""
        total = self.breakdown.get("total", 0.0) or 0.0
        lines = [f"{'total':<16}{total:9.3f} s"]
        for key in BREAKDOWN_KEYS:
            v = self.breakdown.get(key, 0.0)
            share = 100.0 * v / total if total else 0.0
            lines.append(f"{key:<16}{v:9.3f} s {share:5.1f} %")
        for label, value in self._memory_rows():
            lines.append(f"{label:<16}{value / 2**20:9.2f} MiB")
        return "\n".join(lines)

    def _memory_rows(self) -> list[tuple[str, int]]:
        rows = [("memory peak", self.memory_peak), ("rss growth", self.rss_delta), ("traced peak", self.memory_traced)]
        return [(label, v) for label, v in rows if v is not None]

    def __str__(self) -> str:
        return self.breakdown_table() + "".join(f"\n\n{part}" for part in (self.awaited, self.text) if part)

    def _repr_html_(self) -> str:
        total = self.breakdown.get("total", 0.0) or 0.0
        rows = "".join(
            f"<tr><td>{k}</td><td style='text-align:right'>{self.breakdown.get(k, 0.0) * 1000:.1f} ms</td>"
            f"<td style='text-align:right'>{(100 * self.breakdown.get(k, 0.0) / total) if total else 0:.1f} %</td>"
            "</tr>" for k in BREAKDOWN_KEYS)
        mem = "".join(f"<tr><td>{label}</td><td style='text-align:right'>{v / 2**20:.2f} MiB</td><td></td></tr>"
                      for label, v in self._memory_rows())
        table = (f"<table><thead><tr><th>run {self.run_id}</th><th>{total * 1000:.1f} ms</th><th></th></tr></thead>"
                 f"<tbody>{rows}{mem}</tbody></table>")
        if not self.html:
            return table
        frame = (f'<iframe srcdoc="{_html.escape(self.html, quote=True)}" style="width:100%;height:420px;'
                 'border:1px solid #ddd"></iframe>')
        awaited = f"<pre>{_html.escape(self.awaited)}</pre>" if self.awaited else ""
        return table + awaited + frame


class _RssSampler:
    """One daemon thread that samples the resident set every few milliseconds while any profile is running."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self._lock = threading.Lock()
        self._peaks: dict[int, int] = {}
        self._ids = 0
        self._thread: threading.Thread | None = None

    def add(self, start: int) -> int:
        with self._lock:
            self._ids += 1
            self._peaks[self._ids] = start
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="nbagent-rss-sampler", daemon=True)
                self._thread.start()
            return self._ids

    def remove(self, token: int) -> int:
        """The peak seen since ``add`` (the current value included)."""
        now = rss_bytes() or 0
        with self._lock:
            return max(self._peaks.pop(token, 0), now)

    def _run(self) -> None:
        while True:
            rss = rss_bytes() or 0
            with self._lock:
                if not self._peaks:
                    self._thread = None
                    return
                for k, v in self._peaks.items():
                    if rss > v:
                        self._peaks[k] = rss
            time.sleep(self.period)


_sampler = _RssSampler()


class RunProfiler:
    """Starts and stops the measurements of one profiled run (used by ``Agent._run``).

    Memory is the process's resident set, sampled every 5 ms by a shared thread: ``memory_peak`` is the
    highest growth over the start of the run, ``rss_delta`` the growth at its end. (tracemalloc would count
    Python allocations exactly, but together with a sampling profiler it slows allocation-heavy code down by
    orders of magnitude; ``tracemalloc=True`` turns it on anyway, for ``memory_traced``.)
    """

    def __init__(self, run_id: str, *, interval: float = 0.001, sample: bool = True,
                 tracemalloc: bool = False) -> None:
        self.run_id = run_id
        self.interval = interval
        self.sample = sample
        self.trace = tracemalloc
        self._profiler: Any = None
        self._rss0: int | None = None
        self._token: int | None = None
        self._traced0 = 0
        self._stopped = False
        self._awaits: AwaitSampler | None = None
        self.memory_traced: int | None = None

    def start(self) -> RunProfiler:
        """Start sampling (in the current task's context) and measuring memory."""
        self._rss0 = rss_bytes()
        if self._rss0 is not None:
            self._token = _sampler.add(self._rss0)
        if self.trace:
            _trace_acquire()
            self._traced0 = _tm.get_traced_memory()[0]
        if self.sample:
            try:
                task = asyncio.current_task()
            except RuntimeError:
                task = None
            if task is not None:
                self._awaits = AwaitSampler(task).start()
            try:
                from pyinstrument import Profiler
            except ImportError:
                log.warning("profile=True: pyinstrument is not installed (pip install 'nbagent[profile]'); "
                            "only the time breakdown and memory are measured")
            else:
                self._profiler = Profiler(interval=self.interval, async_mode="enabled")
                self._profiler.start()
        return self

    def stop(self) -> tuple[int | None, int | None]:
        """Stop everything; returns ``(memory_peak, rss_delta)`` in bytes (None where not measurable)."""
        if self._stopped:
            return None, None
        self._stopped = True
        if self._awaits is not None:
            self._awaits.stop()
        if self._profiler is not None and self._profiler.is_running:
            self._profiler.stop()
        if self.trace:
            current, top = _tm.get_traced_memory()
            self.memory_traced = max(top - self._traced0, 0)
            _trace_release()
        if self._token is None or self._rss0 is None:
            return None, None
        peak = _sampler.remove(self._token)
        end = rss_bytes()
        return max(peak - self._rss0, 0), (end - self._rss0) if end is not None else None

    def finish(self, result: Any) -> RunProfile:
        """Stop, and build the :class:`RunProfile` of ``result``."""
        peak, rss = self.stop()
        html = text = ""
        p = self._profiler
        if p is not None and p.last_session is not None:
            try:
                html = p.output_html()
                text = p.output_text(unicode=True, color=False)
            except Exception:  # noqa: BLE001 - a rendering problem must not cost the run its result
                log.exception("rendering the profile of run %s failed", self.run_id)
        record = getattr(result, "record", None)
        if record is not None and record.started is not None:
            breakdown = {"total": record.duration if record.duration is not None else sum(record.breakdown().values()),
                         **record.breakdown()}
        else:  # a result without a record: the estimate from the loop's phase timings, in the record's terms
            old = wall_breakdown(result.events, result.timings)
            breakdown = {"total": old["total"], **dict.fromkeys(BREAKDOWN_KEYS, 0.0), "model_wait": old["model"],
                         "tools": old["tools"], "sandbox_wait": old["sandbox_wait"], "cache": old["cache"],
                         "startup": old["startup"], "client_overhead": old["overhead"]}
        awaited = self._awaits.table(skip=2) if self._awaits is not None else ""
        return RunProfile(run_id=self.run_id, breakdown=breakdown, html=html, text=text, memory_peak=peak,
                          rss_delta=rss, memory_traced=self.memory_traced, duration=breakdown["total"],
                          awaited=awaited)


# tracemalloc is process-wide: the first profiler that wants it starts it, the last one stops it
_trace_lock = threading.Lock()
_trace_users = 0
_trace_started_here = False


def _trace_acquire() -> None:
    global _trace_users, _trace_started_here
    with _trace_lock:
        if _trace_users == 0:
            _trace_started_here = not _tm.is_tracing()
            if _trace_started_here:
                _tm.start()
            _tm.reset_peak()
        _trace_users += 1


def _trace_release() -> None:
    global _trace_users
    with _trace_lock:
        _trace_users -= 1
        if _trace_users == 0 and _trace_started_here:
            _tm.stop()
