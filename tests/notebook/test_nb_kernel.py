"""The magics in a real ipykernel, executed by nbclient, against the simulated server over real HTTP.

One kernel serves the whole module (kernel start-up is the slow part); each test uses its own run names.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from kernels import KernelNotebook, dump, kernel_env, summaries, text_of
from nbconvert import HTMLExporter

from nbagent.testing import Reply, SimServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def kn(sim_module: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelNotebook]:
    work = tmp_path_factory.mktemp("kernel")
    env = kernel_env(sim_module.url, tmp_path_factory.mktemp("kernel-home"), NBAGENT_RETRY__MAX_ATTEMPTS="1",
                     NBAGENT_LIMITS__STUCK_REPEATS="0")  # the simulated model repeats its tool call
    notebook = KernelNotebook(work, env)
    try:
        setup = notebook.run("%load_ext nbagent\nfrom nbagent import tool\n\n@tool\ndef lookup(key: str) -> str:\n"
                             "    '''Look a key up.'''\n    return 'v-' + key\n")
        assert not text_of(setup), text_of(setup)
        yield notebook
    finally:
        notebook.close()


@pytest.fixture
def sim(sim_module: SimServer) -> Iterator[SimServer]:
    sim_module.configure(latency=0.0, tool_calls_per_run=1, ttft=None, chunk_delay=0.0)
    yield sim_module


def wait_for(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_background_run_progresses_while_the_kernel_is_idle(kn: KernelNotebook, sim: SimServer) -> None:
    sim.configure(latency=0.5, tool_calls_per_run=3)
    dash = kn.run("%agent dashboard")
    base = sim.stats()["completed"]
    start = kn.run("%%agent -n bg -o res --no-stream -t lookup\nwhat is up?")
    check = kn.run("print(type(res).__name__, res.done())")
    assert text_of(check).strip() == "RunHandle False", dump(check)
    completed = sim.stats()["completed"]
    # no cell is executing now: the run must still make its model calls (four in all)
    assert wait_for(lambda: sim.stats()["completed"] >= base + 4), sim.stats()
    assert sim.stats()["completed"] > completed
    time.sleep(1.0)
    after = kn.run("print(type(res).__name__, res.status, res.usage.requests, res.usage.tokens.input_tokens > 0)")
    assert text_of(after).strip() == "RunResult ok 4 True", dump(after)
    # the run's summary went to the cell that started it, not to the cell being executed
    found = summaries(start)
    assert found and found[-1]["status"] == "ok" and int(found[-1]["input-tokens"]) > 0, dump(start)
    assert not summaries(after)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in start.outputs)
    # the dashboard's static rendering follows the runs as well
    html = "".join(o.get("data", {}).get("text/html", "") for o in dash.outputs)
    m = re.search(r"LLM latency: n=(\d+)", html)
    assert m and int(m.group(1)) >= 4, html[:2000]


def test_wait_blocks_until_the_run_ends(kn: KernelNotebook, sim: SimServer) -> None:
    sim.configure(latency=0.3)
    cell = kn.run("%%agent -n w --wait -o r2\nhello there")
    meta = cell.metadata["execution"]
    assert meta["shell.execute_reply"] > meta["iopub.execute_input"]
    found = summaries(cell)
    assert found and found[-1]["status"] == "ok" and int(found[-1]["output-tokens"]) > 0, dump(cell)
    check = kn.run("print(type(r2).__name__, r2.status, r2.output)")
    assert text_of(check).strip() == "RunResult ok Answer to: hello there"


def test_stop_button_cancels_the_run(kn: KernelNotebook, sim: SimServer) -> None:
    sim.configure(latency=0.2, tool_calls_per_run=50)
    cell = kn.run("%%agent -n long -o rl -t lookup --max-steps 100 --no-stream\nkeep looking")
    button = kn.stop_button_of(cell)
    before = sim.requests
    assert wait_for(lambda: sim.requests >= before + 2)
    kn.click(button)  # the message a browser sends when Stop is clicked
    done = kn.run("%agent wait long")
    assert text_of(done).strip() == "long: cancelled", dump(done)
    check = kn.run("print(rl.status, rl.usage.requests < 50)")
    assert text_of(check).strip() == "cancelled True"
    # the button's state as the kernel holds it: its updates carry the starting cell as parent, which
    # nbclient records only while that cell runs
    shown = kn.run("from nbagent.notebook.session import current\nstop = current().get('long').view.widget.stop\n"
                   "print(stop.description, stop.model_id)")
    description, model_id = text_of(shown).split()
    assert description in ("Stopped", "Stopping") and model_id == button, dump(shown)


def test_failed_run_is_shown_not_raised(kn: KernelNotebook) -> None:
    cell = kn.run("%%agent -n bad -o rb --wait --base-url http://127.0.0.1:9/v1\nhi")
    assert not [o for o in cell.outputs if o.output_type == "error"], dump(cell)
    found = summaries(cell)
    assert found and found[-1]["status"] == "error", dump(cell)
    check = kn.run("print(rb.status, type(rb.error).__name__)")
    assert text_of(check).startswith("error "), dump(check)


def test_bad_flags_are_a_usage_error_without_traceback(kn: KernelNotebook) -> None:
    cell = kn.run("%%agent --max-steps lots\nhi", raises=True)
    text = text_of(cell)
    assert "UsageError" in text and "invalid int value" in text and "Traceback" not in text, dump(cell)


def test_run_sync_waits_inside_the_kernel_loop(kn: KernelNotebook, sim: SimServer) -> None:
    cell = kn.run("from nbagent import Agent\nr3 = Agent('sim').run_sync('from run_sync')\nprint(r3.status, r3.output)")
    assert text_of(cell).strip() == "ok Answer to: from run_sync", dump(cell)
    after = kn.run("%%agent -n after --wait -o r4\nstill fine\n")
    assert summaries(after)[-1]["status"] == "ok"


def test_loop_monitor_names_code_that_blocks_the_kernel(kn: KernelNotebook, sim: SimServer) -> None:
    sim.configure(latency=1.5)
    kn.run("%%agent -n lagged\nslow answer")
    kn.run("import time\ntime.sleep(0.6)  # blocks the event loop while the run is active")
    kn.run("%agent wait lagged")
    cell = kn.run("from nbagent.notebook.session import current\nb = current().monitor.blocks[-1]\n"
                  "print(round(b.seconds, 1) >= 0.5, b.where)")
    assert text_of(cell).startswith("True "), dump(cell)
    assert "time.sleep(0.6)" in text_of(cell)


def test_saved_notebook_shows_the_numbers_without_widgets(kn: KernelNotebook, tmp_path: Path) -> None:
    path = kn.save(tmp_path / "executed.ipynb")
    nb = nbformat.read(str(path), as_version=4)
    found = [s for cell in nb.cells for s in summaries(cell)]
    by_run = {s["run"]: s for s in found}
    for name in ("bg", "w"):
        assert by_run[name]["status"] == "ok" and int(by_run[name]["input-tokens"]) > 0, by_run
    assert nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    body, _ = HTMLExporter().from_notebook_node(nb)
    tags = re.findall(r'<div class="nbagent-summary"[^>]*data-run="bg"[^>]*>', body)
    assert tags and 'data-status="ok"' in tags[-1] and not re.search(r'data-input-tokens="0"', tags[-1])
    assert "RunWidget(children" not in body


WAIT_FOR_QUESTION = """
import asyncio
from nbagent.notebook.session import current
entry = current().get({name!r})
for _ in range(400):  # the cell awaits on the kernel's loop, so the run goes on meanwhile
    if entry.state.pending_approval:
        break
    await asyncio.sleep(0.05)
panel = entry.view.widget.approval
print(entry.state.pending_approval, panel.layout.display, 'launch-codes' in panel.question.value,
      panel in entry.view.widget.children and 'nbagent-approve' in panel.approve._dom_classes, panel.approve.model_id)
"""


def test_approve_through_the_widget_in_a_kernel(kn: KernelNotebook, sim: SimServer) -> None:
    kn.run("from nbagent.policy import Policy, Rule\nasks = Policy([Rule('lookup', 'ask')], ask_timeout=60)")
    sim.script(Reply(tool_calls=[("lookup", {"key": "launch-codes"})]), Reply(text="approved and done"))
    start = kn.run("%%agent -n ap -t lookup --policy asks -o rap --no-stream\nLook up the launch codes.")
    kn.widget_in(start, "nbagent-stop")  # the run widget is in the cell; its approval panel is made when asked
    asked = kn.run(WAIT_FOR_QUESTION.format(name="ap"))
    *shown, approve = text_of(asked).split()
    assert shown == ["lookup", "flex", "True", "True"], dump(asked)
    kn.click(approve)  # the message a browser sends when Approve is clicked
    done = kn.run("%agent wait ap")
    assert text_of(done).strip() == "ap: ok", dump(done)
    check = kn.run("print(rap.output, [(e.action, e.decided_by) for e in rap.events if e.kind == 'policy_decided'],"
                   " [m['content'] for m in rap.messages if m['role'] == 'tool'], panel.layout.display)")
    assert text_of(check).strip() == "approved and done [('allow', 'callback')] ['v-launch-codes'] none", dump(check)


def test_an_unanswered_question_times_out_as_a_deny_in_a_kernel(kn: KernelNotebook, sim: SimServer) -> None:
    kn.run("from nbagent.policy import Policy, Rule\nhurried = Policy([Rule('lookup', 'ask')], ask_timeout=0.5)")
    sim.script(Reply(tool_calls=[("lookup", {"key": "k"})]), Reply(text="denied, fine"))
    kn.run("%%agent -n late -t lookup --policy hurried -o rlate --no-stream\nLook it up.")
    done = kn.run("%agent wait late")
    assert text_of(done).strip() == "late: ok", dump(done)
    check = kn.run("print([(e.action, e.decided_by) for e in rlate.events if e.kind == 'policy_decided'])")
    assert text_of(check).strip() == "[('deny', 'timeout')]", dump(check)


def test_many_runs_from_one_cell_are_one_compact_view_also_in_the_saved_notebook(kn: KernelNotebook,
                                                                                   tmp_path: Path) -> None:
    cell = kn.run("for i in range(5):\n    get_ipython().run_cell_magic('agent', f'-n fan-{i}', 'hello')")
    kn.run("%agent wait " + " ".join(f"fan-{i}" for i in range(5)))
    kn.run("pass")  # the next cell publishes the summaries of runs that ended between cells
    views = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1, dump(cell)  # the first three runs' widgets were folded into the compact view
    nb = nbformat.read(str(kn.save(tmp_path / "fan.ipynb")), as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    static = re.findall(r'<div class="nbagent-compact-static" data-runs="(\d+)"', body)
    assert static == ["5"], static
    lines = re.findall(r'<summary class="nbagent-line" data-run="(fan-\d)" data-status="(\w+)"', body)
    assert sorted(lines) == [(f"fan-{i}", "ok") for i in range(5)], lines


def until_in_kernel(condition: str, shown: str, limit: float = 30.0) -> str:
    """A cell that waits on the kernel's loop (at most ``limit`` seconds) until ``condition``, then prints
    ``shown``."""
    return (f"import asyncio, time\n_end = time.monotonic() + {limit}\n"
            f"while not ({condition}) and time.monotonic() < _end:\n    await asyncio.sleep(0.01)\nprint({shown})")


def test_batch_controls_pause_resume_concurrency_and_limits_from_the_widget(kn: KernelNotebook,
                                                                            sim: SimServer) -> None:
    """``nbagent.map`` in a notebook shows its controls; what JupyterLab sends when they are used (on a kernel
    subshell: another thread) reaches the batch, and a change made from code is drawn back in them."""
    sim.configure(latency=0.1)
    before = sim.requests
    start = kn.run("import nbagent\nbatch = nbagent.map([f'c{i}' for i in range(40)], concurrency=2, desc='ctl')")
    pause = kn.widget_in(start, "nbagent-batch-pause")
    concurrency = kn.widget_in(start, "nbagent-batch-concurrency")
    max_steps = kn.widget_in(start, "nbagent-batch-max-steps")
    assert wait_for(lambda: sim.requests >= 2)
    kn.update(pause, value=True)  # the toggle, pressed in a browser
    shown = kn.run(until_in_kernel("batch.paused", "batch.paused, batch.widget.pause.description"))
    assert text_of(shown).split() == ["True", "Resume"], dump(shown)
    # both workers park at the gate (a call that had passed it finishes first): nothing is left on its way
    parked = kn.run(until_in_kernel("batch.control.gate.waiting == 2", "batch.control.gate.waiting"))
    assert text_of(parked).strip() == "2", dump(parked)
    assert wait_for(lambda: sim.stats()["in_flight"] == 0)
    held = sim.requests
    time.sleep(0.5)  # a bounded wait: a call would have started by now if the pause let it
    assert sim.requests == held
    kn.update(concurrency, value=5)
    kn.update(max_steps, value="7")
    # a subshell's messages are not ordered with the main shell's cells: the cell waits for the change (bounded)
    shown = kn.run(until_in_kernel("batch.control.concurrency == 5 and batch.control.agent.limits.max_steps == 7",
                                   "batch.control.concurrency, batch.control.agent.limits.max_steps"))
    assert text_of(shown).split() == ["5", "7"], dump(shown)
    kn.update(max_steps, value="seven")  # refused with a message; the limit stays
    shown = kn.run(until_in_kernel("'not a whole number' in batch.widget.status.value",
                                   "batch.control.agent.limits.max_steps, 'whole number' in batch.widget.status.value"))
    assert text_of(shown).split() == ["7", "True"], dump(shown)
    kn.update(pause, value=False)
    # the batch goes on with no cell running: the change reached the kernel's loop and woke it
    assert wait_for(lambda: sim.requests - before == 40), (sim.requests - before, held)
    done = kn.run("r = await batch\nprint(r.ok, batch.widget.pause.disabled, 'finished' in batch.widget.status.value)")
    assert text_of(done).split() == ["40", "True", "True"], dump(done)
    assert sim.requests - before == 40  # one model call per run (no tools), none sent twice
    again = kn.run("b2 = nbagent.map(['x', 'y'], concurrency=1, desc='code')\nb2.pause()\n"
                   "print(b2.widget.pause.value, b2.widget.pause.description)\n"
                   "b2.resume()\nr2 = await b2\nprint(r2.ok)")
    assert text_of(again).split() == ["True", "Resume", "2"], dump(again)
