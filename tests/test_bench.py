"""Load tests: ``bench`` / ``run_bench`` / ``nbagent bench`` against the simulated server (small N)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from support import sim_settings

from nbagent import Agent, Settings, tool
from nbagent.bench import PHASES, BenchResult, bench, run_bench
from nbagent.cli import main
from nbagent.events import EventBus
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.testing import SimServer

FAST_RETRIES = {"retry__base_delay": 0.001, "retry__max_delay": 0.01}


async def test_bench_against_the_simulated_server() -> None:
    result = await bench(24, 6, latency=0.01, fault_rate=0.2, tool_calls=2, sim="thread", progress=False,
                         settings=Settings.load(**FAST_RETRIES), seed=3)
    assert isinstance(result, BenchResult)
    assert result.completed == 24 and result.ok == 24 and result.errors == 0  # faults were retried
    assert result.retry_count > 0 and result.retries.get("500", 0) == result.retry_count
    assert result.throughput > 0 and result.duration > 0
    assert result.counts["llm_calls"] == 24 * 3 and result.counts["tool_calls"] == 24 * 2
    lat = result.latency
    assert lat["run"]["count"] == 24 and lat["llm"]["count"] == 72 and lat["tool"]["count"] == 48
    assert lat["overhead"]["count"] == 24
    for phase in ("run", "llm", "tool"):
        s = lat[phase]
        assert 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"] * 1.0001
    assert lat["llm"]["p50"] >= 0.01  # the simulated latency is a floor
    assert result.cache_hit_rate is None and result.sandbox["leases"] == 0
    assert result.memory["peak_in_flight"] >= 1
    assert result.timeline[-1]["completed"] == 24
    assert result.config["concurrency"] == 6 and result.config["fault_rate"] == 0.2
    assert result.pool["peak_in_flight"] <= 6
    text = result.summary()
    assert "24 runs at concurrency 6" in text and "retries" in text and "p95" in text


async def test_errors_are_counted_not_raised() -> None:
    settings = Settings.load(retry__max_attempts=1)
    result = await bench(10, 5, latency=0.0, fault_rate=1.0, fault_kinds=["500"], sim="thread", progress=False,
                         settings=settings)
    assert result.completed == 10 and result.errors == 10 and result.statuses == {"error": 10}
    assert result.llm_errors and sum(result.llm_errors.values()) == 10
    assert sum(result.stop_reasons.values()) == 10


async def test_ramp_up_and_budgets() -> None:
    result = await bench(12, 4, ramp_up=0.2, latency=0.005, sim="thread", progress=False,
                         budgets="p50 latency <= 1000s, steps <= 1, tokens <= 100000", sample_interval=0.01)
    assert result.completed == 12 and result.config["ramp_up"] == 0.2
    states = {b["budget"]: b["ok"] for b in result.budgets}
    assert states == {"p50 latency <= 1000": True, "max steps <= 1": False, "max tokens <= 100000": True}
    assert not result.budgets_ok and len(result.breaches) == 12
    assert "OVER" in result.summary()


async def test_bench_your_own_agent(sim: SimServer) -> None:
    @tool
    async def slow(key: str) -> str:
        """Slow lookup."""
        await asyncio.sleep(0.01)
        return key

    settings = sim_settings(sim)
    bus = EventBus()
    client = LLMClient(settings, bus=bus)
    agent = Agent("sim", [slow], runtime=Runtime(settings, bus=bus, client=client))
    result = await bench(8, 4, agent=agent, progress=False)
    assert result.completed == 8 and result.ok == 8 and result.config["endpoint"] == "custom agent"
    assert result.latency["tool"]["p50"] >= 0.01
    await client.aclose()


def test_reports_json_csv_html(tmp_path: Path) -> None:
    result = run_bench(6, 3, latency=0.0, sim="thread", progress=False)
    data = json.loads(result.to_json(tmp_path / "r.json"))
    assert data == json.loads((tmp_path / "r.json").read_text())
    assert data["completed"] == 6 and set(data["latency"]) == set(PHASES)
    rows = list(csv.DictReader(io.StringIO(result.to_csv(tmp_path / "r.csv"))))
    assert [r["phase"] for r in rows] == list(PHASES)
    assert float(rows[0]["p95"]) > 0 and rows[2]["count"] == "0" and rows[2]["p50"] == ""  # no ttft: not streamed
    html = result._repr_html_()
    assert "<table>" in html and "runs/s" in html


def test_figure_is_plotly() -> None:
    pytest.importorskip("plotly")
    result = run_bench(6, 3, latency=0.0, sim="thread", progress=False, sample_interval=0.01)
    fig = result.figure()
    names = {t.name for t in fig.data}
    assert {"p50", "p95", "p99", "runs/s", "in flight"} <= names


async def test_run_bench_inside_a_running_loop_uses_a_helper_thread() -> None:
    result = run_bench(4, 2, latency=0.0, sim="thread", progress=False)
    assert result.completed == 4


async def test_streaming_measures_time_to_first_token() -> None:
    result = await bench(6, 3, latency=0.01, stream=True, sim="thread", progress=False)
    assert result.ok == 6 and result.latency["ttft"]["count"] == 12


def test_cli_bench_writes_json_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json, out_csv = tmp_path / "b.json", tmp_path / "b.csv"
    code = main(["bench", "--runs", "8", "-c", "4", "--latency", "0.005", "--no-progress", "--json", str(out_json),
                 "--csv", str(out_csv)])
    assert code == 0
    data = json.loads(out_json.read_text())
    assert data["completed"] == 8 and data["config"]["endpoint"] == "simulated (process)"
    assert out_csv.read_text().startswith("phase,count,mean,p50,p95,p99,max")
    assert "8 runs at concurrency 4" in capsys.readouterr().out
    assert main(["bench", "--runs", "4", "-c", "2", "--latency", "0", "--no-progress", "--json", "-",
                 "--budget", "steps <= 1"]) == 1  # a breached budget fails the command
    printed = capsys.readouterr()
    assert json.loads(printed.out)["budgets"][0]["ok"] is False and "OVER" in printed.err
    assert main(["bench", "--runs", "0", "--no-progress"]) == 2


def test_importing_bench_store_and_fanout_pulls_no_ui_package() -> None:
    code = ("import sys, nbagent.bench, nbagent.store, nbagent.fanout, nbagent.metrics.profile, "
            "nbagent.metrics.budgets, nbagent.store.cli, nbagent.bench.cli\n"
            "bad = [m for m in ('IPython', 'ipywidgets', 'plotly', 'tqdm', 'ray', 'pyinstrument', 'pandas') "
            "if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))
