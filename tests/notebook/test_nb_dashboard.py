"""The dashboard's process sampler and its static rendering."""

from __future__ import annotations

import asyncio
import json
import re
import time

from support import sim_settings

from nbagent.events import EventBus
from nbagent.execute import slim_widget_state
from nbagent.notebook.dashboard import HISTOGRAMS, SERIES_PANELS, Dashboard, ProcessSampler
from nbagent.notebook.session import RunRegistry
from nbagent.testing import SimServer


class Clock:
    def __init__(self, value: float = 0.0) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_the_first_cpu_sample_waits_for_a_full_interval() -> None:
    wall, cpu = Clock(100.0), Clock(5.0)
    sampler = ProcessSampler(min_interval=0.5, clock=wall, cpu_clock=cpu, cpus=2)
    wall.value += 0.0015  # a sample 1.5 ms after the start, with one 10 ms clock tick counted: 646 % before
    cpu.value += 0.0097
    assert sampler.cpu() is None
    wall.value += 0.9985  # one second after the start, 0.25 s of CPU
    cpu.value += 0.2403
    assert sampler.cpu() == 25.0
    wall.value += 0.1  # too soon again: the last figure
    cpu.value += 0.1
    assert sampler.cpu() == 25.0
    wall.value += 0.9  # one second after the last full sample: 0.1 + 0.4 s of CPU
    cpu.value += 0.4
    assert abs(sampler.cpu() - 50.0) < 1e-9  # type: ignore[operator]
    wall.value += 1.0  # never more than every core busy
    cpu.value += 5.0
    assert sampler.cpu() == 200.0
    assert sampler.memory() > 0


def test_a_new_dashboard_shows_no_cpu_figure_yet() -> None:
    registry = RunRegistry(EventBus())
    try:
        dash = Dashboard(registry)
        assert dash._samples[-1][7] is None  # the first sample, taken as the dashboard is made
        assert "kernel CPU – ·" in dash.header_html()
        cpu = dash.figure.data[len(dash.figure.data) - 4]  # the CPU % trace
        assert cpu.name == "CPU %"
        dash.close()
    finally:
        registry.close()


async def test_the_static_rendering_has_every_panel_and_the_widget_state_the_whole_figure(sim: SimServer) -> None:
    registry = RunRegistry(EventBus(), settings=sim_settings(sim))
    try:
        dash = Dashboard(registry)
        results = await asyncio.gather(*(registry.agent("sim").run(f"q{i}") for i in range(5)))
        assert all(r.ok for r in results)
        dash.refresh(time.monotonic() + 10, force=True)  # a second sample
        page = dash.static_bundle()["text/html"]
        assert "LLM latency: n=5" in page
        assert re.findall(r'class="nbagent-series" data-title="([^"]*)"', page) == [t for t, _ in SERIES_PANELS]
        assert dash.figure._widget_data[0]["x"] == []  # type: ignore[attr-defined]  # as first shown
        dash.sync_figure()
        data = dash.figure._widget_data  # type: ignore[attr-defined]
        assert sum(data[0]["y"]) == 5 and len(data[len(HISTOGRAMS)]["x"]) == 2  # the histogram, the series
        json.dumps(data)  # plain lists: readable without the widget's deserializers
        dash.close()
    finally:
        await registry.aclose()


def test_a_saved_notebook_keeps_the_figure_but_not_plotly_js() -> None:
    bundle = "var plotly=1;" * 100_000
    nb = {"metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {"state": {
        "fig": {"model_name": "AnyModel", "state": {"_esm": bundle, "_widget_data": [{"type": "bar", "y": [1]}],
                                                    "_widget_layout": {}}},
        "other": {"model_name": "AnyModel", "state": {"_esm": bundle}},  # not a plotly figure: kept
        "small": {"model_name": "AnyModel", "state": {"_esm": "export default {}", "_widget_data": [],
                                                      "_widget_layout": {}}},
    }}}}}
    removed = slim_widget_state(nb)
    state = nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]  # type: ignore[index]
    fig = state["fig"]["state"]
    assert len(fig["_esm"]) < 3000 and "plotly.js-dist-min@" in fig["_esm"] and "newPlot" in fig["_esm"]
    assert fig["_widget_data"] == [{"type": "bar", "y": [1]}]
    assert state["other"]["state"]["_esm"] == bundle and state["small"]["state"]["_esm"] == "export default {}"
    assert removed == len(bundle) - len(fig["_esm"])
