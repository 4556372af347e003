"""OpenTelemetry export: runs against the simulated server, spans caught by the SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from support import Sleeps, sim_settings

from nbagent import Agent, tool
from nbagent.cli import main as cli_main
from nbagent.config import Settings
from nbagent.exporters import enable_otel, otel_options, otel_requested
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.store.redact import add_secret
from nbagent.store.runs import RunStore
from nbagent.testing import Fault, Reply, SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


@tool
def broken(key: str) -> str:
    """Always fails."""
    raise RuntimeError(f"no {key}")


class Otel:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.exporter = enable_otel(rt, span_exporter=self.spans, metric_readers=[self.reader])

    def agent(self, tools: list[Any], **kw: Any) -> Agent:
        return Agent("sim", tools, runtime=self.rt, **kw)

    async def finished(self) -> list[ReadableSpan]:
        assert await self.exporter.aflush()
        return list(self.spans.get_finished_spans())


@pytest.fixture
async def otel(sim: SimServer) -> AsyncIterator[Otel]:
    settings = sim_settings(sim)
    rt = Runtime(settings, client=LLMClient(settings, sleep=Sleeps()))
    yield Otel(rt)
    await rt.aclose()


def tree(spans: list[ReadableSpan]) -> dict[str, list[str]]:
    """Parent name -> child names (sorted), by span ids; the root under ``""``."""
    by_id = {s.context.span_id: s for s in spans}
    out: dict[str, list[str]] = {}
    for s in spans:
        parent = "" if s.parent is None else by_id[s.parent.span_id].name
        out.setdefault(parent, []).append(s.name)
    return {k: sorted(v) for k, v in out.items()}


def ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


async def test_a_tool_run_is_one_trace_with_genai_spans_at_the_record_times(otel: Otel) -> None:
    result = await otel.agent([lookup]).run("what is x?")
    spans = await otel.finished()
    assert len({s.context.trace_id for s in spans}) == 1
    assert tree(spans) == {"": ["invoke_agent run-1"], "invoke_agent run-1": ["step 1", "step 2"],
                           "step 1": ["chat sim", "execute_tool lookup"], "step 2": ["chat sim"],
                           "chat sim": ["attempt 1", "attempt 1"]}
    rec = result.record
    root = next(s for s in spans if s.parent is None)
    assert (root.start_time, root.end_time) == (ns(rec.started), ns(rec.ended))
    assert root.status.status_code is StatusCode.OK and root.attributes["nbagent.run_id"] == rec.run_id
    chats = [s for s in spans if s.name == "chat sim"]
    assert all(s.attributes["gen_ai.operation.name"] == "chat" for s in chats)
    assert sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats) == rec.input_tokens > 0
    assert sum(s.attributes["gen_ai.usage.output_tokens"] for s in chats) == rec.output_tokens > 0
    assert sorted(s.attributes["gen_ai.response.finish_reasons"][0] for s in chats) == ["stop", "tool_calls"]
    assert {s.attributes["gen_ai.request.model"] for s in chats} == {"sim"}
    model_spans = [s for s in rec.spans if s.kind == "model"]
    assert sorted((c.start_time, c.end_time) for c in chats) == sorted((ns(m.start), ns(m.end)) for m in model_spans)
    tool_span = next(s for s in spans if s.name == "execute_tool lookup")
    assert tool_span.attributes["gen_ai.tool.name"] == "lookup"
    assert tool_span.attributes["gen_ai.tool.call.result"] == "value-of-x"
    assert root.attributes["output.value"] == result.output


async def test_parallel_tools_are_siblings_and_a_failing_tool_is_an_error(otel: Otel, sim: SimServer) -> None:
    sim.script(Reply(tool_calls=[("lookup", {"key": "a"}), ("lookup", {"key": "b"}), ("broken", {"key": "c"})]),
               Reply(text="done"))
    result = await otel.agent([lookup, broken]).run("three at once")
    spans = await otel.finished()
    assert result.ok
    assert tree(spans)["step 1"] == ["chat sim", "execute_tool broken", "execute_tool lookup", "execute_tool lookup"]
    failed = next(s for s in spans if s.name == "execute_tool broken")
    assert failed.status.status_code is StatusCode.ERROR and "no c" in (failed.status.description or "")


async def test_retries_are_backoff_spans_and_a_failed_run_is_an_error_trace(otel: Otel, sim: SimServer) -> None:
    sim.inject(Fault("503"), Fault("401"))
    result = await otel.agent([lookup]).run("q")
    spans = await otel.finished()
    assert result.status == "error"
    chat = next(s for s in spans if s.name.startswith("chat "))
    assert chat.status.status_code is StatusCode.ERROR
    assert tree(spans)["chat sim"] == ["attempt 1", "attempt 2", "retry backoff"]
    assert [e.name for e in chat.events] == ["retry"] and chat.events[0].attributes["nbagent.retry.reason"] == "503"
    root = next(s for s in spans if s.parent is None)
    assert root.status.status_code is StatusCode.ERROR and root.attributes["nbagent.status"] == "error"


async def test_cached_responses_are_marked_and_secrets_never_leave(otel: Otel) -> None:
    secret = "zq-otel-secret-4471x"
    add_secret(secret)
    agent = otel.agent([lookup], cache=otel.rt.response_cache())
    await agent.run(f"use key {secret} please")
    second = await agent.run(f"use key {secret} please")
    spans = await otel.finished()
    assert second.record.cached_calls == 2
    cached = [s for s in spans if s.name.startswith("chat ") and s.attributes["nbagent.cache.hit"]]
    assert len(cached) == 2
    for s in spans:
        values = [s.name, *(str(v) for v in s.attributes.values()), s.status.description or ""]
        assert not any(secret in v for v in values), s.name
    assert any("[REDACTED]" in str(s.attributes.get("input.value", "")) for s in spans)


async def test_otel_metrics_follow_the_runs(otel: Otel) -> None:
    result = await otel.agent([lookup]).run("what is x?")
    await otel.finished()
    data = otel.reader.get_metrics_data()
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    duration = metrics["gen_ai.client.operation.duration"].data.data_points
    assert sum(p.count for p in duration) == result.record.llm_calls == 2
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in metrics["gen_ai.client.token.usage"].data.data_points}
    assert tokens == {"input": result.record.input_tokens, "output": result.record.output_tokens}
    assert [p.value for p in metrics["nbagent.llm.calls"].data.data_points] == [2]
    assert [p.value for p in metrics["nbagent.runs.in_flight"].data.data_points] == [0]


def test_the_switch_follows_the_documented_rule() -> None:
    assert not otel_requested({}, {})
    assert otel_requested({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert otel_requested({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert otel_requested({}, {"NBAGENT_OTEL": "1"})
    assert not otel_requested({"enabled": True}, {"NBAGENT_OTEL": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert not otel_requested({}, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"})
    assert otel_requested({"endpoint": "http://127.0.0.1:6006"}, {})
    assert not otel_requested({"endpoint": "http://127.0.0.1:6006", "enabled": "false"}, {})
    with pytest.raises(ValueError, match="NBAGENT_OTEL"):
        otel_requested({}, {"NBAGENT_OTEL": "maybe"})
    with pytest.raises(ValueError, match="unknown \\[otel\\] setting"):
        otel_options({"endpoint": "x", "colour": "red"}, {})
    assert otel_options({}, {"OTEL_SERVICE_NAME": "svc"})["service_name"] == "svc"


async def test_settings_table_turns_export_on_for_a_runtime() -> None:
    settings = Settings.load(env={"NBAGENT_OTEL__ENDPOINT": "http://127.0.0.1:9/", "NBAGENT_OTEL__PROJECT": "p1"})
    rt = Runtime(settings)
    exporter = rt.part_if_started("otel")
    assert exporter is not None and exporter.endpoint == "http://127.0.0.1:9/"
    assert exporter.resource.attributes["openinference.project.name"] == "p1"
    await rt.aclose()
    assert exporter.closed
    assert Runtime(Settings.load(env={})).part_if_started("otel") is None


def test_off_by_default_imports_no_opentelemetry(tmp_path: Path) -> None:
    code = ("import sys\nfrom nbagent.runtime import Runtime\nrt = Runtime()\nrt.settings\n"
            "from nbagent import Agent\n"
            "assert rt.part_if_started('otel') is None\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "NBAGENT_OTEL"))}
    env.update(NBAGENT_HOME=str(tmp_path), PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


class Collector:
    """An OTLP/HTTP receiver on loopback that decodes the traces it is sent."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.resources: list[dict[str, str]] = []

    async def traces(self, request: web.Request) -> web.Response:
        req = ExportTraceServiceRequest()
        req.ParseFromString(await request.read())
        for rs in req.resource_spans:
            self.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
            for ss in rs.scope_spans:
                self.spans.extend(ss.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")


async def test_export_otel_sends_stored_runs_to_an_otlp_endpoint(sim: SimServer, tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    settings = sim_settings(sim)
    rt = Runtime(settings, store=RunStore(db))
    await Agent("sim", [lookup], runtime=rt).run("stored one")
    await Agent("sim", [lookup], runtime=rt).run("stored two")
    await rt.aclose()
    collector = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", collector.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        code = await asyncio.to_thread(cli_main, ["export-otel", "--since", "1d", "--db", str(db), "--endpoint",
                                                  f"http://127.0.0.1:{port}", "--service-name", "replay"])
    finally:
        await runner.cleanup()
    assert code == 0
    roots = [s for s in collector.spans if not s.parent_span_id]
    assert sorted(s.name for s in roots) == ["invoke_agent run-1", "invoke_agent run-2"]
    assert len({s.trace_id for s in collector.spans}) == 2
    assert sum(1 for s in collector.spans if s.name == "execute_tool lookup") == 2
    assert {r["service.name"] for r in collector.resources} == {"replay"}
