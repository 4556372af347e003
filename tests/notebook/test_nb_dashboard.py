"""The dashboard's process sampler and its static rendering."""

from __future__ import annotations

from nbagent.events import EventBus
from nbagent.notebook.dashboard import Dashboard, ProcessSampler
from nbagent.notebook.session import RunRegistry


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
