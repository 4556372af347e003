"""Tests for nbagent.metrics: histogram accuracy and merging, counters, gauges, registries and the run index."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbagent.events import (
    CacheEvicted,
    CacheHit,
    CacheMiss,
    CacheStored,
    CacheWarning,
    Event,
    EventBus,
    LimitHit,
    LLMFirstToken,
    LLMRequestFailed,
    LLMRequestStarted,
    LLMResponse,
    LLMRetry,
    LLMTextDelta,
    RunFinished,
    RunStarted,
    StepStarted,
    TokenDrift,
    ToolFinished,
    ToolStarted,
)
from nbagent.metrics import (
    Counter,
    Gauge,
    HandlerTable,
    Histogram,
    MetricsRegistry,
    RunMetricsIndex,
    register_handler,
)

# --- helpers ----------------------------------------------------------------------------------------


def exact_quantile(values: list[float], q: float) -> float:
    """numpy's default ("linear") quantile, computed from the sorted values."""
    xs = sorted(values)
    rank = q * (len(xs) - 1)
    lo = math.floor(rank)
    frac = rank - lo
    if frac == 0.0 or lo + 1 >= len(xs):
        return xs[lo]
    return xs[lo] + frac * (xs[lo + 1] - xs[lo])


def assert_within(estimate: float | None, exact: float, accuracy: float) -> None:
    assert estimate is not None
    # a hair of slack for the float rounding of log() at bucket boundaries and of the interpolation
    assert abs(estimate - exact) <= accuracy * abs(exact) * (1 + 1e-9) + 1e-300, (estimate, exact)


def same_content(a: Histogram, b: Histogram) -> None:
    assert a.to_dict()["bins"] == b.to_dict()["bins"]
    assert a.count == b.count
    assert a.zero_count == b.zero_count
    assert a.min == b.min
    assert a.max == b.max
    assert a.rejected == b.rejected
    assert a.sum == pytest.approx(b.sum, rel=1e-9, abs=1e-12)


positive = st.floats(min_value=1e-9, max_value=1e12, allow_nan=False, allow_infinity=False)
non_negative = st.one_of(st.just(0.0), positive)
quantile_q = st.floats(min_value=0.0, max_value=1.0)


# --- histogram: accuracy ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(values=st.lists(non_negative, min_size=1, max_size=300), q=quantile_q)
def test_quantile_within_relative_accuracy(values: list[float], q: float) -> None:
    h = Histogram()
    h.record_many(values)
    assert_within(h.quantile(q), exact_quantile(values, q), h.accuracy)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(positive, min_size=1, max_size=200),
    accuracy=st.sampled_from([0.001, 0.005, 0.02, 0.05, 0.2]),
    q=quantile_q,
)
def test_quantile_accuracy_for_other_accuracies(values: list[float], accuracy: float, q: float) -> None:
    h = Histogram(accuracy)
    h.record_many(values)
    assert_within(h.quantile(q), exact_quantile(values, q), accuracy)


@pytest.mark.parametrize("seed", range(5))
def test_quantiles_on_large_random_samples(seed: int) -> None:
    rng = random.Random(seed)
    values = [rng.lognormvariate(0, 3) for _ in range(20_000)]
    h = Histogram()
    h.record_many(values)
    for q in (0.0, 0.001, 0.25, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0):
        assert_within(h.quantile(q), exact_quantile(values, q), 0.01)
    assert h.p50 == h.quantile(0.5)
    assert h.p95 == h.quantile(0.95)
    assert h.p99 == h.quantile(0.99)
    assert h.mean == pytest.approx(sum(values) / len(values))
    assert h.quantiles([0.5, 0.99]) == [h.p50, h.p99]


def test_reference_quantile_matches_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(7)
    values = [rng.expovariate(1.0) for _ in range(501)]
    for q in (0.0, 0.1, 0.5, 0.77, 0.95, 0.99, 1.0):
        assert exact_quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-12)


def test_min_max_are_exact_and_clamp() -> None:
    h = Histogram()
    h.record_many([3.0, 7.5, 1234.5])
    assert h.quantile(0) == 3.0
    assert h.quantile(1) == 1234.5
    assert h.min == 3.0 and h.max == 1234.5
    single = Histogram()
    single.record(42.0)
    assert single.quantile(0.5) == 42.0  # clamped into [min, max] == [42, 42]


def test_two_clusters() -> None:
    h = Histogram()
    h.record_many([1.0] * 10 + [1000.0] * 10)
    assert h.count == 20
    assert_within(h.quantile(0.25), 1.0, 0.01)
    assert_within(h.quantile(0.75), 1000.0, 0.01)
    assert_within(h.quantile(0.5), exact_quantile([1.0] * 10 + [1000.0] * 10, 0.5), 0.01)
    assert len(h.buckets()) == 2


# --- histogram: zero, negative, non-finite, empty ------------------------------------------------------


def test_zero_and_negative_values_go_to_the_zero_bucket() -> None:
    h = Histogram()
    h.record_many([0.0, -5.0, -0.5, 2.0, 4.0])
    assert h.count == 5
    assert h.zero_count == 3
    assert h.sum == pytest.approx(0.5)
    assert h.min == -5.0 and h.max == 4.0
    assert h.quantile(0) == -5.0
    assert h.quantile(0.25) == 0.0  # lands among the values <= 0: reads as 0
    assert_within(h.quantile(1), 4.0, 0.01)
    assert_within(h.quantile(0.75), 2.0, 0.01)
    lower, upper, count = h.buckets()[0]
    assert (lower, upper, count) == (-5.0, 0.0, 3)


def test_all_negative_values_read_as_clamped() -> None:
    h = Histogram()
    h.record_many([-3.0, -2.0, -1.0])
    assert h.quantile(0) == -3.0
    assert h.quantile(1) == -1.0
    assert h.quantile(0.5) == -1.0  # 0.0 clamped into [min, max]
    assert h.mean == pytest.approx(-2.0)


def test_non_finite_values_are_rejected() -> None:
    h = Histogram()
    for v in (math.nan, math.inf, -math.inf):
        h.record(v)
    h.record(1.0)
    assert h.count == 1
    assert h.rejected == 3
    assert h.sum == 1.0
    assert h.min == h.max == 1.0


def test_tiny_and_huge_values() -> None:
    h = Histogram()
    values = [5e-324, 1e-300, 1e-9, 1.0, 1e300, 1.7e308]
    h.record_many(values)
    for q in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        exact = exact_quantile(values, q)
        est = h.quantile(q)
        assert est is not None
        if exact > 1e-300:  # subnormals have no relative precision to speak of
            assert_within(est, exact, 0.01)


def test_empty_histogram() -> None:
    h = Histogram()
    assert h.count == 0
    assert h.quantile(0.5) is None
    assert h.quantiles([0.1, 0.9]) == [None, None]
    assert h.p50 is None and h.p95 is None and h.p99 is None
    assert h.mean is None and h.min is None and h.max is None
    assert h.buckets() == []
    assert h.summary() == {
        "count": 0,
        "sum": 0.0,
        "mean": None,
        "min": None,
        "max": None,
        "p50": None,
        "p95": None,
        "p99": None,
    }
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.count == 0 and back.quantile(0.5) is None
    other = Histogram()
    other.record(2.0)
    h.merge(Histogram())
    assert h.count == 0
    h.merge(other)
    assert h.min == h.max == 2.0
    assert "count=0" in repr(Histogram())


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantile_out_of_range(q: float) -> None:
    h = Histogram()
    h.record(1.0)
    with pytest.raises(ValueError):
        h.quantile(q)


@pytest.mark.parametrize("accuracy", [0.0, 1.0, -0.1, 2.0])
def test_bad_accuracy(accuracy: float) -> None:
    with pytest.raises(ValueError):
        Histogram(accuracy)


# --- histogram: merge, serialisation, buckets -------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(a=st.lists(st.one_of(non_negative, st.floats(-1e6, 0.0)), max_size=200), b=st.lists(non_negative, max_size=200))
def test_merge_equals_recording_everything(a: list[float], b: list[float]) -> None:
    ha, hb, both = Histogram(), Histogram(), Histogram()
    ha.record_many(a)
    hb.record_many(b)
    both.record_many(a + b)
    combined = ha + hb
    assert ha.count == len(a) and hb.count == len(b)  # __add__ leaves its operands alone
    same_content(combined, both)
    ha.merge(hb)
    same_content(ha, both)
    for q in (0.0, 0.5, 0.95, 1.0):
        assert ha.quantile(q) == both.quantile(q)


def test_iadd_merges_in_place() -> None:
    h = Histogram()
    h.record(1.0)
    before = h
    other = Histogram()
    other.record(3.0)
    h += other
    assert h is before
    assert h.count == 2


def test_merge_requires_same_accuracy() -> None:
    with pytest.raises(ValueError):
        Histogram(0.01).merge(Histogram(0.02))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.one_of(non_negative, st.floats(-1e3, 0.0)), max_size=200))
def test_to_dict_round_trip(values: list[float]) -> None:
    h = Histogram(0.02)
    h.record_many(values)
    h.record(math.nan)
    data = json.loads(json.dumps(h.to_dict(), allow_nan=False))
    back = Histogram.from_dict(data)
    assert back.accuracy == 0.02
    assert back.sum == h.sum
    same_content(back, h)
    assert back.summary() == h.summary()
    back.merge(h)  # the accuracies still line up after the round trip
    assert back.count == 2 * h.count


def test_from_dict_rejects_inconsistent_counts() -> None:
    h = Histogram()
    h.record(1.0)
    data = h.to_dict()
    data["count"] = 5
    with pytest.raises(ValueError):
        Histogram.from_dict(data)


def test_buckets_cover_the_values() -> None:
    rng = random.Random(3)
    values = [rng.uniform(0.001, 100) for _ in range(1000)]
    h = Histogram()
    h.record_many(values)
    buckets = h.buckets()
    assert sum(c for _, _, c in buckets) == 1000
    assert all(lo < hi for lo, hi, _ in buckets)
    assert [lo for lo, _, _ in buckets] == sorted(lo for lo, _, _ in buckets)
    for v in values[:50]:
        assert any(lo * (1 - 1e-12) <= v < hi * (1 + 1e-12) for lo, hi, _ in buckets)
    for lo, hi, _ in buckets:
        assert hi / lo == pytest.approx(1.01 / 0.99)


def test_summary_and_repr() -> None:
    h = Histogram()
    h.record_many([1.0, 2.0, 3.0])
    s = h.summary()
    assert set(s) == {"count", "sum", "mean", "min", "max", "p50", "p95", "p99"}
    assert s["count"] == 3 and s["mean"] == pytest.approx(2.0)
    assert_within(s["p50"], 2.0, 0.01)
    json.dumps(s, allow_nan=False)
    assert "count=3" in repr(h)


# --- counters and gauges --------------------------------------------------------------------------------


def test_counter() -> None:
    c = Counter()
    c.inc()
    c.inc(2)
    c.inc(0.25)
    assert c.value == pytest.approx(3.25)
    assert c.merge(Counter(1)).value == pytest.approx(4.25)


def test_gauge() -> None:
    g = Gauge()
    assert g.value == 0 and g.max is None
    g.inc()
    g.inc(2)
    g.dec()
    assert g.value == 2 and g.max == 3
    g.set(-4)
    assert g.value == -4 and g.max == 3
    other = Gauge()
    other.set(5)
    other.dec(4)
    g.merge(other)
    assert g.value == -3 and g.max == 5
    lone = Gauge()
    lone.merge(Gauge())
    assert lone.max is None


# --- the registry: built-in mapping ---------------------------------------------------------------------


def observed(*events: Event) -> MetricsRegistry:
    reg = MetricsRegistry()
    for e in events:
        reg.observe(e)
    return reg


def test_run_events() -> None:
    reg = observed(
        RunStarted(run_id="a"),
        RunStarted(run_id="b"),
        RunFinished(run_id="a", status="ok", duration=2.0, steps=3, input_tokens=10, output_tokens=5, cost=1.0),
        RunFinished(run_id="b", status="limit", duration=4.0, steps=7),
        LimitHit(run_id="b", limit="max_steps", value=7, maximum=7),
    )
    assert reg.counter("runs.started").value == 2
    assert reg.counter("runs.finished").value == 2
    assert reg.counter("runs.status.ok").value == 1
    assert reg.counter("runs.status.limit").value == 1
    assert reg.gauge("runs.in_flight").value == 0
    assert reg.gauge("runs.in_flight").max == 2
    assert reg.histogram("run.duration").count == 2
    assert reg.histogram("run.duration").max == 4.0
    assert reg.histogram("run.steps").min == 3
    assert reg.counter("limits.max_steps").value == 1
    # token and cost totals come from LLMResponse only
    for name in ("tokens.input", "tokens.output", "tokens.cached", "cost.usd"):
        assert name not in reg


def test_llm_events() -> None:
    reg = observed(
        LLMRequestStarted(request_id="1"),
        LLMRetry(request_id="1", attempt=1, wait=0.5, reason="429"),
        LLMRequestStarted(request_id="1", attempt=2),
        LLMRetry(request_id="1", attempt=2, wait=1.0, reason="503"),
        LLMRequestStarted(request_id="1", attempt=3),
        LLMResponse(
            request_id="1", latency=1.5, ttft=0.25, input_tokens=100, output_tokens=20, cached_tokens=64, cost=0.002
        ),
        LLMRequestStarted(request_id="2"),
        LLMResponse(request_id="2", latency=0.5, ttft=None, input_tokens=50, output_tokens=5, usage_source="local"),
        LLMRequestStarted(request_id="3"),
        LLMRequestFailed(request_id="3", error_type="AuthenticationError"),
        LLMRequestFailed(request_id="4", error_type="RetryBudgetExhausted"),
    )
    assert reg.counter("llm.attempts").value == 5
    assert reg.counter("llm.calls").value == 2
    assert reg.histogram("llm.latency").count == 2
    assert reg.histogram("llm.ttft").count == 1
    assert reg.histogram("llm.ttft").max == 0.25
    assert reg.counter("tokens.input").value == 150
    assert reg.counter("tokens.output").value == 25
    assert reg.counter("tokens.cached").value == 64
    assert reg.counter("cost.usd").value == pytest.approx(0.002)
    assert isinstance(reg.counter("cost.usd").value, float)
    assert reg.counter("llm.usage_local").value == 1
    assert reg.counter("llm.retries").value == 2
    assert reg.counter("llm.retries.429").value == 1
    assert reg.counter("llm.retries.503").value == 1
    assert reg.histogram("llm.retry_wait").summary()["sum"] == pytest.approx(1.5)
    assert reg.counter("llm.errors").value == 2
    assert reg.counter("llm.errors.AuthenticationError").value == 1
    assert reg.counter("llm.errors.RetryBudgetExhausted").value == 1
    assert "llm.cached" not in reg


def test_cached_llm_responses_keep_endpoint_latency_clean() -> None:
    reg = observed(
        LLMResponse(request_id="1", latency=2.0, ttft=0.5, input_tokens=10),
        LLMResponse(request_id="2", latency=0.001, ttft=0.001, input_tokens=10, cached=True),
    )
    assert reg.counter("llm.calls").value == 1  # calls to the endpoint: a cache hit is not one
    assert reg.counter("llm.cached").value == 1
    assert reg.histogram("llm.latency").count == 1
    assert reg.histogram("llm.ttft").count == 1
    assert reg.histogram("llm.latency.cached").count == 1
    assert reg.counter("tokens.input").value == 20


def test_token_drift() -> None:
    reg = observed(
        TokenDrift(local=110, server=100),
        TokenDrift(local=90, server=100),
        TokenDrift(local=5, server=0),
        TokenDrift(local=100, server=100),
    )
    assert reg.counter("tokens.drift_checks").value == 4
    h = reg.histogram("tokens.drift_ratio")
    assert h.count == 4
    assert h.max == 5.0
    assert h.zero_count == 1
    assert h.sum == pytest.approx(0.1 + 0.1 + 5.0)


def test_tool_events() -> None:
    reg = observed(
        ToolStarted(call_id="1", name="python"),
        ToolStarted(call_id="2", name="search"),
        ToolFinished(call_id="1", name="python", duration=0.5, truncated=True),
        ToolFinished(call_id="2", name="search", duration=2.0, ok=False, error="boom"),
        ToolStarted(call_id="3", name="python"),
        ToolFinished(call_id="3", name="python", duration=1.0),
    )
    assert reg.gauge("tools.in_flight").value == 0
    assert reg.gauge("tools.in_flight").max == 2
    assert reg.counter("tool.calls").value == 3
    assert reg.counter("tool.errors").value == 1
    assert reg.counter("tool.truncated").value == 1
    assert reg.histogram("tool.duration").count == 3
    assert reg.histogram("tool.duration.python").count == 2
    assert reg.histogram("tool.duration.search").max == 2.0


def test_cache_events() -> None:
    reg = observed(
        CacheHit(cache="response", tier="memory", lookup_seconds=1e-5, tokens_saved=100, latency_saved=1.5),
        CacheHit(cache="response", tier="disk", lookup_seconds=1e-3, tokens_saved=50, latency_saved=0.5),
        CacheHit(cache="response", tier="memory", lookup_seconds=2e-5, tokens_saved=10, latency_saved=0.25),
        CacheMiss(cache="response", lookup_seconds=1e-3),
        CacheStored(cache="response", tier="memory"),
        CacheStored(cache="tool", tier="disk"),
        CacheEvicted(cache="response", tier="memory", reason="ttl"),
        CacheWarning(cache="tool", message="unhashable arguments"),
    )
    assert reg.counter("cache.response.hits").value == 3
    assert reg.counter("cache.response.hits.memory").value == 2
    assert reg.counter("cache.response.hits.disk").value == 1
    assert reg.histogram("cache.response.lookup.memory").count == 2
    assert reg.histogram("cache.response.lookup.disk").count == 1
    assert reg.counter("cache.response.tokens_saved").value == 160
    assert reg.counter("cache.response.latency_saved").value == pytest.approx(2.25)
    assert reg.counter("cache.response.misses").value == 1
    assert reg.histogram("cache.response.lookup.miss").count == 1
    assert reg.counter("cache.response.stores").value == 1
    assert reg.counter("cache.tool.stores").value == 1
    assert reg.counter("cache.response.evictions").value == 1
    assert reg.counter("cache.tool.warnings").value == 1


def test_unmapped_events_are_ignored() -> None:
    reg = observed(StepStarted(step=1), LLMFirstToken(ttft=0.1), LLMTextDelta(text="hi"), Event(), StepStarted(step=2))
    assert len(reg) == 0


def test_hit_rate() -> None:
    reg = MetricsRegistry()
    assert reg.hit_rate() is None
    for e in (CacheHit(), CacheHit(tier="disk"), CacheHit(), CacheMiss(), CacheMiss(cache="tool")):
        reg.observe(e)
    assert reg.hit_rate() == pytest.approx(0.75)
    assert reg.hit_rate("response") == pytest.approx(0.75)
    assert reg.hit_rate("tool") == 0.0
    assert reg.hit_rate("policy") is None
    assert "cache.policy.hits" not in reg  # reading never creates metrics


# --- the registry: access, bus, handlers ------------------------------------------------------------------


def test_names_are_typed() -> None:
    reg = MetricsRegistry()
    reg.counter("x").inc()
    assert reg.counter("x") is reg.counter("x")
    with pytest.raises(ValueError):
        reg.histogram("x")
    with pytest.raises(ValueError):
        reg.gauge("x")
    with pytest.raises(ValueError):
        reg.counter("")
    reg.histogram("h").record(1.0)
    reg.gauge("g").set(3)
    assert reg.names() == ["g", "h", "x"]
    assert list(reg) == ["g", "h", "x"]
    assert isinstance(reg.get("h"), Histogram)
    assert isinstance(reg.get("g"), Gauge)
    assert reg.get("nope") is None
    assert reg.value("g") == 3 and reg.value("nope", -1) == -1
    assert set(reg.counters) == {"x"} and set(reg.histograms) == {"h"} and set(reg.gauges) == {"g"}
    assert reg.histogram("acc", accuracy=0.05).accuracy == 0.05
    reg.clear()
    assert len(reg) == 0
    reg.observe(RunStarted())  # handler caches are cleared along with the metrics
    assert reg.value("runs.started") == 1


def test_attach_and_detach() -> None:
    bus = EventBus()
    reg = MetricsRegistry()
    detach = reg.attach(bus)
    bus.emit(RunStarted(run_id="r"))
    bus.emit(LLMResponse(run_id="r", latency=1.0, input_tokens=3))
    detach()
    bus.emit(RunStarted(run_id="s"))
    assert reg.counter("runs.started").value == 1
    assert reg.counter("tokens.input").value == 3
    assert bus.tap_errors == 0


_frozen: dict[str, Any] = {"frozen": True, "slots": True, "kw_only": True}


@dataclass(**_frozen)
class SandboxLeased(Event):
    kind: ClassVar[str] = "sandbox_leased"
    wait: float = 0.0


@dataclass(**_frozen)
class SpecialToolFinished(ToolFinished):
    kind: ClassVar[str] = "special_tool_finished"


def test_register_on_one_registry() -> None:
    reg, other = MetricsRegistry(), MetricsRegistry()

    def on_lease(r: MetricsRegistry, e: Event) -> None:
        assert isinstance(e, SandboxLeased)
        r.counter("sandbox.leases").inc()
        r.histogram("sandbox.lease_wait").record(e.wait)

    remove = reg.register(SandboxLeased, on_lease)
    for r in (reg, other):
        r.observe(SandboxLeased(wait=0.5))
        r.observe(RunStarted())  # the built-in mapping still applies
    assert reg.counter("sandbox.leases").value == 1
    assert reg.histogram("sandbox.lease_wait").count == 1
    assert "sandbox.leases" not in other
    assert reg.value("runs.started") == other.value("runs.started") == 1
    remove()
    reg.observe(SandboxLeased(wait=0.5))
    assert reg.counter("sandbox.leases").value == 1


def test_register_handler_everywhere_and_for_subclasses() -> None:
    reg = MetricsRegistry()
    index = RunMetricsIndex()
    reg.observe(SandboxLeased())  # resolved (to nothing) and cached before the registration
    remove = register_handler(SandboxLeased, lambda r, e: r.counter("sandbox.leases").inc())
    try:
        reg.observe(SandboxLeased())
        index.observe(SandboxLeased(run_id="r"))
        assert reg.value("sandbox.leases") == 1
        assert index.global_.value("sandbox.leases") == 1
        assert index.for_run("r").value("sandbox.leases") == 1  # type: ignore[union-attr]
    finally:
        remove()
    reg.observe(SandboxLeased())
    assert reg.value("sandbox.leases") == 1

    # a handler for a base class also sees subclasses, after the built-in ones
    seen: list[str] = []
    remove = reg.register(Event, lambda r, e: seen.append(e.kind))
    reg.observe(SpecialToolFinished(name="python", duration=1.0))
    reg.observe(StepStarted())
    remove()
    assert seen == ["special_tool_finished", "step_started"]
    assert reg.value("tool.calls") == 1
    assert reg.histogram("tool.duration.python").count == 1


def test_handler_table_checks_arguments() -> None:
    table = HandlerTable()
    with pytest.raises(TypeError):
        table.register(int, lambda r, e: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        table.register(RunStarted, "not callable")  # type: ignore[arg-type]
    table.unregister(RunStarted, print)  # absent: no error


def test_several_handlers_for_one_type_all_run() -> None:
    reg = MetricsRegistry()
    reg.register(RunStarted, lambda r, e: r.counter("a").inc())
    reg.register(RunStarted, lambda r, e: r.counter("b").inc())
    reg.observe(RunStarted())
    assert (reg.value("runs.started"), reg.value("a"), reg.value("b")) == (1, 1, 1)


# --- the registry: export and fan-in ----------------------------------------------------------------------


def sample_events(run_id: str, seed: int) -> list[Event]:
    rng = random.Random(seed)
    events: list[Event] = [RunStarted(run_id=run_id)]
    for i in range(rng.randint(1, 6)):
        events.append(LLMRequestStarted(run_id=run_id, request_id=str(i)))
        if rng.random() < 0.3:
            events.append(LLMRetry(run_id=run_id, request_id=str(i), wait=rng.random(), reason="429"))
        events.append(
            LLMResponse(
                run_id=run_id,
                request_id=str(i),
                latency=rng.uniform(0.1, 5),
                ttft=rng.uniform(0.05, 1),
                input_tokens=rng.randint(10, 1000),
                output_tokens=rng.randint(1, 100),
                cost=rng.random() / 100,
            )
        )
        events.append(ToolStarted(run_id=run_id, name="python"))
        events.append(ToolFinished(run_id=run_id, name="python", duration=rng.random(), ok=rng.random() < 0.8))
        events.append(CacheHit(run_id=run_id, lookup_seconds=1e-4) if rng.random() < 0.5 else CacheMiss(run_id=run_id))
    events.append(RunFinished(run_id=run_id, duration=rng.uniform(1, 60), steps=rng.randint(1, 10)))
    return events


def test_snapshot_is_json_safe() -> None:
    reg = observed(*sample_events("r", 1))
    reg.histogram("empty")
    snap = json.loads(json.dumps(reg.snapshot(), allow_nan=False))
    assert set(snap) == {"histograms", "counters", "gauges", "units"}
    assert snap["counters"]["runs.started"] == 1
    assert snap["gauges"]["runs.in_flight"] == {"value": 0, "max": 1}
    assert snap["histograms"]["empty"]["p50"] is None
    assert set(snap["histograms"]["llm.latency"]) == {"count", "sum", "mean", "min", "max", "p50", "p95", "p99"}


def test_registry_round_trip_and_merge_equal_one_registry() -> None:
    parts = [sample_events(f"r{i}", i) for i in range(6)]
    everything = observed(*(e for p in parts for e in p))
    workers = [observed(*p) for p in parts]
    shipped = [json.loads(json.dumps(w.to_dict(), allow_nan=False)) for w in workers]

    rebuilt = MetricsRegistry.from_dict(shipped[0])
    assert rebuilt.snapshot() == workers[0].snapshot()

    merged = MetricsRegistry()
    merged.merge(workers[0])
    for data in shipped[1:]:
        merged.merge(data)  # a to_dict() works as well as a registry
    assert merged.names() == everything.names()
    for name, h in everything.histograms.items():
        same_content(merged.histograms[name], h)
    for name, c in everything.counters.items():
        assert merged.counters[name].value == pytest.approx(c.value)
    assert merged.gauge("runs.in_flight").value == 0
    assert merged.gauge("runs.in_flight").max == 1  # the largest per-worker peak
    assert merged.hit_rate() == pytest.approx(everything.hit_rate())


def test_merge_rejects_type_clash() -> None:
    a, b = MetricsRegistry(), MetricsRegistry()
    a.counter("x")
    b.histogram("x")
    with pytest.raises(ValueError):
        a.merge(b)


def test_to_dataframe() -> None:
    pd = pytest.importorskip("pandas")
    reg = observed(*sample_events("r", 2))
    reg.gauge("custom").set(4)
    df = reg.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["name", "type", "count", "mean", "p50", "p95", "p99", "min", "max", "value"]
    assert list(df["name"]) == reg.names()
    assert len(df) == len(reg)
    rows = df.set_index("name")
    assert rows.loc["llm.latency", "type"] == "histogram"
    assert rows.loc["llm.latency", "count"] == reg.histogram("llm.latency").count
    assert rows.loc["llm.latency", "p95"] == pytest.approx(reg.histogram("llm.latency").p95)
    assert rows.loc["runs.started", "type"] == "counter"
    assert rows.loc["runs.started", "value"] == 1
    assert pd.isna(rows.loc["runs.started", "p50"])
    assert rows.loc["custom", "type"] == "gauge"
    assert rows.loc["custom", "value"] == 4 and rows.loc["custom", "max"] == 4
    assert MetricsRegistry().to_dataframe().empty


# --- per-run and global -------------------------------------------------------------------------------


def test_per_run_and_global_are_separate() -> None:
    index = RunMetricsIndex()
    bus = EventBus()
    detach = index.attach(bus)
    for e in sample_events("a", 1) + sample_events("b", 2):
        bus.emit(e)
    bus.emit(CacheMiss())  # no run: global only
    detach()
    bus.emit(RunStarted(run_id="c"))
    assert bus.tap_errors == 0
    a, b = index.for_run("a"), index.for_run("b")
    assert a is not None and b is not None and a is not b
    assert index.for_run("c") is None
    assert index.run_ids() == ["a", "b"]
    assert "a" in index and len(index) == 2
    assert a.value("runs.started") == b.value("runs.started") == 1
    assert index.global_.value("runs.started") == 2
    assert index.global_.value("llm.calls") == a.value("llm.calls") + b.value("llm.calls")
    assert index.global_.value("cache.response.misses") == (
        a.value("cache.response.misses") + b.value("cache.response.misses") + 1
    )
    merged = MetricsRegistry().merge(a).merge(b)
    assert merged.histogram("llm.latency").count == index.global_.histogram("llm.latency").count


def test_index_lru_bound() -> None:
    index = RunMetricsIndex(max_runs=3)
    for rid in ("r1", "r2", "r3"):
        index.observe(RunStarted(run_id=rid))
    index.observe(StepStarted(run_id="r1", step=1))  # r1 becomes the most recently updated
    index.observe(RunStarted(run_id="r4"))  # evicts r2, the least recently updated
    assert index.run_ids() == ["r3", "r1", "r4"]
    assert index.for_run("r2") is None
    assert index.evicted == 1
    for i in range(100):
        index.observe(RunStarted(run_id=f"x{i}"))
    assert len(index) == 3
    assert index.evicted == 101
    assert index.global_.value("runs.started") == 104  # the global registry keeps everything
    assert index.discard("x99") is not None and len(index) == 2
    index.clear()
    assert len(index) == 0 and len(index.global_) == 0
    assert RunMetricsIndex().max_runs == 1000
    with pytest.raises(ValueError):
        RunMetricsIndex(max_runs=0)


def test_index_register_applies_to_global_and_runs_only() -> None:
    index = RunMetricsIndex()
    remove = index.register(SandboxLeased, lambda r, e: r.counter("sandbox.leases").inc())
    index.observe(SandboxLeased(run_id="r"))
    plain = observed(SandboxLeased())
    assert index.global_.value("sandbox.leases") == 1
    assert index.for_run("r").value("sandbox.leases") == 1  # type: ignore[union-attr]
    assert "sandbox.leases" not in plain
    remove()
    index.observe(SandboxLeased(run_id="r"))
    assert index.global_.value("sandbox.leases") == 1


def test_token_drift_from_the_response_event() -> None:
    reg = observed(
        LLMResponse(input_tokens=100, input_tokens_local=110),
        LLMResponse(input_tokens=100),  # not counted locally: no drift check
        LLMResponse(input_tokens=7, input_tokens_local=7, usage_source="local"),  # the usage is the local count
    )
    assert reg.counter("tokens.drift_checks").value == 1
    assert reg.histogram("tokens.drift_ratio").sum == pytest.approx(0.1)
