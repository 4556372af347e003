"""Waterfalls, where the time went (in words that add up), and Chrome trace JSON of runs and batches."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import sim_settings

from nbagent import Agent, tool
from nbagent.events import (
    Event,
    LLMFirstToken,
    LLMRequestStarted,
    LLMResponse,
    LLMRetry,
    RunFinished,
    RunStarted,
    StepStarted,
    ToolFinished,
    ToolStarted,
)
from nbagent.fanout import amap
from nbagent.policy import PolicyDecided
from nbagent.record import BREAKDOWN_KEYS, RunRecord, Span
from nbagent.runtime import Runtime
from nbagent.testing import SimServer
from nbagent.timeline import batch_breakdown, describe_breakdown, format_seconds, timeline, to_chrome_trace

T0 = 1_700_000_000.0


def run_events(rid: str = "r1", name: str = "demo", offset: float = 0.0) -> list[Event]:
    """A run: a model call that fails once (connection), backs off 3 s and answers (wait 1.2 s, generate 0.4 s),
    then two tools in parallel (one asks for approval) and a last model call."""
    t = T0 + offset
    return [
        RunStarted(run_id=rid, name=name, model="m", ts=t),
        StepStarted(run_id=rid, step=1, ts=t + 0.001),
        LLMRequestStarted(run_id=rid, request_id="q1", attempt=1, model="m", stream=True, ts=t + 0.002),
        LLMRetry(run_id=rid, request_id="q1", attempt=1, wait=3.0, reason="connection", ts=t + 0.05),
        LLMRequestStarted(run_id=rid, request_id="q1", attempt=2, model="m", stream=True, ts=t + 3.05),
        LLMFirstToken(run_id=rid, request_id="q1", ttft=1.2, ts=t + 4.25),
        LLMResponse(run_id=rid, request_id="q1", model="m", latency=4.65, ttft=1.2, attempts=2, input_tokens=10,
                    output_tokens=5, tool_calls=2, ts=t + 4.65),
        ToolStarted(run_id=rid, call_id="c1", name="fetch", arguments="{}", ts=t + 4.66),
        ToolStarted(run_id=rid, call_id="c2", name="grep", arguments="{}", ts=t + 4.67),
        PolicyDecided(run_id=rid, tool="grep", action="allow", decided_by="callback", seconds=0.5, ts=t + 5.17),
        ToolFinished(run_id=rid, call_id="c1", name="fetch", duration=2.0, ts=t + 6.66),
        ToolFinished(run_id=rid, call_id="c2", name="grep", duration=1.0, ts=t + 5.67),
        StepStarted(run_id=rid, step=2, ts=t + 6.67),
        LLMRequestStarted(run_id=rid, request_id="q2", attempt=1, model="m", ts=t + 6.68),
        LLMResponse(run_id=rid, request_id="q2", model="m", latency=0.3, input_tokens=20, output_tokens=3,
                    ts=t + 6.98),
        RunFinished(run_id=rid, status="ok", stop_reason="stop", ts=t + 7.0),
    ]


def record(**kw: Any) -> RunRecord:
    return RunRecord.from_events("r1", run_events(**kw))


# --- where the time went --------------------------------------------------------------------------


def test_breakdown_attributes_backoff_parallel_tools_and_waits() -> None:
    rec = record()
    b = rec.breakdown()
    assert sum(b.values()) == pytest.approx(7.0)
    assert b["retry_backoff"] == pytest.approx(3.0)
    assert b["model_wait"] == pytest.approx(0.048 + 1.2 + 0.3)  # the failed attempt waited on the model too
    assert b["generation"] == pytest.approx(0.4)
    assert b["approval_wait"] == pytest.approx(0.5)
    assert b["tools"] == pytest.approx(2.0 - 0.5)  # two tools in parallel: their union, once; minus approval
    words = describe_breakdown(b)
    assert words.startswith("model wait 1.55 s, generating 0.40 s, tools 1.50 s, approval wait 0.50 s, "
                            "retry backoff 3.00 s, client overhead ")
    assert "overhead 3" not in words


def test_segments_cover_the_run_in_order_and_sum_to_the_breakdown() -> None:
    rec = record()
    segs = rec.segments()
    assert segs[0][0] == rec.started and segs[-1][1] == rec.ended
    assert all(a[1] == b[0] for a, b in zip(segs, segs[1:], strict=False))  # contiguous, no overlap
    assert all(a[2] != b[2] for a, b in zip(segs, segs[1:], strict=False))  # neighbours merged
    assert [s[2] for s in segs][:3] == ["client_overhead", "model_wait", "retry_backoff"]


_KINDS = ("tool", "wait", "generate", "backoff", "approval", "lease", "exec", "cache", "attempt", "policy",
          "model", "step")


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KINDS), st.floats(-1, 11), st.floats(0, 6), st.booleans()),
                max_size=25),
       st.floats(0.5, 10))
def test_breakdown_sums_to_the_wall_time_for_any_spans(spans: list[tuple[str, float, float, bool]],
                                                       wall: float) -> None:
    rec = RunRecord("r", started=0.0, ended=wall)
    rec.root = Span("run", "r", 0.0, wall)
    parent = rec.root
    for kind, start, length, nested in spans:
        span = parent.add(kind, kind, start, start + length)
        parent = span if nested else rec.root
    b = rec.breakdown()
    assert set(b) == set(BREAKDOWN_KEYS)
    assert all(v >= 0 for v in b.values())
    assert sum(b.values()) == pytest.approx(wall)
    covered = [(max(s.start, 0.0), min(s.end if s.end is not None else wall, wall)) for s in rec.spans
               if s.kind in ("tool", "exec")]
    if covered and not any(s.kind in ("approval", "backoff", "lease") for s in rec.spans):
        union = _union(covered)
        assert b["tools"] == pytest.approx(union, abs=1e-9)  # parallel tools counted once


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def test_batch_breakdown_adds_queueing() -> None:
    recs = [record(), RunRecord.from_events("r2", run_events("r2", "second", offset=2.0))]
    b = batch_breakdown(recs)
    assert b["queueing"] == pytest.approx(2.0)
    assert sum(b.values()) == pytest.approx(7.0 + 2.0 + 7.0)  # each run's end minus the batch start
    assert describe_breakdown(b).startswith("queueing 2.00 s")
    assert batch_breakdown(recs, start=T0 - 1)["queueing"] == pytest.approx(1.0 + 3.0)


def test_format_seconds() -> None:
    assert [format_seconds(x) for x in (1.2, 0.4, 0.004, 0.0004)] == ["1.20 s", "0.40 s", "4 ms", "0.4 ms"]


# --- the waterfall --------------------------------------------------------------------------------


def _bars(svg: str) -> list[tuple[str, float, float, str]]:
    return [(m[0], float(m[1]), float(m[2]), m[3]) for m in re.findall(
        r'data-kind="([^"]+)" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"[^>]*><title>([^<]*)</title>', svg)]


def test_waterfall_of_one_run() -> None:
    tl = record().timeline()
    labels = [r.label for r in tl.rows]
    assert labels == ["demo", "step 1", "model m", "tool fetch", "tool grep", "allow (callback)", "step 2", "model m"]
    assert [r.depth for r in tl.rows] == [0, 1, 2, 2, 2, 3, 1, 2]
    model = tl.rows[2]
    assert [b[2] for b in model.bars] == ["model_wait", "retry_backoff", "model_wait", "generation"]
    svg = tl.to_svg()
    assert svg.startswith("<svg") and "<script" not in svg
    bars = _bars(svg)
    kinds = {b[0] for b in bars}
    assert {"model_wait", "generation", "retry_backoff", "tools", "approval_wait"} <= kinds
    hover = [b[3] for b in bars]
    assert any("retry after connection: 3.00 s (connection)" in h for h in hover)
    assert any(h.startswith("model m: 4.65 s, 10 in / 5 out tokens, first token 1.20 s, 2 attempts") for h in hover)
    fetch, grep = (b for b in bars if b[0] == "tools")
    assert grep[1] < fetch[1] + fetch[2]  # the two tools overlap on the time axis: they ran in parallel
    html = tl._repr_html_()
    assert "retry backoff 3.00 s" in html and "<svg" in html


def test_live_waterfall_draws_open_spans_to_now() -> None:
    events = run_events()[:6]  # the second attempt is waiting for its answer
    rec = RunRecord.from_events("r1", events)
    tl = timeline(rec, now=T0 + 5.0)
    assert tl.end == T0 + 5.0 and tl.records[0].ended is None
    bars = _bars(tl.to_svg())
    assert any(h.endswith("(running)") for *_, h in bars)
    assert sum(rec.breakdown(now=T0 + 5.0).values()) == pytest.approx(5.0)


def test_max_rows_keeps_the_first_or_the_newest() -> None:
    rec = record()
    assert [r.label for r in timeline(rec, max_rows=3).rows] == ["demo", "step 1", "model m"]
    tail = timeline(rec, max_rows=2, tail=True)
    assert [r.label for r in tail.rows] == ["step 2", "model m"] and tail.hidden == 6
    assert "6 more rows" in tail.to_svg()


def test_batch_waterfall_has_a_row_per_run_split_by_category() -> None:
    recs = [record(), RunRecord.from_events("r2", run_events("r2", "second", offset=2.0))]
    tl = timeline(recs)
    assert tl.batch and [r.label for r in tl.rows] == ["demo", "second"]
    assert tl.start == T0 and tl.end == T0 + 9.0
    second = tl.rows[1].bars
    assert second[0][2] == "queueing" and second[0][1] - second[0][0] == pytest.approx(2.0)
    assert {b[2] for b in second} >= {"retry_backoff", "tools", "model_wait", "generation"}
    assert "queueing 2.00 s" in tl._repr_html_()


# --- Chrome trace ---------------------------------------------------------------------------------


def test_chrome_trace_puts_parallel_tools_on_their_own_threads() -> None:
    recs = [record(), RunRecord.from_events("r2", run_events("r2", "second", offset=2.0))]
    trace = json.loads(json.dumps(to_chrome_trace(recs)))
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in xs} == {1, 2}
    run1 = [e for e in xs if e["pid"] == 1]
    root = next(e for e in run1 if e["cat"] == "run")
    assert root["ts"] == 0 and root["dur"] == pytest.approx(7e6)
    tools = {e["name"]: e["tid"] for e in run1 if e["cat"] == "tool"}
    assert tools["tool fetch"] != tools["tool grep"] and 1 not in tools.values()
    approval = next(e for e in run1 if e["cat"] == "approval")
    assert approval["tid"] == tools["tool grep"]  # a tool's own spans sit on its thread
    assert all(e["tid"] == 1 for e in run1 if e["cat"] in ("model", "attempt", "backoff", "step"))
    second = next(e for e in xs if e["pid"] == 2 and e["cat"] == "run")
    assert second["ts"] == pytest.approx(2e6)
    names = {e["args"]["name"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"demo [r1]", "second [r2]"}
    assert record().to_chrome_trace()["traceEvents"][0]["ph"] == "M"


# --- real runs ------------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connection_summary_says_retry_backoff_not_overhead() -> None:
    from nbagent.config import Settings

    settings = Settings.load(env={"NBAGENT_BASE_URL": f"http://127.0.0.1:{_closed_port()}/v1",
                                  "NBAGENT_MODEL": "sim"},
                             retry__max_attempts=3, retry__base_delay=0.05, retry__max_delay=0.1)
    async with Runtime(settings) as rt:
        result = await Agent("sim", runtime=rt).run("hi")
    assert result.status == "error" and result.record is not None
    b = result.record.breakdown()
    assert result.record.retries == 2
    assert b["retry_backoff"] == pytest.approx(result.record.retry_wait, abs=1e-5)  # epoch-second floats
    assert sum(b.values()) == pytest.approx(result.record.duration)
    summary = result.summary()
    assert f"retry backoff {format_seconds(b['retry_backoff'])}" in summary
    assert "client overhead" in summary and re.search(r"[^t] overhead", summary) is None


@tool
async def look(key: str) -> str:
    """Look a key up."""
    return key.upper()


async def test_batch_timeline_of_a_map(sim: SimServer) -> None:
    async with Runtime(sim_settings(sim)) as rt:
        agent = Agent("sim", [look], runtime=rt)
        batch = await amap([f"p{i}" for i in range(4)], agent=agent, concurrency=2)
    tl = batch.timeline()
    assert tl.batch and len(tl.rows) == 4
    assert sum(1 for r in tl.rows if r.bars[0][2] == "queueing") >= 2  # two waited for a free slot
    assert {b[2] for r in tl.rows for b in r.bars} >= {"model_wait", "tools"}
    b = tl.breakdown()
    assert b["queueing"] > 0
    assert "queueing" in tl.describe()
    trace = batch.timeline().to_chrome_trace()
    assert len({e["pid"] for e in trace["traceEvents"]}) == 4
