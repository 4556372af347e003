"""The waterfall in the notebook: live in the run widget, in the static summary, and ``%agent show`` for a
stored run seen from another kernel's magics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Notebook, make_notebook, usage_error

from nbagent.events import LLMFirstToken, LLMRequestStarted, LLMResponse, LLMRetry, RunFinished, RunStarted, StepStarted
from nbagent.notebook import static, unregister
from nbagent.notebook.state import RunState
from nbagent.testing import SimServer

T0 = 1_700_000_000.0


def retried_state() -> RunState:
    s = RunState(name="r")
    for ev in (RunStarted(run_id="x", name="r", model="m", ts=T0), StepStarted(run_id="x", step=1, ts=T0),
               LLMRequestStarted(run_id="x", request_id="q", attempt=1, ts=T0 + 0.01),
               LLMRetry(run_id="x", request_id="q", attempt=1, wait=3.0, reason="connection", ts=T0 + 0.02),
               LLMRequestStarted(run_id="x", request_id="q", attempt=2, ts=T0 + 3.02),
               LLMFirstToken(run_id="x", request_id="q", ttft=1.2, ts=T0 + 4.22),
               LLMResponse(run_id="x", request_id="q", latency=4.62, ttft=1.2, attempts=2, ts=T0 + 4.62),
               RunFinished(run_id="x", status="ok", stop_reason="stop", ts=T0 + 4.63)):
        s.apply(ev)
    return s


def test_static_summary_has_the_waterfall_and_the_breakdown_in_words() -> None:
    page = static.run_summary_html(retried_state())
    assert "where the time went: model wait 1.21 s, generating 0.40 s, retry backoff 3.00 s, client overhead" in page
    assert 'class="nbagent-timeline"' in page and 'data-kind="retry_backoff"' in page
    assert "<script" not in page


async def test_widget_waterfall_is_live_then_final(nb: Notebook, sim: SimServer) -> None:
    sim.configure(latency=30.0)  # the model call stays open until the run is stopped
    await nb.run("%%agent -n live\nslow one")
    entry = nb.registry.get("live")
    assert entry is not None and entry.handle is not None
    rid = entry.handle.run_id

    async def model_call_open() -> None:
        while True:
            rec = nb.registry.runtime.records.get(rid)
            if rec is not None and any(s.kind == "attempt" and s.end is None for s in rec.spans):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(model_call_open(), timeout=20)
    nb.registry.tick()
    widget = entry.view.widget  # type: ignore[union-attr]
    live = widget.waterfall.value
    assert 'class="nbagent-timeline"' in live and "(running)" in live
    assert "where the time went: model wait" in widget.waterfall.head
    entry.handle.cancel()
    await nb.until_done("live")
    nb.registry.flush()
    final = widget.waterfall.value
    assert "(running)" not in final and "[cancelled]" in final  # the open call was closed as cancelled
    assert "waiting…" not in widget.steps.value
    assert 'class="nbagent-timeline"' in static.run_summary_html(entry.state)


async def test_show_a_stored_run_from_another_kernel(nb: Notebook, shell: InteractiveShell, sim: SimServer,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sim.configure(tool_calls_per_run=1)
    monkeypatch.setenv("NBAGENT_STORE_PATH", str(tmp_path / "runs.db"))
    kept = nb.registry.runtime.enable_store(path=tmp_path / "runs.db")
    assert kept is not None
    try:
        await nb.run("from nbagent import tool\n@tool\ndef lookup(key: str) -> str:\n    'Look up.'\n    return 'v'")
        await nb.run("%%agent -n kept -t lookup\nremember me")
        result = await nb.until_done("kept")
        kept.flush()
    finally:
        nb.registry.runtime.disable_store()
    unregister(shell)
    later = make_notebook(shell, sim)  # a later kernel: a fresh registry that never saw the run
    try:
        assert later.registry.get("kept") is None
        for name in ("kept", result.run_id[:8]):
            record = later.magics._find_record(name)
            assert record.run_id == result.run_id and record.tool_calls == 1
            out = await later.run(f"%agent show {name}")
            assert out.success, out.error_in_exec
        text = capsys.readouterr().out
        assert f"kept [{result.run_id}]: ok; model wait" in text
        html = record.timeline()._repr_html_()
        assert "tool lookup" in html and 'data-kind="tools"' in html
        assert "no run named 'nope'" in usage_error(await later.run("%agent show nope"))
        assert "usage: %agent show NAME" in usage_error(await later.run("%agent show"))
    finally:
        unregister(shell)
        await later.registry.aclose()
