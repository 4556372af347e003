"""A call the policy denies never reaches the sandbox: read in the Docker engine's own log of the container.

The engine logs every command run in a container (``exec_create`` / ``exec_start`` events, with the command
line). A run whose model asks for one denied and one allowed shell command leaves only the allowed one there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from support import sim_settings

from nbagent import Agent
from nbagent.events import EventBus
from nbagent.llm import LLMClient
from nbagent.policy import Policy, PolicyDecided, Rule
from nbagent.runtime import Runtime
from nbagent.sandbox import SandboxManager
from nbagent.sandbox.events import SandboxLeased
from nbagent.sandbox.tools import sandbox_tools
from nbagent.testing import Reply, SimServer


def engine_exec_log(client: Any, container: str, since: float, until: float) -> list[str]:
    """The commands the engine ran in ``container`` between the two times (its event log)."""
    events = client.events(since=int(since), until=int(until) + 1, decode=True,
                           filters={"type": "container", "container": container})
    return [ev["Action"] for ev in events if ev.get("Action", "").startswith("exec_start")]


@pytest.mark.asyncio
async def test_a_denied_shell_command_is_not_in_the_engines_log(
    docker_manager: Callable[..., SandboxManager], docker_client: Any, sim: SimServer, bus: EventBus
) -> None:
    manager = docker_manager()
    policy = Policy([Rule("shell", "deny", when={"command": r"\brm\s+-rf\b"}, reason="no recursive deletes"),
                     Rule("*", "allow")])
    sim.script(Reply(tool_calls=[("shell", {"command": "rm -rf /workspace; echo DENIED-7f3a"})]),
               Reply(tool_calls=[("shell", {"command": "echo ALLOWED-91c2"})]),
               Reply(text="done"))
    settings = sim_settings(sim)
    client = LLMClient(settings, bus=bus)
    tools = [t for t in sandbox_tools(manager) if t.name == "shell"]
    agent = Agent("sim", tools, runtime=Runtime(settings, bus=bus, client=client), policy=policy)
    since = time.time() - 1
    try:
        result = await agent.run("tidy the workspace")
    finally:
        await client.aclose()
    assert result.ok, result.stop_reason
    assert [(e.action, e.tool) for e in result.events if isinstance(e, PolicyDecided)] == [
        ("deny", "shell"), ("allow", "shell")]
    outputs = [m["content"] for m in result.messages if m["role"] == "tool"]
    assert "was not run" in outputs[0] and "ALLOWED-91c2" in outputs[1]
    leased = [e for e in result.events if isinstance(e, SandboxLeased)]
    assert len(leased) == 1  # only the allowed call leased a sandbox
    await asyncio.sleep(1.0)  # the engine's event log is read up to the next whole second
    log = await asyncio.to_thread(engine_exec_log, docker_client, leased[0].sandbox_id, since, time.time())
    assert any("ALLOWED-91c2" in line for line in log), log  # the log does show the commands run
    assert not any("DENIED-7f3a" in line or "rm -rf" in line for line in log), log
