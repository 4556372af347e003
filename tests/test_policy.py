"""Tool policy: allow / deny / ask, argument rules, the decision cache, and a denied call never running."""

from __future__ import annotations

import asyncio

import pytest
from support import sim_settings

from nbagent import Agent, tool
from nbagent.config import Settings
from nbagent.errors import ConfigError
from nbagent.events import EventBus
from nbagent.llm import LLMClient
from nbagent.metrics import MetricsRegistry
from nbagent.policy import Policy, PolicyDecided, Rule
from nbagent.runtime import Runtime
from nbagent.testing import Reply, SimServer

ran: list[str] = []


@tool
def shell(command: str) -> str:
    """Run a shell command (recorded, not run)."""
    ran.append(command)
    return f"ran {command}"


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


def policy(**kw) -> Policy:
    return Policy([Rule("shell", "deny", when={"command": r"\brm\s+-rf\b"}, reason="no recursive deletes"),
                   Rule("shell", "ask", when={"command": r"^sudo\b"}),
                   Rule("*", "allow")], bus=EventBus(), **kw)


async def test_allow_deny_and_argument_rules() -> None:
    p = policy()
    assert (await p.decide("shell", {"command": "ls -la"})).allowed
    d = await p.decide("shell", {"command": "rm -rf /"})
    assert not d.allowed and d.decided_by == "rule" and d.reason == "no recursive deletes"
    d = await p.decide("other", {"x": 1})
    assert d.allowed and d.decided_by == "rule"
    strict = Policy([Rule("read_*", "allow")], default="deny", bus=EventBus())
    assert (await strict.decide("read_file", {})).allowed
    d = await strict.decide("write_file", {})
    assert not d.allowed and d.decided_by == "default"


async def test_ask_paths_callback_always_and_timeout() -> None:
    answers: list[tuple[str, dict]] = []

    async def approve(tool_name: str, args: dict, run_id: str | None) -> bool | str:
        answers.append((tool_name, args))
        return "always" if args["command"] == "sudo ls" else args["command"] == "sudo ok"

    p = policy(ask=approve)
    assert (await p.decide("shell", {"command": "sudo ok"}, run_id="r")).decided_by == "callback"
    assert not (await p.decide("shell", {"command": "sudo no"}, run_id="r")).allowed
    assert (await p.decide("shell", {"command": "sudo ls"}, run_id="r")).allowed
    d = await p.decide("shell", {"command": "sudo anything"}, run_id="r")
    assert d.allowed and d.decided_by == "run-memo" and len(answers) == 3  # not asked again in this run
    p.forget_run("r")
    assert not (await p.decide("shell", {"command": "sudo no"}, run_id="r")).allowed and len(answers) == 4

    async def never(tool_name: str, args: dict, run_id: str | None) -> bool:
        await asyncio.sleep(3600)
        return True

    slow = policy(ask=never, ask_timeout=0.05)
    d = await slow.decide("shell", {"command": "sudo x"})
    assert not d.allowed and d.decided_by == "timeout"
    d = await policy().decide("shell", {"command": "sudo x"})  # no callback outside a notebook: deny
    assert not d.allowed and d.decided_by == "no-callback"


async def test_decision_cache_hits_reads_only_rule_arguments_and_is_invalidated() -> None:
    bus = EventBus()
    reg = MetricsRegistry()
    reg.attach(bus)
    p = Policy([Rule("shell", "deny", when={"command": "rm"})], bus=bus)
    await p.decide("shell", {"command": "ls", "cwd": "/a"})
    d = await p.decide("shell", {"command": "ls", "cwd": "/b"})  # cwd is not read by any rule: same key
    assert d.cached and p.hits == 1 and p.misses == 1
    assert reg.hit_rate("policy") == 0.5
    p.add(Rule("shell", "deny", when={"cwd": "/b"}), index=0)  # a change clears the cache
    d = await p.decide("shell", {"command": "ls", "cwd": "/b"})
    assert not d.allowed and not d.cached and p.version == 1
    checked = Policy([Rule("f", "deny", check=lambda a: a.get("n", 0) > 5)], bus=bus)
    assert (await checked.decide("f", {"n": 1})).allowed and not (await checked.decide("f", {"n": 9})).allowed


def test_policy_from_config_file(tmp_path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[policy]\ndefault = "deny"\n[[policy.rules]]\ntool = "read_*"\naction = "allow"\n'
                   '[[policy.rules]]\ntool = "shell"\naction = "ask"\nwhen = { command = "^git " }\n')
    p = Policy.from_settings(Settings.load(cfg, env={}).policy)
    assert p.default == "deny" and [r.action for r in p.rules] == ["allow", "ask"]
    with pytest.raises(ConfigError, match="action must be one of"):
        Policy.from_settings({"rules": [{"tool": "x", "action": "maybe"}]})
    with pytest.raises(ConfigError, match="unknown key"):
        Policy.from_settings({"rules": [{"tool": "x", "actoin": "deny"}]})


async def test_a_denied_call_never_runs_and_the_decision_is_kept_with_the_run(sim: SimServer) -> None:
    sim.script(Reply(tool_calls=[("shell", {"command": "rm -rf /"}), ("shell", {"command": "ls"})]),
               Reply(text="done"))
    settings = sim_settings(sim)
    bus = EventBus()
    agent = Agent("sim", [shell], runtime=Runtime(settings, bus=bus, client=LLMClient(settings, bus=bus)),
                  policy=Policy([Rule("shell", "deny", when={"command": "rm -rf"}, reason="too dangerous")]))
    result = await agent.run("clean up")
    assert result.ok and ran == ["ls"]  # the denied call never reached the tool
    denied = next(m for m in result.messages if m["role"] == "tool")
    assert "was not run" in denied["content"] and "too dangerous" in denied["content"]
    decisions = [e for e in result.events if isinstance(e, PolicyDecided)]
    assert [(d.tool, d.action) for d in decisions] == [("shell", "deny"), ("shell", "allow")]
    await agent.client.aclose()


async def test_decision_cache_ttl_and_size_bound() -> None:
    now = [0.0]
    p = Policy([Rule("t", "deny", when={"x": "bad"})], bus=EventBus(), cache_ttl=10, cache_size=2,
               clock=lambda: now[0])
    await p.decide("t", {"x": "a"})
    assert (await p.decide("t", {"x": "a"})).cached
    now[0] = 11.0  # past the TTL: decided again
    assert not (await p.decide("t", {"x": "a"})).cached
    await p.decide("t", {"x": "b"})
    await p.decide("t", {"x": "c"})  # the cache holds two: "a" (the oldest) goes
    assert len(p._cache) == 2
    assert not (await p.decide("t", {"x": "a"})).cached


async def test_an_agent_takes_the_settings_policy_unless_told_otherwise(sim: SimServer) -> None:
    settings = sim_settings(sim, policy={"rules": [{"tool": "shell", "action": "deny", "reason": "configured"}]})
    bus = EventBus()
    client = LLMClient(settings, bus=bus)
    try:
        sim.script(Reply(tool_calls=[("shell", {"command": "ls"})]), Reply(text="done"))
        result = await Agent("sim", [shell], runtime=Runtime(settings, bus=bus, client=client)).run("list")
        assert result.ok and ran == []
        assert [(e.action, e.reason) for e in result.events if isinstance(e, PolicyDecided)] == [("deny", "configured")]
        sim.script(Reply(tool_calls=[("shell", {"command": "ls"})]), Reply(text="done"))
        rt = Runtime(settings, bus=bus, client=client)
        result = await Agent("sim", [shell], runtime=rt, policy=False).run("list")
        assert result.ok and ran == ["ls"] and not [e for e in result.events if isinstance(e, PolicyDecided)]
    finally:
        await client.aclose()
    with pytest.raises(ConfigError, match="unknown key"):
        Policy.from_settings({"defualt": "deny"})
    assert Policy.from_settings({"ask_timeout": 7, "cache_ttl": 9}).ask_timeout == 7.0


async def test_rules_on_tool_facts_network_enabled_sandboxes() -> None:
    from nbagent.sandbox import SandboxSpec
    from nbagent.sandbox.tools import sandbox_tools

    open_net = {t.name: t for t in sandbox_tools(spec=SandboxSpec(backend="local", network=True))}
    closed = {t.name: t for t in sandbox_tools(spec=SandboxSpec(backend="local"))}
    assert dict(open_net["shell"].facts) == {"sandbox": True, "network": True, "backend": "local"}
    p = Policy([Rule("*", "deny", facts={"network": True}, reason="network sandboxes need a person")],
               bus=EventBus())
    args = {"command": "curl example.org"}
    d = await p.decide("shell", args, facts=open_net["shell"].facts)
    assert not d.allowed and d.reason == "network sandboxes need a person"
    d = await p.decide("shell", args, facts=closed["shell"].facts)  # same tool and arguments, other facts
    assert d.allowed and not d.cached
    assert (await p.decide("shell", args, facts=open_net["shell"].facts)).cached
    assert (await p.decide("lookup", {})).allowed  # a tool with no facts
    cfg = Policy.from_settings({"rules": [{"tool": "*", "action": "ask", "facts": {"network": True}}]})
    assert cfg.rules[0].facts == {"network": True}


def test_outside_the_workspace() -> None:
    from nbagent.policy import outside

    check = outside("/workspace")
    inside = ["a.txt", "data/b.csv", "/workspace/c", "./d/../e", "/workspace"]
    escapes = ["/etc/passwd", "../x", "data/../../etc", "/workspace2/x", "/"]
    assert [check({"path": p}) for p in inside] == [False] * len(inside)
    assert [check({"path": p}) for p in escapes] == [True] * len(escapes)
    assert check({}) is False
    rule = Rule("write_file", "deny", check=outside(), reason="outside the workspace")
    assert rule.matches({"path": "../../etc/shadow"}) and not rule.matches({"path": "notes.md"})
