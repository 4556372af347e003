"""nbagent.compare: bootstrap intervals, verdicts, groups from live records, the store, tags and batches."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from support import sim_settings

import nbagent
from nbagent import Agent, Runtime
from nbagent.compare import Comparison, Group, bootstrap_ci, compare
from nbagent.config import Price
from nbagent.record import RunRecord
from nbagent.store import RunStore
from nbagent.testing import SimServer


def _latencies(n: int, scale: float, seed: int) -> list[float]:
    rnd = random.Random(seed)
    return [scale * rnd.lognormvariate(0.0, 0.3) for _ in range(n)]


def _records(label: str, durations: list[float], *, tokens: int = 100, cost: float | None = 0.001) -> Group:
    recs = []
    for i, d in enumerate(durations):
        rec = RunRecord(f"{label}-{i}", name=f"{label}-{i}", status="ok", started=1000.0, ended=1000.0 + d,
                        steps=1, llm_calls=1, input_tokens=tokens, output_tokens=tokens // 2)
        if cost is None:
            rec.unpriced_calls = 1
        else:
            rec.priced_cost = cost
        recs.append(rec)
    return Group(label, recs)


def test_bootstrap_interval_covers_a_known_difference_and_excludes_zero() -> None:
    a, b = _latencies(300, 1.0, seed=1), _latencies(300, 0.7, seed=2)  # B's true median is 30 % lower
    est, lo, hi = bootstrap_ci(a, b, "median", resamples=2000, seed=0)
    assert lo <= -0.30 <= hi
    assert hi < 0
    assert lo <= est <= hi


def test_bootstrap_is_seeded_and_pure_python_agrees_with_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = _latencies(200, 1.0, seed=3), _latencies(200, 1.5, seed=4)
    assert bootstrap_ci(a, b, "mean", seed=7) == bootstrap_ci(a, b, "mean", seed=7)
    import sys

    _, lo_np, hi_np = bootstrap_ci(a, b, "mean", seed=7)
    monkeypatch.setitem(sys.modules, "numpy", None)  # import numpy now fails: the pure-Python path
    _, lo_py, hi_py = bootstrap_ci(a, b, "mean", seed=7)
    assert lo_py <= 0.5 <= hi_py and lo_py > 0
    assert abs(lo_py - lo_np) < 0.05 and abs(hi_py - hi_np) < 0.05


def test_bootstrap_needs_two_runs_a_side() -> None:
    with pytest.raises(ValueError, match="at least 2 runs"):
        bootstrap_ci([1.0], [1.0, 2.0])


def test_verdict_names_the_clear_differences() -> None:
    a = _records("A", _latencies(200, 1.0, seed=5), tokens=100)
    b = _records("B", _latencies(200, 0.7, seed=6), tokens=100)
    cmp = compare(a, b)
    (verdict,) = cmp.verdicts()
    assert re.fullmatch(r"B is \d+ % faster \(±\d+ %, 95 % CI\) than A; no clear difference in tokens, cost, steps",
                        verdict), verdict
    d = cmp.differences[0]["latency"]
    assert d.clear and d.low is not None and d.high is not None and d.low <= -0.30 <= d.high


def test_identical_groups_give_no_clear_difference() -> None:
    xs = _latencies(100, 1.0, seed=8)
    cmp = compare(_records("A", xs), _records("B", list(xs)))
    assert cmp.verdicts() == ["B vs A: no clear difference (95 % CI)"]
    assert not any(d.clear for d in cmp.differences[0].values())
    text = str(cmp)
    assert "latency p50" in text and "latency p99" in text and "cache hits" in text
    assert "<table" in cmp._repr_html_() and "B vs A" in cmp._repr_html_()


def test_unknown_cost_stays_unknown() -> None:
    cmp = compare(_records("A", [1.0, 1.1, 0.9]), _records("B", [1.0, 1.2, 0.8], cost=None))
    row = next(r for r in cmp.rows() if r[0] == "cost (mean)")
    assert row[1] == "$0.001000" and row[2] == "unknown"
    assert "cost unknown (a model has no price: see [prices])" in cmp.verdicts()[0]
    assert "$0.000000" not in str(cmp)


def test_too_few_groups_or_no_runs_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least two groups"):
        compare(_records("A", [1.0, 2.0]))
    with pytest.raises(ValueError, match="no finished runs match 'nothing-\\*'"):
        compare(_records("A", [1.0, 2.0]), "nothing-*", runtime=Runtime())


async def _run(rt: Runtime, prompts: list[str], name: str, tags: tuple[str, ...]) -> list[RunRecord]:
    agent = Agent("sim", [], runtime=rt, tags=tags)
    out = []
    for i, p in enumerate(prompts):
        result = await agent.run(p, name=f"{name}-{i}")
        out.append(result.record)
    return out


async def test_groups_from_the_store_equal_groups_from_live_records(sim: SimServer, tmp_path: Path) -> None:
    settings = sim_settings(sim)
    settings.prices["sim"] = Price(1.0, 2.0, 0.5)
    path = tmp_path / "runs.db"
    async with Runtime(settings, store=RunStore(path)) as rt:
        await _run(rt, ["a", "bb", "ccc"], "fast", ("fast", "eval"))
        await _run(rt, ["dddd", "eeeee", "ffffff"], "slow", ("slow", "eval"))
        live = compare("tag:fast", "tag:slow", runtime=rt)
        by_glob = compare("fast-*", "slow-*", runtime=rt)
        rt.store.flush()  # type: ignore[union-attr]
    assert [len(g.records) for g in live.groups] == [3, 3]
    assert by_glob.groups[0].records == live.groups[0].records
    store = RunStore(path)
    try:
        assert {r["name"] for r in store.runs(tag="slow")} == {"slow-0", "slow-1", "slow-2"}
        assert store.runs(tag="eval", limit=None)[0]["tags"] == ["slow", "eval"]
        async with Runtime(settings) as later:  # a later kernel: no live records, the store has them
            stored = compare("tag:fast", "tag:slow", runtime=later, store=store)
    finally:
        store.close()
    for g_live, g_stored in zip(live.groups, stored.groups, strict=True):
        assert g_stored.records == g_live.records
    assert str(stored) == str(live)
    assert "unknown" not in str(live)


async def test_batches_and_results_are_groups(sim: SimServer) -> None:
    async with Runtime(sim_settings(sim)) as rt:
        batch = await nbagent.amap(["x", "yy", "zzz"], agent=Agent("sim", [], runtime=rt, tags=("b",)))
        results = [await Agent("sim", [], runtime=rt).run(p) for p in ("p", "q")]
        cmp = compare(batch, results, labels=["batch", "single"])
    assert isinstance(cmp, Comparison)
    assert [len(g.records) for g in cmp.groups] == [3, 2]
    assert cmp.groups[0].label == "batch"
    assert "unknown" in str(cmp)  # the simulated model has no price


def test_the_package_attribute_is_callable_as_the_function() -> None:
    import nbagent.compare as module

    assert nbagent.compare is compare or callable(nbagent.compare)
    assert isinstance(module(_records("A", [1.0, 2.0]), _records("B", [1.0, 2.0])), Comparison)
