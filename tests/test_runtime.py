"""The runtime owns and closes a session's parts; a run's record is one fold that the store gives back equal."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import threading

import pytest
from support import sim_settings

import nbagent
from nbagent import Agent, Runtime, tool
from nbagent.cache import ResponseCache
from nbagent.events import EventBus
from nbagent.fanout_ray import AgentRecipe
from nbagent.policy import Policy, PolicyDecided, Rule
from nbagent.record import BREAKDOWN_KEYS, RunRecord, format_cost
from nbagent.runtime import set_runtime
from nbagent.testing import Fault, SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


@tool
async def slow_lookup(key: str) -> str:
    """Look a key up, slowly."""
    await asyncio.sleep(0.05)
    return f"slow-{key}"


class Closable:
    def __init__(self, rt: Runtime) -> None:
        self.runtime = rt
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


async def test_aclose_closes_everything_the_runtime_opened(sim: SimServer, tmp_path: pathlib.Path) -> None:
    threads_before = {t.name for t in threading.enumerate()}
    async with Runtime(sim_settings(sim), store=True) as rt:
        assert rt.store is not None
        part = rt.part("thing", Closable)
        assert rt.part("thing", Closable) is part  # one per runtime
        result = await Agent("sim", [lookup], runtime=rt).run("what is k?")
        assert result.ok and rt.client.pool_stats()  # an HTTP pool is open
        store = rt.store
    assert rt.closed and part.closed and store._closed
    assert rt.client._transport is None  # the HTTP pool is closed
    with pytest.raises(RuntimeError, match="closed"):
        rt.part("other", Closable)
    left = {t.name for t in threading.enumerate()} - threads_before
    assert not [n for n in left if "nbagent" in n.lower()], left  # the store's writer thread is gone


@pytest.fixture
def store_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    monkeypatch.setenv("NBAGENT_STORE_PATH", str(tmp_path / "runs.db"))
    return tmp_path


async def test_agent_without_runtime_uses_the_default_one(sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBAGENT_BASE_URL", sim.url)
    monkeypatch.setenv("NBAGENT_MODEL", "sim")
    rt = Runtime()
    old = set_runtime(rt)
    try:
        agent = Agent("sim", [lookup])
        assert agent.runtime is rt and nbagent.runtime() is rt and agent.bus is rt.bus
        result = await agent.run("q")
        assert result.ok and rt.records[result.run_id] is result.record
    finally:
        set_runtime(old)
        await rt.aclose()


def test_old_plumbing_still_works_with_a_deprecation_warning(sim: SimServer) -> None:
    bus = EventBus()
    with pytest.warns(DeprecationWarning, match="runtime="):
        agent = Agent("sim", settings=sim_settings(sim), bus=bus)
    assert agent.bus is bus and agent.runtime.bus is bus


async def test_agent_does_not_mutate_the_policy_or_cache_it_is_given(sim: SimServer) -> None:
    policy = Policy([Rule("lookup", "allow")])
    cache = ResponseCache(":memory:")
    tools_cache = cache.tool_cache()
    assert policy.bus is None and tools_cache.bus is None
    async with Runtime(sim_settings(sim)) as rt:
        result = await Agent("sim", [lookup], runtime=rt, policy=policy, cache=cache, tool_cache=tools_cache).run("q")
    assert policy.bus is None and tools_cache.bus is None  # untouched
    assert any(isinstance(e, PolicyDecided) for e in result.events)  # its decisions still land in the run


def test_a_rebuilt_agent_keeps_every_setting(sim: SimServer) -> None:
    policy = Policy([Rule("*", "deny")])
    agent = Agent("sim", [lookup], runtime=Runtime(sim_settings(sim)), system="Be brief.", first_tool="lookup",
                  policy=policy, tags=("exp-1",), params={"temperature": 0})
    rebuilt = AgentRecipe.from_agent(agent).build()
    assert rebuilt.runtime is not agent.runtime
    for attr in ("model_name", "system", "first_tool", "policy", "tags", "params", "stream", "name"):
        assert getattr(rebuilt, attr) == getattr(agent, attr), attr
    assert list(rebuilt.tools) == list(agent.tools) and rebuilt.limits == agent.limits


async def test_the_stored_record_equals_the_live_one(sim: SimServer, tmp_path: pathlib.Path) -> None:
    sim.configure(tool_calls_per_run=2)
    async with Runtime(sim_settings(sim), store=False) as rt:
        store = rt.enable_store(path=tmp_path / "runs.db")
        assert store is not None
        agent = Agent("sim", [lookup, slow_lookup], runtime=rt, tags=["a", "b"])
        result = await agent.run("what is x?")
        await store.aflush()
        stored = store.load(result.run_id)
    live = result.record
    assert live is not None and live.done and live.status == "ok"
    assert stored.record == live
    assert live.tags == ("a", "b") and live.steps == 3 and live.llm_calls == 3 and live.tool_calls == 2
    kinds = [s.kind for s in live.spans]
    assert kinds.count("step") == 3 and kinds.count("model") == 3 and kinds.count("tool") == 2
    assert kinds.count("attempt") == 3 and "wait" in kinds
    # no price for "sim": the cost is unknown, not $0
    assert live.cost is None and live.unpriced_calls == 3 and format_cost(live.cost) == "unknown"
    assert result.usage.known_cost is None and "cost unknown" in result.summary()


async def test_the_global_metrics_agree_with_the_sum_of_the_records(sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=2)
    sim.inject(Fault("500"))  # one retried attempt
    async with Runtime(sim_settings(sim), store=False) as rt:
        agent = Agent("sim", [lookup], runtime=rt, cache=ResponseCache(":memory:"))
        await asyncio.gather(*(agent.run(f"q{i % 2}") for i in range(4)))
        await agent.run("q0")  # served from the cache
        totals = rt.records.totals()
        m = rt.metrics.global_  # made after the runs: it folds the records' events first, then follows the bus
    assert totals["runs"] == m.value("runs.finished") == 5
    assert totals["retries"] == m.value("llm.retries") == 1
    assert totals["llm_calls"] == m.value("llm.calls") and totals["cached_calls"] == m.value("llm.cached") > 0
    assert totals["attempts"] == m.value("llm.attempts") == (totals["llm_calls"] or 0) + 1
    assert totals["tool_calls"] == m.value("tool.calls") > 0
    for name in ("input", "output", "cached"):
        assert totals[f"{name}_tokens"] == m.value(f"tokens.{name}")
    assert totals["unpriced_calls"] == m.value("cost.unpriced_calls") and totals["cost"] is None
    assert totals["steps"] == m.histogram("run.steps").sum


async def test_breakdown_sums_to_the_wall_time(sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=1)
    async with Runtime(sim_settings(sim)) as rt:
        result = await Agent("sim", [slow_lookup], runtime=rt).run("q")
    rec = result.record
    assert rec is not None and rec.duration is not None
    parts = rec.breakdown()
    assert set(parts) == set(BREAKDOWN_KEYS)
    assert sum(parts.values()) == pytest.approx(rec.duration)
    assert parts["tools"] >= 0.05  # the tool sleeps 50 ms


def test_breakdown_counts_overlaps_once_and_attributes_backoff() -> None:
    from nbagent.events import (
        LLMRequestStarted,
        LLMResponse,
        LLMRetry,
        RunFinished,
        RunStarted,
        StepStarted,
        ToolFinished,
        ToolStarted,
    )

    t = 1000.0
    events = [
        RunStarted(run_id="r", name="r", ts=t),
        StepStarted(run_id="r", step=1, ts=t),
        LLMRequestStarted(run_id="r", request_id="q", attempt=1, ts=t),
        LLMRetry(run_id="r", request_id="q", attempt=1, wait=3.0, reason="connection", ts=t + 0.1),
        LLMRequestStarted(run_id="r", request_id="q", attempt=2, ts=t + 3.1),
        LLMResponse(run_id="r", request_id="q", latency=3.5, ttft=0.2, attempts=2, tool_calls=2, ts=t + 3.5),
        ToolStarted(run_id="r", call_id="a", name="x", ts=t + 3.5),
        ToolStarted(run_id="r", call_id="b", name="x", ts=t + 3.5),
        ToolFinished(run_id="r", call_id="a", name="x", duration=0.5, ts=t + 4.0),
        ToolFinished(run_id="r", call_id="b", name="x", duration=2.0, ts=t + 5.5),
        RunFinished(run_id="r", status="ok", ts=t + 6.0),
    ]
    rec = RunRecord.from_events("r", events)
    b = rec.breakdown()
    assert sum(b.values()) == pytest.approx(6.0)
    assert b["retry_backoff"] == pytest.approx(3.0)  # not "overhead"
    assert b["tools"] == pytest.approx(2.0)  # two parallel tools, counted once
    assert b["model_wait"] == pytest.approx(0.1 + 0.2) and b["generation"] == pytest.approx(0.2)
    assert b["client_overhead"] == pytest.approx(0.5)
    assert rec.retries == 1 and rec.attempts == 2 and rec.retry_wait == 3.0


def test_units_are_part_of_a_metric() -> None:
    from nbagent.events import RunFinished, TokenDrift
    from nbagent.metrics import MetricsRegistry
    from nbagent.notebook import static

    reg = MetricsRegistry()
    reg.observe(RunFinished(run_id="r", status="ok", duration=1.5, steps=3))
    reg.observe(TokenDrift(local=110, server=100))
    assert reg.unit("run.steps") == "steps" and reg.unit("run.duration") == "s"
    assert reg.unit("tokens.drift_ratio") == "ratio"
    page = static.metrics_table(reg.snapshot())
    assert "3 steps" in page and "0.100" in page and "1.50 s" in page


# --- no module keeps process-wide state -----------------------------------------------------------------

# Module-level state that is process-wide by nature, each with its reason. Everything else a session has lives
# in a Runtime. UPPER_CASE module names are constants (tables never mutated) and are not listed.
ALLOWED = {
    ("events.py", "_frozen"): "dataclass options shared by every event class (a constant)",
    ("record.py", "_HANDLERS"): "the fold of each event kind: a registry of kinds, like the event classes",
    ("cache/tier_registry.py", "_factories"): "cache tiers by name: a registry of kinds",
    ("sandbox/backend_registry.py", "_registry"): "sandbox backends by name: a registry of kinds",
    ("store/codec.py", "_kinds"): "event classes by kind, for decoding: a registry of kinds",
    ("store/redact.py", "_default"): "the secrets: a key must stay out of every file, whichever runtime wrote it",
    ("store/redact.py", "_installed"): "log filters on the process's loggers (logging is process-wide)",
    ("store/redact.py", "_install_lock"): "guards the above",
    ("store/runs.py", "_open_stores"): "weak set of open stores, flushed by one atexit hook",
    ("metrics/profile.py", "_trace_users"): "tracemalloc is process-wide: count of runs tracing memory",
    ("metrics/profile.py", "_trace_started_here"): "tracemalloc is process-wide",
    ("metrics/profile.py", "_trace_lock"): "guards the above",
    ("llm/tokens.py", "_ENCODING"): "the tokenizer, loaded once and never changed",
    ("config.py", "_default_settings"): "the built-in defaults, built once per Settings class and copied by load()",
    ("config_paths.py", "_noted_old_files"): "an old-place config file is pointed out once per process",
    ("local_model.py", "_shared"): "one embedded model in memory per process (the runtime that starts it stops it)",
}
_MUTABLE_CALLS = {"dict", "list", "set", "deque", "WeakSet", "WeakKeyDictionary", "WeakValueDictionary",
                  "OrderedDict", "defaultdict", "count", "Lock", "RLock", "Counter"}


def test_no_module_keeps_mutable_process_wide_state() -> None:
    root = pathlib.Path(nbagent.__file__).parent
    found: set[tuple[str, str]] = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                found.update((rel, n) for n in node.names)
        for node in tree.body:
            targets: list[str] = []
            if isinstance(node, ast.Assign):
                targets, value = [t.id for t in node.targets if isinstance(t, ast.Name)], node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
                targets, value = [node.target.id], node.value
            else:
                continue
            mutable = isinstance(value, (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp))
            if isinstance(value, ast.Call):
                f = value.func
                mutable |= (f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")) in _MUTABLE_CALLS
            for name in targets:
                if mutable and name != "__all__" and not name.lstrip("_").isupper():
                    found.add((rel, name))
    unexpected = sorted(found - set(ALLOWED))
    assert not unexpected, f"module-level mutable state outside a Runtime: {unexpected}"


def test_exported_classes_have_unique_names() -> None:
    import importlib
    import inspect
    import pkgutil

    owners: dict[str, set[str]] = {}
    for info in pkgutil.walk_packages(nbagent.__path__, "nbagent."):
        if info.name.endswith(("__main__", ".cli")) or ".notebook" in info.name:
            continue
        mod = importlib.import_module(info.name)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            if inspect.isclass(obj):
                owners.setdefault(name, set()).add(f"{obj.__module__}.{obj.__qualname__}")
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}
    modules = [p.name for p in pathlib.Path(nbagent.__file__).parent.rglob("registry.py")]
    assert len(modules) <= 1


def test_mcp_env_that_is_not_a_secret_is_not_redacted() -> None:
    pytest.importorskip("mcp")
    from nbagent.mcp import MCPServer
    from nbagent.store.redact import redact

    MCPServer(command="true", env={"PYTHONPATH": "/opt/some-project-dir", "SERVICE_API_KEY": "zq-7781-secret-x"},
              name="envcheck")
    assert redact("at /opt/some-project-dir/x.py") == "at /opt/some-project-dir/x.py"
    assert "zq-7781-secret-x" not in redact("key zq-7781-secret-x")
