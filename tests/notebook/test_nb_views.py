"""Run state, static renderings, the dashboard's coalesced redraws and the loop-lag monitor."""

from __future__ import annotations

import asyncio
import re
import time

from support import sim_settings

from nbagent.events import (
    EventBus,
    LLMRequestStarted,
    LLMResponse,
    LLMTextDelta,
    RunFinished,
    RunStarted,
    StepStarted,
    ToolFinished,
    ToolStarted,
)
from nbagent.metrics import Histogram, MetricsRegistry
from nbagent.metrics.loopmon import LoopBlocked, LoopMonitor
from nbagent.notebook import static
from nbagent.notebook.dashboard import Dashboard, dashboard
from nbagent.notebook.session import RunRegistry
from nbagent.notebook.state import RunState
from nbagent.notebook.widgets import RunWidget
from nbagent.testing import SimServer


def fold(*events: object) -> RunState:
    s = RunState(name="r")
    for ev in events:
        s.apply(ev)  # type: ignore[arg-type]
    return s


def test_state_folds_steps_tokens_and_streaming_text() -> None:
    s = fold(
        RunStarted(run_id="x", name="r", model="m", prompt="p"),
        StepStarted(run_id="x", step=1),
        LLMRequestStarted(run_id="x", request_id="q1"),
        LLMTextDelta(run_id="x", request_id="q1", text="Hel"),
        LLMTextDelta(run_id="x", request_id="q1", text="lo world"),
    )
    assert s.status == "running" and s.text == "Hello world" and s.live_output_tokens == 11 // 4
    s.apply(LLMResponse(run_id="x", request_id="q1", latency=0.5, ttft=0.1, input_tokens=10, output_tokens=3,
                        tool_calls=1))
    s.apply(ToolStarted(run_id="x", call_id="c1", name="lookup", arguments='{"key": "k"}'))
    s.apply(ToolFinished(run_id="x", call_id="c1", name="lookup", duration=0.25, output_preview="v" * 500,
                         truncated=True, output_chars=30_000))
    assert (s.input_tokens, s.output_tokens, s.live_output_tokens, s.tool_calls) == (10, 3, 3, 1)
    llm, tool = s.cards[0].items
    assert llm.done and "10 in / 3 out" in llm.detail and "ttft 0.10 s" in llm.detail and llm.seconds == 0.5
    assert tool.done and tool.label == "lookup" and "truncated, 30,000 chars" in tool.detail
    assert len(tool.detail) < 300  # the output preview is cut
    s.apply(StepStarted(run_id="x", step=2))
    s.apply(LLMRequestStarted(run_id="x", request_id="q2"))
    s.apply(LLMTextDelta(run_id="x", request_id="q2", text="Final"))
    assert s.text == "Final"  # a new model call starts a new answer
    s.apply(RunFinished(run_id="x", status="ok", duration=1.0))
    assert s.done and s.ended is not None


def test_run_widget_renders_state_and_stop_calls_back() -> None:
    stopped: list[bool] = []
    w = RunWidget("r", on_stop=lambda: stopped.append(True))
    s = fold(RunStarted(run_id="x", name="r"), StepStarted(run_id="x", step=1),
             LLMResponse(run_id="x", request_id="q", input_tokens=1234, output_tokens=56, cached_tokens=7))
    w.render(s)
    assert 'data-input-tokens="1234"' in w.header.value and "1,234" in w.header.value
    assert w.steps.value.count('class="nbagent-step"') == 1 and "model call" in w.steps.value
    sent: list[str] = []
    w.steps.observe(lambda change: sent.append(change["name"]), "value")
    w.render(s)
    assert not sent  # unchanged cards are not sent again
    w.stop.click()
    assert stopped == [True] and w.stop.disabled


def test_static_summary_carries_the_numbers() -> None:
    s = fold(RunStarted(run_id="x", name="r<1>"), StepStarted(run_id="x", step=1),
             LLMResponse(run_id="x", request_id="q", latency=0.2, input_tokens=42, output_tokens=9),
             RunFinished(run_id="x", status="ok", stop_reason="stop", duration=0.3))
    s.text, s.name = "<b>answer</b>", "r<1>"
    page = static.run_summary_html(s)
    assert 'data-input-tokens="42"' in page and 'data-output-tokens="9"' in page and 'data-status="ok"' in page
    assert "&lt;b&gt;answer&lt;/b&gt;" in page and "r&lt;1&gt;" in page and "<svg" in page
    assert "<script" not in page
    assert static.text_summary(s).startswith("r<1>: ok")


def test_histogram_bins_and_svg() -> None:
    h = Histogram()
    h.record_many([0.001, 0.0011, 0.01, 0.1, 0.1, 0.1, 0.0])
    centres, counts, labels = static.histogram_bins(h)
    assert sum(counts) == 7 and centres[0] == 0.0 and len(centres) <= 6 and labels[-1].endswith("ms")
    svg = static.histogram_svg("lat", h)
    assert svg.startswith("<svg") and "n=7" in svg
    assert static.histogram_svg("lat", None) == ""  # a panel with no data is left out
    edges = static.histogram_edges(h)
    assert edges[0][0] == 0.0 and all(lo < hi for lo, hi, _ in edges)
    assert all(a[1] <= b[0] + 1e-12 for a, b in zip(edges, edges[1:], strict=False))  # true edges


async def test_dashboard_redraws_are_coalesced(sim: SimServer) -> None:
    registry = RunRegistry(EventBus(), settings=sim_settings(sim))
    try:
        dash = dashboard(registry)
        assert isinstance(dash, Dashboard)
        agent = registry.agent("sim")
        results = await asyncio.gather(*(agent.run(f"q{i}") for i in range(20)))
        assert all(r.ok for r in results)
        draws = dash.draws
        t0 = time.monotonic()
        for i in range(100):  # 100 ticks within one simulated second while events keep coming
            registry.bus.emit(RunStarted(run_id=f"fake{i}", name="f"))
            registry.tick(now=t0 + 1 + i * 0.01)
        assert 1 <= dash.draws - draws <= 5  # at most ~4 per second
        llm = dash.figure.data[0]
        assert sum(llm.y) == 20  # type: ignore[attr-defined]
        assert "tokens" in dash.header.value and "LLM p50" in dash.header.value
        bundle = dash.static_bundle()
        assert "LLM latency: n=20" in bundle["text/html"] and "<svg" in bundle["text/html"]
        dash.close()
        assert not list(registry._views)
    finally:
        await registry.aclose()


async def test_run_views_are_budgeted_per_tick(sim: SimServer) -> None:
    # no background ticks during the test (refresh every 100 s): only the ticks it makes count
    registry = RunRegistry(EventBus(), settings=sim_settings(sim), max_renders_per_tick=5, refresh_hz=0.01)
    rendered: list[str] = []

    class View:
        def __init__(self, name: str) -> None:
            self.name = name

        def render(self, state: RunState) -> None:
            rendered.append(self.name)

        def publish(self, state: RunState, *, current: bool = False) -> None:
            pass

    try:
        agent = registry.agent("sim")
        entries = [registry.submit(agent, f"q{i}", view_factory=lambda e: View(e.name)) for i in range(20)]
        await asyncio.wait([e.handle.task for e in entries if e.handle is not None])
        registry.tick()
        assert len(rendered) == 5
        registry.flush()
        assert all(e.published for e in entries) and len(set(rendered)) == 20
    finally:
        await registry.aclose()


async def test_loop_monitor_names_the_blocking_code() -> None:
    reg, bus = MetricsRegistry(), EventBus()
    seen: list[LoopBlocked] = []
    bus.tap(lambda e: seen.append(e) if isinstance(e, LoopBlocked) else None)
    mon = LoopMonitor(interval=0.01, threshold=0.1, registry=reg, bus=bus)
    mon.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # noqa: ASYNC251 - block the loop on purpose: the watchdog samples this line
        await asyncio.sleep(0.05)
    finally:
        mon.stop()
    assert reg.value("loop.blocks") == 1 and seen and seen[0].seconds >= 0.3
    assert re.search(r"test_nb_views\.py:\d+ in test_loop_monitor_names_the_blocking_code: time\.sleep", seen[0].where)
    assert "time.sleep(0.4)" in seen[0].stack
    assert mon.lag.count >= 5 and mon.snapshot()["blocks"] == 1
    assert not mon.running


def test_sandbox_events_feed_the_dashboard_histograms() -> None:
    from nbagent.sandbox.events import SandboxExec, SandboxLeased

    registry = RunRegistry(EventBus())
    try:
        for i in range(5):
            registry.bus.emit(SandboxLeased(sandbox_id="s", backend="local", wait=0.01 * (i + 1)))
            registry.bus.emit(SandboxExec(sandbox_id="s", backend="local", seconds=0.2, exit_code=0))
        dash = Dashboard(registry)
        assert sum(dash.figure.data[3].y) == 5 and sum(dash.figure.data[4].y) == 5  # type: ignore[attr-defined]
        assert "sandbox lease wait: n=5" in dash.static_bundle()["text/html"]
        dash.close()
    finally:
        registry.close()


def test_the_dashboard_shows_the_adaptive_concurrency_limit() -> None:
    from nbagent.llm.limiter import ConcurrencyChanged

    registry = RunRegistry(EventBus())
    try:
        dash = Dashboard(registry)
        assert "concurrency limit" not in dash.header_html()  # no limit has moved yet
        registry.bus.emit(ConcurrencyChanged(endpoint="sim@http://127.0.0.1:1/v1", limit=48, previous=32,
                                             reason="slow_start"))
        assert "LLM concurrency limit <b>48</b>" in dash.header_html()
        dash.close()
    finally:
        registry.close()
