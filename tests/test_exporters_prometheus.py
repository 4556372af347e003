"""Prometheus text exposition of a runtime's metrics, read back with prometheus_client's parser."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import sim_settings

from nbagent import Agent, tool
from nbagent.exporters import serve_prometheus, to_prometheus
from nbagent.metrics import MetricsRegistry
from nbagent.runtime import Runtime
from nbagent.testing import Fault, SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(text)}


async def test_a_runtime_s_metrics_parse_with_units_and_labels(sim: SimServer) -> None:
    rt = Runtime(sim_settings(sim))
    rt.metrics  # noqa: B018 - start measuring before the runs
    ok = await Agent("sim", [lookup], runtime=rt).run("what is x?")
    sim.inject(Fault("401"))
    failed = await Agent("sim", [lookup], runtime=rt).run("q")
    text = rt.metrics.to_prometheus()
    fams = families(text)
    latency = fams["nbagent_llm_latency_seconds"]
    assert latency.type == "summary"  # type: ignore[attr-defined]
    samples = {(s.name, s.labels.get("quantile")): s.value for s in latency.samples}  # type: ignore[attr-defined]
    assert samples[("nbagent_llm_latency_seconds_count", None)] == 2
    assert samples[("nbagent_llm_latency_seconds", "0.99")] >= samples[("nbagent_llm_latency_seconds", "0.5")] > 0
    tokens = fams["nbagent_tokens_input"]  # the parser drops _total from a counter family's name
    assert tokens.type == "counter"  # type: ignore[attr-defined]
    assert tokens.samples[0].value == ok.record.input_tokens + failed.record.input_tokens  # type: ignore[attr-defined]
    by_status = {s.labels["status"]: s.value for s in fams["nbagent_runs_by_status"].samples}  # type: ignore[attr-defined]
    assert by_status == {"ok": 1, "error": 1}
    assert fams["nbagent_runs_in_flight"].samples[0].value == 0  # type: ignore[attr-defined]
    assert "nbagent_tool_duration_by_tool_seconds" in fams and "nbagent_cost_usd" in fams
    assert "# TYPE nbagent_tokens_input_total counter" in text and "nbagent_run_duration_seconds_sum" in text
    await rt.aclose()


def test_label_values_are_escaped_and_names_sanitised() -> None:
    reg = MetricsRegistry()
    reg.counter('llm.errors.Bad"Type\\x\nY').inc(3)
    reg.histogram("tool.duration.my-tool").record(0.5)
    reg.gauge("odd name/with:chars").set(2)
    fams = families(to_prometheus(reg))
    errors = fams["nbagent_llm_errors_by_type"].samples  # type: ignore[attr-defined]
    assert [(s.labels["error_type"], s.value) for s in errors] == [('Bad"Type\\x\nY', 3)]
    tools = {s.labels.get("tool") for s in fams["nbagent_tool_duration_by_tool_seconds"].samples}  # type: ignore[attr-defined]
    assert tools == {"my-tool"}
    assert fams["nbagent_odd_name_with_chars"].samples[0].value == 2  # type: ignore[attr-defined]
    assert fams["nbagent_odd_name_with_chars_max"].samples[0].value == 2  # type: ignore[attr-defined]
    assert to_prometheus(MetricsRegistry()) == ""


async def test_the_metrics_endpoint_serves_on_loopback_and_closes_with_the_runtime(sim: SimServer) -> None:
    rt = Runtime(sim_settings(sim))
    server = await serve_prometheus(rt, port=0)
    assert server.port and server.url.startswith("http://127.0.0.1:")
    assert await serve_prometheus(rt) is server
    await Agent("sim", [lookup], runtime=rt).run("what is x?")
    async with aiohttp.ClientSession() as http:
        async with http.get(server.url) as resp:
            assert resp.status == 200 and resp.content_type == "text/plain"
            fams = families(await resp.text())
        assert fams["nbagent_llm_calls"].samples[0].value == 2  # type: ignore[attr-defined]
        await rt.aclose()
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(server.url):
                pass
    with pytest.raises(ValueError, match="loopback"):
        await serve_prometheus(Runtime(sim_settings(sim)), host="0.0.0.0")
