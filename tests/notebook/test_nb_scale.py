"""Views that hold up at scale: the step list, calls that never finished, one output per frontend, many runs
from one cell in a compact view, and honest loop-lag attribution of nbagent's own drawing."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Notebook

import nbagent.notebook as notebook_pkg
from nbagent.events import LLMRequestStarted, RunStarted, StepStarted, ToolStarted
from nbagent.metrics.loopmon import describe_stack
from nbagent.notebook import compact, static
from nbagent.notebook.entry import failed_result
from nbagent.notebook.live import HIDE_STATIC_JS, ScrollList
from nbagent.notebook.state import RunState
from nbagent.notebook.widgets import RunOutput, RunWidget
from nbagent.testing import Reply, SimServer


def test_the_step_list_keeps_its_scroll_and_the_approval_panel_is_made_when_asked() -> None:
    w = RunWidget("r")
    assert isinstance(w.steps, ScrollList) and "follow" in w.steps._esm and "scrollTop" in w.steps._esm
    assert w._approval is None and len(w.children) == 4  # no approval panel until a policy asks
    w.show_approval("shell", '{"command": "ls"}', lambda answer: None)
    assert w.approval.visible and w.children[1] is w.approval and len(w.children) == 5
    w.hide_approval()
    assert not w.approval.visible


def test_a_run_ended_from_outside_leaves_no_waiting_card() -> None:
    s = RunState(name="r")
    for ev in (RunStarted(run_id="x", name="r", model="m"), StepStarted(run_id="x", step=1),
               LLMRequestStarted(run_id="x", request_id="q"),
               ToolStarted(run_id="x", call_id="c", name="lookup", arguments="{}")):
        s.apply(ev)
    assert "waiting…" in [i.detail for c in s.cards for i in c.items]  # while it runs, the call waits
    s.finish(failed_result("r", asyncio.CancelledError(), status="cancelled"))  # no RunFinished event came
    items = [i for c in s.cards for i in c.items]
    assert all(i.done for i in items) and [i.detail for i in items] == ["cancelled", "({}) cancelled"]
    w = RunWidget("r")
    w.render(s)
    assert "waiting…" not in w.steps.value and " …" not in w.steps.value


async def test_timed_out_and_refused_calls_leave_no_waiting_card(nb: Notebook, sim: SimServer) -> None:
    await nb.run("from nbagent import tool\nfrom nbagent.policy import Policy, Rule\n"
                 "no = Policy([Rule('lookup', 'deny', reason='not today')])\n"
                 "@tool\ndef lookup(key: str) -> str:\n    'Look up.'\n    return 'v'")
    sim.script(Reply(tool_calls=[("lookup", {"key": "k"})]), Reply(text="ok then"))
    await nb.run("%%agent -n refused -t lookup --policy no\nlook it up")
    assert (await nb.until_done("refused")).ok
    sim.configure(latency=30.0)
    await nb.run("%%agent -n slow --timeout 0.3\nslow")
    await nb.until_done("slow")
    nb.registry.flush()
    for name in ("refused", "slow"):
        entry = nb.registry.get(name)
        assert entry is not None and entry.view is not None
        steps = entry.view.widget.steps.value  # type: ignore[attr-defined]
        assert steps.count('class="nbagent-step"') >= 1
        assert "waiting…" not in steps and "streaming…" not in steps and " …" not in steps, (name, steps)
    refused = nb.registry.get("refused").view.widget.steps.value  # type: ignore[union-attr]
    assert "lookup: denied" in refused


def test_a_failed_run_says_its_error_once_in_the_widget_and_the_static_summary_hides_next_to_it() -> None:
    s = RunState(name="bad")
    s.finish(failed_result("bad", ValueError("no endpoint named 'x'")))
    w = RunWidget("bad")
    w.render(s)
    shown = w.header.value + w.answer.value
    assert shown.count("no endpoint named") == 1, shown
    assert static.run_summary_html(s).count("no endpoint named") == 1
    # a drawn widget hides the static summaries of its output area; without one (nbconvert) they show
    assert ".jp-OutputArea:has(.nbagent-live)" in HIDE_STATIC_JS and ".nbagent-summary" in HIDE_STATIC_JS
    assert 'class="nbagent-summary"' in static.run_summary_html(s)


@pytest.fixture
def in_cell(shell: InteractiveShell) -> Iterator[dict[str, Any]]:
    """The shell as a kernel running one cell: a request header that every output of the cell carries."""
    header = {"msg_id": f"cell-{id(shell)}-{os.urandom(4).hex()}", "msg_type": "execute_request"}
    shell.parent_header = header  # type: ignore[attr-defined]
    try:
        yield header
    finally:
        del shell.parent_header  # type: ignore[attr-defined]


def test_a_few_runs_from_one_cell_keep_their_own_widgets(shell: InteractiveShell, in_cell: dict[str, Any]) -> None:
    outs = [RunOutput(f"r{i}", shell).show() for i in range(compact.COMPACT_AFTER)]
    assert not any(o.compact for o in outs) and all(o._widget is not None for o in outs)


def test_many_runs_from_one_cell_show_one_line_each(shell: InteractiveShell, in_cell: dict[str, Any]) -> None:
    outs = [RunOutput(f"r{i}", shell).show() for i in range(6)]
    group = outs[0].group
    assert group is not None and all(o.group is group and o.compact for o in outs)
    assert group.view is not None
    assert all(o._widget is None for o in outs[compact.COMPACT_AFTER:])  # full widgets only when opened
    for i, out in enumerate(outs):
        s = RunState(name=f"r{i}")
        for ev in (RunStarted(run_id=f"x{i}", name=f"r{i}", model="m"), StepStarted(run_id=f"x{i}", step=1)):
            s.apply(ev)
        out.render(s)
    group.draw()
    header, *lines = group.view.lines.rows
    assert "6 runs" in header and "6 running" in header and len(lines) == 6
    assert all('class="nbagent-line"' in line and 'class="nbagent-spark"' in line and "1 steps" in line
               for line in lines)
    # a click on a line opens the run's full widget below the lines; a second click closes it
    group.view._message(group.view.lines, {"toggle": "r5"}, [])
    assert outs[5]._widget is not None and group.view.detail.children == (outs[5]._widget,)
    assert group.view.lines.opened == "r5"
    group.view._message(group.view.lines, {"toggle": "r5"}, [])
    assert group.view.detail.children == () and group.view.lines.opened == ""
    # the static form survives without widgets: one line per run, each opening to its summary once it ended
    for i, out in enumerate(outs):
        s = group.states[f"r{i}"]
        s.finish(failed_result(f"r{i}", asyncio.CancelledError(), status="cancelled"))
        out.publish(s)
        assert bool(group._published) == (i == 5)  # sent once the last run ends, not once per run
    page = compact.static_html(list(group.states.values()))
    assert 'class="nbagent-compact-static" data-runs="6"' in page
    assert page.count("<details style=\"margin:0\">") == 6 and page.count('class="nbagent-summary"') == 6
    assert "<script" not in page


async def test_a_cell_that_starts_many_runs_shows_the_compact_view(nb: Notebook, sim: SimServer,
                                                                   in_cell: dict[str, Any]) -> None:
    await nb.run("for i in range(5):\n    get_ipython().run_cell_magic('agent', f'-n many-{i}', 'hello')")
    for i in range(5):
        await nb.until_done(f"many-{i}")
    nb.registry.flush()
    views = [nb.registry.get(f"many-{i}").view for i in range(5)]  # type: ignore[union-attr]
    group = views[0].group  # type: ignore[union-attr]
    assert group is not None and group.compact and all(v.group is group for v in views)  # type: ignore[union-attr]
    header, *lines = group.view.lines.rows
    assert len(lines) == 5 and all('data-status="ok"' in line for line in lines) and "0 running" in header
    assert all(int(re.search(r'data-segments="(\d+)"', line).group(1)) >= 1 for line in lines)  # type: ignore[union-attr]


def test_a_block_inside_nbagents_own_drawing_names_its_caller() -> None:
    inside = os.path.join(os.path.dirname(notebook_pkg.__file__), "widgets.py")
    ns: dict[str, Any] = {}
    exec(compile("def build(sample):\n    return sample()\n", inside, "exec"), ns)  # noqa: S102
    where, stack = describe_stack(ns["build"](sys._getframe))
    assert where.startswith("nbagent display (widgets.py:2 in build), called from test_nb_scale.py:"), where
    assert "in test_a_block_inside_nbagents_own_drawing_names_its_caller" in where
    assert "widgets.py" in stack
    here, _ = describe_stack(sys._getframe())
    assert here.startswith("test_nb_scale.py:")  # user code is named as before


def test_a_big_batch_shows_its_running_and_failed_runs_first_and_counts_the_rest() -> None:
    from nbagent.record import RunRecord

    records = []
    for i in range(40):
        status = "error" if i in (3, 17) else "running" if i >= 38 else "ok"
        rec = RunRecord(f"id{i}", name=f"b{i}", status=status, started=1000.0 + i, steps=1,
                        ended=None if status == "running" else 1001.0 + i)
        records.append(rec)
    page = compact.run_lines_html(records, limit=10, now=1050.0)
    shown = re.findall(r'class="nbagent-line" data-run="(b\d+)" data-status="(\w+)"', page)
    assert len(shown) == 10 and 'data-runs="40"' in page
    # the failures and the runs still going are never hidden; then the most recent, in start order
    assert {"b3", "b17", "b38", "b39"} <= {name for name, _ in shown}
    assert [int(name[1:]) for name, _ in shown] == sorted(int(name[1:]) for name, _ in shown)
    assert "… and 30 more (30 ok)" in page
