"""Runs exported to a real Arize Phoenix (``phoenix serve`` on loopback) and read back through its REST API."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import sim_settings

from nbagent import Agent, tool
from nbagent.exporters import enable_otel
from nbagent.runtime import Runtime
from nbagent.store.redact import add_secret
from nbagent.testing import Fault, Reply, SimServer

pytest.importorskip("phoenix", reason="arize-phoenix is not installed (pip install 'nbagent[test]')")
pytestmark = [pytest.mark.integration]

STARTUP_LIMIT = 240.0  # seconds for `phoenix serve` to answer /healthz (its first start compiles a lot)
SECRET = "pq-phoenix-secret-90210"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of a Phoenix server in a temporary working dir, with no outside access."""
    work = tmp_path_factory.mktemp("phoenix")
    port = _free_port()
    env = {**os.environ, "PHOENIX_WORKING_DIR": str(work), "PHOENIX_PORT": str(port),
           "PHOENIX_GRPC_PORT": str(_free_port()), "PHOENIX_HOST": "127.0.0.1", "PHOENIX_TELEMETRY_ENABLED": "false",
           "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false", "PHOENIX_ALLOWED_SANDBOX_PROVIDERS": "NONE"}
    log = (work / "phoenix.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "phoenix.server.main", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, cwd=work)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_LIMIT
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"phoenix serve exited with {proc.returncode}: {_tail(work / 'phoenix.log')}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=5):  # noqa: S310 - loopback only
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"phoenix serve not ready after {STARTUP_LIMIT:.0f} s: {_tail(work / 'phoenix.log')}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


async def _spans(url: str, project: str, want: int) -> list[dict[str, Any]]:
    """The project's spans once ``want`` have arrived (Phoenix ingests in the background), bounded."""
    deadline = time.monotonic() + 60
    while True:
        try:
            body = await asyncio.to_thread(_get, f"{url}/v1/projects/{project}/spans?limit=1000")
            spans: list[dict[str, Any]] = body["data"]
        except urllib.error.HTTPError as exc:  # the project appears with its first span
            if exc.code != 404:
                raise
            spans = []
        if len(spans) >= want or time.monotonic() > deadline:
            return spans
        await asyncio.sleep(0.5)


async def test_runs_appear_in_phoenix_as_span_trees_with_tokens_and_no_secret(phoenix: str, sim: SimServer) -> None:
    add_secret(SECRET)
    project = "nbagent-test"
    rt = Runtime(sim_settings(sim))
    exporter = enable_otel(rt, endpoint=phoenix, project=project)
    tool_run = await Agent("sim", [lookup], runtime=rt).run(f"look up x with key {SECRET}")
    sim.script(Reply(tool_calls=[("lookup", {"key": "a"}), ("lookup", {"key": "b"})]), Reply(text="both"))
    parallel = await Agent("sim", [lookup], runtime=rt).run("two lookups")
    sim.inject(Fault("401"))
    failed = await Agent("sim", [lookup], runtime=rt).run("this one fails")
    assert tool_run.ok and parallel.ok and failed.status == "error"
    assert await exporter.aflush()
    records = [tool_run.record, parallel.record, failed.record]
    want = sum(1 + len(r.spans) - sum(1 for s in r.spans if s.kind in ("wait", "generate")) for r in records)
    spans = await _spans(phoenix, project, want)
    await rt.aclose()
    assert len(spans) == want
    by_id = {s["context"]["span_id"]: s for s in spans}
    roots = {s["attributes"]["nbagent.run_id"]: s for s in spans if s["parent_id"] is None}
    assert set(roots) == {r.run_id for r in records}

    def children(span: dict[str, Any]) -> list[str]:
        return sorted(s["name"] for s in spans if s["parent_id"] == span["context"]["span_id"])

    def named(trace: str, name: str) -> list[dict[str, Any]]:
        return [s for s in spans if s["context"]["trace_id"] == trace and s["name"] == name]

    for rec in records:
        root = roots[rec.run_id]
        trace = root["context"]["trace_id"]
        assert all(by_id[s["parent_id"]]["context"]["trace_id"] == trace for s in spans
                   if s["context"]["trace_id"] == trace and s["parent_id"])
        chats = [s for s in spans if s["context"]["trace_id"] == trace and s["name"].startswith("chat ")]
        assert sum(s["attributes"]["gen_ai.usage.input_tokens"] for s in chats) == rec.input_tokens
        assert sum(s["attributes"]["llm.token_count.completion"] for s in chats) == rec.output_tokens
    ok_root = roots[tool_run.run_id]
    assert children(ok_root) == ["step 1", "step 2"]
    step1 = named(ok_root["context"]["trace_id"], "step 1")[0]
    assert children(step1) == ["chat sim", "execute_tool lookup"]
    par_step = named(roots[parallel.run_id]["context"]["trace_id"], "step 1")[0]
    assert children(par_step) == ["chat sim", "execute_tool lookup", "execute_tool lookup"]
    fail_root = roots[failed.run_id]
    assert fail_root["status_code"] == "ERROR" and children(fail_root) == ["step 1"]
    assert ok_root["status_code"] == "OK"
    assert SECRET not in json.dumps(spans)
    assert "[REDACTED]" in ok_root["attributes"]["input.value"]
