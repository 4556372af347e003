"""``nbagent history`` on a store filled by real runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import sim_settings

from nbagent import Agent, tool
from nbagent.cli import main
from nbagent.events import EventBus
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.testing import SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


@pytest.fixture
async def filled(sim: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("NBAGENT_STORE_PATH", str(db))
    settings = sim_settings(sim)
    bus = EventBus()
    client = LLMClient(settings, bus=bus)
    store = RunStore(db)
    store.attach(bus)
    agent = Agent("sim", [lookup], runtime=Runtime(settings, bus=bus, client=client))
    ids = [(await agent.run(f"question {i}", name=f"cli-{i}")).run_id for i in range(3)]
    await client.aclose()
    store.close()
    return ids


def test_history_lists_runs(filled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history"]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in filled) and "cli-2" in out and "question 0" in out
    assert out.index(filled[2]) < out.index(filled[0])  # newest first
    assert main(["history", "--name", "cli-1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in rows] == [filled[1]] and rows[0]["status"] == "ok"
    assert main(["history", "--status", "error"]) == 0
    assert "no runs" in capsys.readouterr().out


def test_history_shows_one_run(filled: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", filled[0][:8], "--events", "--messages"]) == 0
    out = capsys.readouterr().out
    assert "cli-0" in out and "run_started" in out and "tool_finished" in out and "[tool] value-of-x" in out
    assert "model" in out and "overhead" in out
    assert main(["history", filled[0], "--json", "--events", "--messages"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["run"]["run_id"] == filled[0] and data["events"][0]["kind"] == "run_started"
    assert [m["role"] for m in data["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert main(["history", "nope"]) == 1


def test_history_export(filled: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.jsonl"
    assert main(["history", "--export", str(out), "--name", "cli-2"]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["record"] == "run" and lines[0]["run_id"] == filled[2]
    assert {x["record"] for x in lines} == {"run", "event", "message"}
    assert main(["history", "--since", "not a time"]) == 2
