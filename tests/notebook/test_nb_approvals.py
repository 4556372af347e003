"""Policy approvals in the run widget: Approve, Deny, "Always for this run", timeouts, and the flags that pick a policy.

The runs go through the magics of a real InteractiveShell against the simulated server; the buttons are
clicked as ipywidgets does for a click from the frontend.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shells import Notebook, make_notebook, usage_error

from nbagent.notebook import unregister
from nbagent.policy import PolicyDecided
from nbagent.testing import Reply, SimServer

SETUP = """
from nbagent import tool
from nbagent.policy import Policy, Rule
ran = []

@tool
def shell(command: str) -> str:
    '''Run a shell command (recorded here).'''
    ran.append(command)
    return 'ran ' + command

pol = Policy([Rule('shell', 'ask', when={'command': '^sudo'}), Rule('*', 'allow')], ask_timeout=%s)
"""


async def pending_panel(nb: Notebook, name: str, timeout: float = 10.0) -> Any:
    """The run's widget once its approval panel shows a question."""
    entry = nb.registry.get(name)
    assert entry is not None and entry.view is not None
    widget = entry.view.widget  # type: ignore[attr-defined]
    for _ in range(int(timeout / 0.02)):
        if widget.approval.visible:
            return widget
        await asyncio.sleep(0.02)
    raise AssertionError(f"no approval was asked in {name}: {entry.state}")


def decisions(nb: Notebook, name: str) -> list[tuple[str, str]]:
    entry = nb.registry.get(name)
    assert entry is not None and entry.result is not None
    return [(e.action, e.decided_by) for e in entry.result.events if isinstance(e, PolicyDecided)]


async def test_approve_runs_the_call_and_deny_tells_the_model(nb: Notebook, sim: SimServer) -> None:
    await nb.run(SETUP % 30)
    sim.script(Reply(tool_calls=[("shell", {"command": "sudo reboot"})]), Reply(text="done"))
    await nb.run("%%agent -n ok -t shell --policy pol -o r1\nreboot it")
    widget = await pending_panel(nb, "ok")
    assert "sudo reboot" in widget.approval.question.value and "shell" in widget.approval.question.value
    nb.registry.flush()
    assert "waiting for approval: shell" in widget.header.value
    assert not nb.ns("ran")  # nothing runs before the answer
    widget.approval.approve.click()
    result = await nb.until_done("ok")
    assert result.ok and nb.ns("ran") == ["sudo reboot"]
    assert decisions(nb, "ok") == [("allow", "callback")]
    nb.registry.flush()
    assert not widget.approval.visible and "waiting for approval" not in widget.header.value
    assert "shell: approved" in widget.steps.value

    sim.script(Reply(tool_calls=[("shell", {"command": "sudo rm -rf /"})]), Reply(text="fine"))
    await nb.run("%%agent -n no -t shell --policy pol\nclean up")
    widget = await pending_panel(nb, "no")
    widget.approval.deny.click()
    result = await nb.until_done("no")
    assert result.ok and nb.ns("ran") == ["sudo reboot"]  # the denied call never ran
    tool_msg = next(m for m in result.messages if m["role"] == "tool")
    assert "was not run" in tool_msg["content"] and "denied" in tool_msg["content"]
    assert decisions(nb, "no") == [("deny", "callback")]


async def test_always_for_this_run_answers_the_tools_other_calls(nb: Notebook, sim: SimServer) -> None:
    await nb.run(SETUP % 30)
    calls = [("shell", {"command": f"sudo step {i}"}) for i in range(3)]
    sim.script(Reply(tool_calls=calls), Reply(tool_calls=[("shell", {"command": "sudo again"})]), Reply(text="ok"))
    await nb.run("%%agent -n al -t shell --policy pol\ndo three things")
    widget = await pending_panel(nb, "al")
    await asyncio.sleep(0.05)  # the parallel calls queue behind the first question
    assert "2 more waiting" in widget.approval.question.value
    widget.approval.always.click()
    result = await nb.until_done("al")
    assert result.ok and sorted(nb.ns("ran")) == ["sudo again", "sudo step 0", "sudo step 1", "sudo step 2"]
    assert sorted(decisions(nb, "al")) == [("allow", "callback")] * 3 + [("allow", "run-memo")]
    assert nb.registry.approvals.asked == 3 and not nb.registry.approvals.pending(result.run_id)


async def test_no_answer_within_the_timeout_is_a_deny(nb: Notebook, sim: SimServer) -> None:
    await nb.run(SETUP % 0.3)
    sim.script(Reply(tool_calls=[("shell", {"command": "sudo wait"})]), Reply(text="gave up"))
    await nb.run("%%agent -n to -t shell --policy pol\nwait")
    widget = await pending_panel(nb, "to")
    result = await nb.until_done("to")
    assert result.ok and not nb.ns("ran") and decisions(nb, "to") == [("deny", "timeout")]
    assert not widget.approval.visible  # the question was withdrawn


async def test_stop_withdraws_the_question(nb: Notebook, sim: SimServer) -> None:
    await nb.run(SETUP % 30)
    sim.script(Reply(tool_calls=[("shell", {"command": "sudo hold"})]), Reply(text="never"))
    await nb.run("%%agent -n st -t shell --policy pol\nhold")
    widget = await pending_panel(nb, "st")
    widget.stop.click()
    assert (await nb.until_done("st")).status == "cancelled"
    assert not widget.approval.visible and not nb.ns("ran")


async def test_policy_flag_errors_and_the_settings_policy(shell: Any, sim: SimServer, tmp_path: Any) -> None:
    nb = make_notebook(shell, sim, policy={"default": "allow", "rules": [{"tool": "shell", "action": "deny"}]})
    try:
        await nb.run(SETUP % 30 + "not_a_policy = 3")
        assert "--policy 'nope' is not defined" in usage_error(await nb.run("%%agent --policy nope\nq"))
        assert "is a int, not a nbagent.policy.Policy" in usage_error(await nb.run("%%agent --policy not_a_policy\nq"))
        sim.script(Reply(tool_calls=[("shell", {"command": "ls"})]), Reply(text="denied"))
        await nb.run("%%agent -n cfg -t shell\nlist")  # no --policy: the [policy] settings deny shell
        assert (await nb.until_done("cfg")).ok and not nb.ns("ran")
        assert decisions(nb, "cfg") == [("deny", "rule")]
        sim.script(Reply(tool_calls=[("shell", {"command": "ls"})]), Reply(text="ran"))
        await nb.run("%%agent -n off -t shell --policy off\nlist")
        assert (await nb.until_done("off")).ok and nb.ns("ran") == ["ls"] and decisions(nb, "off") == []
        for _ in range(2):
            sim.script(Reply(tool_calls=[("shell", {"command": "ls"})]), Reply(text="denied"))
            await nb.run("%%agent -n again -t shell\nlist")
            await nb.until_done("again")
        assert nb.registry.metrics.global_.hit_rate("policy") == 2 / 3  # one policy, one cache, for every run
        await nb.run("%agent cache")
    finally:
        unregister(shell)
        await nb.registry.aclose()


async def test_a_run_without_a_widget_is_denied_with_a_reason(shell: Any, sim: SimServer) -> None:
    nb = make_notebook(shell, sim)
    nb.magics.widgets = False
    try:
        await nb.run(SETUP % 30)
        sim.script(Reply(tool_calls=[("shell", {"command": "sudo x"})]), Reply(text="ok"))
        await nb.run("%%agent -n nw -t shell --policy pol\nx")
        result = await nb.until_done("nw")
        assert result.ok and not nb.ns("ran")
        decided = [e for e in result.events if isinstance(e, PolicyDecided)]
        assert decided[0].action == "deny" and "no run widget" in decided[0].reason
    finally:
        unregister(shell)
        await nb.registry.aclose()
