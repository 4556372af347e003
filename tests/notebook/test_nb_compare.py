"""%%agent --tag, %agent compare, and honest numbers in %agent list / history / cache, in a real IPython shell."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from shells import Notebook, usage_error

from nbagent.config import Price
from nbagent.store import RunStore


async def _runs(nb: Notebook, names: list[str], flags: str = "") -> None:
    for name in names:
        await nb.run(f"%%agent -n {name} {flags}\nquestion {name}")
        assert (await nb.until_done(name)).ok


async def test_tags_reach_the_record_and_compare_by_tag(nb: Notebook, capsys: pytest.CaptureFixture[str]) -> None:
    await _runs(nb, ["a1", "a2", "a3"], "--tag fast --tag eval")
    await _runs(nb, ["b1", "b2", "b3"], "--tag slow,eval")
    records = {r.name: r for r in nb.registry.runtime.records.finished()}
    assert records["a1"].tags == ("fast", "eval") and records["b3"].tags == ("slow", "eval")
    capsys.readouterr()
    result = await nb.run("%agent compare tag:fast tag:slow")
    assert result.error_in_exec is None, result.error_in_exec
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("tag:slow "))
    assert first.startswith("tag:slow ") and ("than tag:fast" in first or "no clear difference" in first)
    for label in ("latency p50", "latency p95", "latency p99", "tokens (mean)", "cost (mean)", "steps (mean)",
                  "errors", "cache hits", "tag:slow vs tag:fast (95 % CI)"):
        assert label in out
    assert "unknown" in out  # the simulated model has no price: never $0
    await nb.run("%agent compare a* b* b1")  # globs and names, three groups
    assert capsys.readouterr().out.count(" vs a*") >= 2


async def test_compare_and_tag_errors_are_one_line(nb: Notebook) -> None:
    assert "usage: %agent compare A B" in usage_error(await nb.run("%agent compare only-one"))
    assert "no finished runs match 'ghost*'" in usage_error(await nb.run("%agent compare ghost* other*"))
    assert "--tag 'no way'" in usage_error(await nb.run("%%agent --tag 'no way'\nhi"))


async def test_list_shows_cost_unknown_without_a_price_and_dollars_with_one(
        nb: Notebook, capsys: pytest.CaptureFixture[str]) -> None:
    await _runs(nb, ["unpriced"])
    nb.registry.runtime.settings.prices["priced-model"] = Price(1.0, 2.0, 0.5)
    await nb.run("%%agent -n priced -m priced-model\nhello")
    assert (await nb.until_done("priced")).ok
    capsys.readouterr()
    await nb.run("%agent list")
    lines = {line.split(":")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["unpriced"].endswith(" unknown")
    assert lines["priced"].split()[-1].startswith("$0.0000")
    assert "$0.000000" not in lines["unpriced"]


async def test_history_is_a_readable_table_newest_first(nb: Notebook, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    kept = nb.registry.runtime.enable_store(RunStore(tmp_path / "runs.db"))
    assert kept is not None
    try:
        await _runs(nb, ["old", "new"], "--tag h")
        kept.flush()
        capsys.readouterr()
        await nb.run("%agent history 5")
        lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", line)]
        assert [line.split(":")[-2].split()[-1] for line in lines] == ["new", "old"]
        started = dt.datetime.strptime(lines[0][:19], "%Y-%m-%d %H:%M:%S")  # local time, not UTC epoch
        assert abs((started - dt.datetime.now()).total_seconds()) < 3600
        assert all(line.endswith((" unknown",)) for line in lines)
        assert all(" ms " in line or " s " in line for line in lines)
        html = nb.registry.runtime.store.runs(tag="h")  # type: ignore[union-attr]
        assert {r["name"] for r in html} == {"old", "new"}
        table = _last_html(nb)
        assert "<th style='text-align:left;padding:1px 8px'>pid</th>" not in table
        await nb.run("%agent history 5 --hosts")
        assert "<th style='text-align:left;padding:1px 8px'>pid</th>" in _last_html(nb)
    finally:
        nb.registry.runtime.disable_store()
        kept.close()


async def test_cache_in_words_without_repeating_the_file(nb: Notebook, capsys: pytest.CaptureFixture[str]) -> None:
    await _runs(nb, ["c1", "c2"], "--cache read-write")  # two misses, then a hit
    await nb.run("%%agent -n c3 --cache read-write\nquestion c1")
    assert (await nb.until_done("c3")).ok
    capsys.readouterr()
    await nb.run("%agent cache")
    out = capsys.readouterr().out
    assert "response hit rate: 33.3% (1 hits, 2 misses)" in out
    assert "response tokens saved: " in out and " tokens" in out
    assert out.count("entries, size") == 1  # the file shared by the response and tool caches, once
    assert "cache.response.hits" not in out  # words, not metric names


def _last_html(nb: Notebook) -> str:
    """The HTML of the last display the shell published."""
    pub = nb.shell.display_pub
    return str(getattr(pub, "last_html", ""))


@pytest.fixture(autouse=True)
def _record_html(nb: Notebook, monkeypatch: pytest.MonkeyPatch) -> None:
    pub = nb.shell.display_pub
    publish = pub.publish

    def keep(data: dict, *args: object, **kwargs: object) -> None:
        if "text/html" in data:
            pub.last_html = data["text/html"]  # type: ignore[attr-defined]
        publish(data, *args, **kwargs)

    monkeypatch.setattr(pub, "publish", keep)


async def test_dashboard_histograms_on_a_numeric_axis_split_by_tag(nb: Notebook) -> None:
    from nbagent.notebook.dashboard import Dashboard

    await _runs(nb, ["t1", "t2"], "--tag alpha")
    await _runs(nb, ["t3"], "--tag beta")
    dash = Dashboard(nb.registry, split="tag")
    try:
        split = [t for t in dash.figure.data if t.type == "bar" and t.name in ("alpha", "beta")]
        llm = [t for t in split if t.xaxis == "x"]  # the LLM latency panel
        assert sorted(t.name for t in llm) == ["alpha", "beta"]
        alpha = next(t for t in llm if t.name == "alpha")
        assert sum(alpha.y) == 2 and all(isinstance(x, float) for x in alpha.x)  # numbers, not bucket labels
        assert all(w > 0 for w in alpha.width)
        assert sum(1 for t in split if t.showlegend) == 2  # one legend entry per tag, not per panel
        assert dash.figure.layout.annotations[4].text == ""  # sandbox exec: no data, panel hidden
        assert "sandbox exec" not in dash.static_bundle()["text/html"]
    finally:
        dash.close()
    assert "usage: %agent dashboard" in usage_error(await nb.run("%agent dashboard --by colour"))
