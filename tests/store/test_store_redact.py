"""API keys and Authorization headers never reach the store, the logs or notebook output."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import sim_settings

from nbagent import Agent, tool
from nbagent.events import EventBus, RunFinished, RunStarted, ToolStarted
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.store.redact import (
    REDACTED,
    Redactor,
    add_secret,
    install_log_redaction,
    redact,
    redact_obj,
    uninstall_log_redaction,
)
from nbagent.testing import SimServer

KEY = "sk-test-9f8e7d6c5b4a39281706abcdef"  # the endpoint's key (sent as Authorization: Bearer KEY)
WRONG = "sk-wrong-0a1b2c3d4e5f6a7b8c9d0e1f"
TOKEN = "tok_4f3e2d1c0b9a8f7e6d5c"  # a bearer token of no known shape
ODD = "zq-unusual-credential-77"  # a key of no known shape: only the registered value protects it


@pytest.fixture
def logs_redacted() -> Iterator[None]:
    install_log_redaction()
    yield
    uninstall_log_redaction()


def db_bytes(path: Path) -> bytes:
    """Every byte SQLite wrote for this database: the main file, the WAL and the shared memory."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


@tool
def call_api(url: str) -> str:
    """Call an API and echo the request (a tool that leaks what it was given)."""
    return f'{{"url": "{url}", "headers": {{"Authorization": "Bearer {TOKEN}", "x-api-key": "{ODD}"}}}}'


@tool
def broken(url: str) -> str:
    """A tool whose error message carries a credential."""
    raise RuntimeError(f"request to {url} failed with Authorization: Bearer {TOKEN}")


def test_patterns() -> None:
    r = Redactor([ODD], env={})
    assert r.redact(f"key {KEY} and {ODD}") == f"key {REDACTED} and {REDACTED}"
    assert r.redact(f"Authorization: Bearer {TOKEN}") == f"Authorization: {REDACTED}"
    assert r.redact(f'{{"api_key": "{TOKEN}", "n": 1}}') == f'{{"api_key": "{REDACTED}", "n": 1}}'
    assert r.redact('{\\"password\\": \\"hunter22\\"}') == '{\\"password\\": \\"' + REDACTED + '\\"}'
    assert r.redact("Bearer abcdefghijklmnop") == f"Bearer {REDACTED}"
    assert r.redact("ghp_" + "a" * 36) == REDACTED
    for harmless in ("The key to success is tokens", "a monkey", "sk-short", ""):
        assert r.redact(harmless) == harmless
    assert r.redact_obj({"headers": {"Authorization": "Basic abc"}, "api_key": "x", "n": [1, f"{KEY}"],
                         "token_count": 3}) == {"headers": {"Authorization": REDACTED}, "api_key": REDACTED,
                                                "n": [1, REDACTED], "token_count": 3}
    env = Redactor(env={"OPENAI_API_KEY": ODD})
    assert env.redact(f"it is {ODD}.") == f"it is {REDACTED}."


@pytest.mark.parametrize("writer", ["thread", "process"])
async def test_secrets_never_reach_the_database(tmp_path: Path, logs_redacted: None, writer: str) -> None:
    add_secret(ODD)  # e.g. the key of an endpoint the user configured
    with SimServer(api_key=KEY, tool_calls_per_run=1) as sim:
        settings = sim_settings(sim)
        bus = EventBus()
        client = LLMClient(settings, bus=bus)
        store = RunStore(tmp_path / "runs.db", writer=writer)
        store.attach(bus)
        agent = Agent("sim", [call_api], runtime=Runtime(settings, bus=bus, client=client), api_key=KEY)
        leaky = f"use key {KEY} and Authorization: Bearer {TOKEN} and {ODD}"
        ok = await agent.run(leaky)
        assert ok.ok and KEY in ok.output  # the run itself is untouched...
        failing = Agent("sim", [broken], runtime=Runtime(settings, bus=bus, client=client), api_key=KEY)
        assert (await failing.run("go")).ok
        denied = Agent("sim", [call_api], runtime=Runtime(settings, bus=bus, client=client), api_key=WRONG)
        refused = await denied.run(f"try {WRONG}")
        assert refused.status == "error"
        await client.aclose()
        store.flush()
        # ...but what is kept has no secret anywhere, in any table, file or export
        stored = store.load(ok.run_id)
        assert KEY not in stored.output and REDACTED in stored.output
        assert REDACTED in stored.info["prompt"]
        export = tmp_path / "all.jsonl"
        store.export_jsonl(export)
        df_html = store.to_dataframe().to_html()
        store.close()
    raw = db_bytes(tmp_path / "runs.db") + export.read_bytes() + df_html.encode()
    for secret in (KEY, WRONG, TOKEN, ODD):
        assert secret.encode() not in raw, secret
    assert REDACTED.encode() in raw


def test_logs_are_redacted(caplog: pytest.LogCaptureFixture, logs_redacted: None) -> None:
    log = logging.getLogger("nbagent.llm.client")
    with caplog.at_level(logging.DEBUG, logger="nbagent"):
        log.warning("sending headers %s", {"Authorization": f"Bearer {TOKEN}"})
        log.info("api_key=%s", KEY)
        try:
            raise ValueError(f"bad key {KEY}")
        except ValueError:
            log.exception("request failed")
        logging.getLogger("openai._base_client").warning("Authorization: Bearer %s", TOKEN)
    text = caplog.text
    assert TOKEN not in text and KEY not in text and text.count(REDACTED) >= 4
    assert "ValueError" in text  # the traceback is kept, with the key taken out


def test_other_loggers_are_left_alone(caplog: pytest.LogCaptureFixture, logs_redacted: None) -> None:
    with caplog.at_level(logging.INFO):
        logging.getLogger("someone.else").info("api_key=%s", "abc123")
    assert "api_key=abc123" in caplog.text


def test_module_level_helpers() -> None:
    assert redact(f"x {KEY}") == f"x {REDACTED}"
    assert redact_obj([{"Authorization": "Bearer 1234567890"}]) == [{"Authorization": REDACTED}]


def test_secrets_in_one_run_of_a_batch_are_redacted_in_its_events_and_row(tmp_path: Path) -> None:
    odd = 'zq"quoted\\credential-88'  # an exact secret with characters JSON escapes
    s = RunStore(tmp_path / "batch.db", writer="thread", redactor=Redactor([odd], env={}), flush_interval=60)
    bus = EventBus()
    s.attach(bus)
    bus.emit(RunStarted(run_id="clean", name="c", prompt="nothing to hide"))
    bus.emit(RunStarted(run_id="leak", name="l", prompt=f"key {KEY}"))
    bus.emit(ToolStarted(run_id="leak", call_id="c1", name="t", arguments=f"k={odd}"))
    bus.emit(RunFinished(run_id="leak", status="error", error=f"failed with Authorization: Bearer {TOKEN}"))
    leak, clean = s.load("leak"), s.load("clean")  # one batch: the reads flush
    s.close()
    assert leak.info["prompt"] == f"key {REDACTED}" and leak.info["status"] == "error"
    assert leak.info["error"] == f"failed with Authorization: {REDACTED}"
    assert [e.kind for e in leak.events] == ["run_started", "tool_started", "run_finished"]
    assert leak.events[0].prompt == f"key {REDACTED}" and odd not in leak.events[1].arguments
    assert leak.events[2].error == leak.info["error"]
    assert clean.info["prompt"] == clean.events[0].prompt == "nothing to hide"
    raw = db_bytes(tmp_path / "batch.db")
    for secret in (KEY, TOKEN, odd, json.dumps(odd)[1:-1]):
        assert secret.encode() not in raw, secret
