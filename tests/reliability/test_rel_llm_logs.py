"""Log redaction covers the loggers really used: a key registered as a secret never appears in the log output of
a real request logged at DEBUG, on any of the loggers the client's stack writes to."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from support import Sleeps, sim_settings

from nbagent.events import EventBus
from nbagent.llm import LLMClient, ModelRequest
from nbagent.store.redact import REDACTED, add_secret, install_log_redaction, uninstall_log_redaction
from nbagent.testing import SimServer

KEY = "zq7-query-credential-5521"  # a key of no known shape: only its registration protects it


@pytest.fixture
def root_debug() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    yield
    root.setLevel(level)
    uninstall_log_redaction()


def capture(logger: logging.Logger) -> tuple[io.StringIO, logging.Handler]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return out, handler


@pytest.mark.parametrize("transport", ["direct", "sdk", "httpx"])
async def test_a_key_in_the_base_url_never_reaches_the_logs(sim: SimServer, root_debug: None, transport: str) -> None:
    add_secret(KEY)
    root = logging.getLogger()
    before, h1 = capture(root)  # a handler the user set up before nbagent installed redaction
    install_log_redaction()
    after, h2 = capture(root)  # and one added afterwards
    own, h3 = capture(logging.getLogger("httpx2"))  # a handler on one of the stack's loggers
    try:
        client = LLMClient(sim_settings(sim, http__transport=transport), bus=EventBus(), sleep=Sleeps())
        endpoint = client.settings.endpoint(base_url=f"{sim.url}?sig={KEY}")
        resp = await client.request(ModelRequest(model="sim", messages=[{"role": "user", "content": "hi"}]),
                                    endpoint=endpoint)
        assert resp.text == "Answer to: hi"  # the query string went on the request, after the path
        await client.aclose()
        logging.getLogger().info("root logger: key %s", KEY)
        logging.getLogger("asyncio").debug("event loop: key %s", KEY)
    finally:
        for logger, h in ((root, h1), (root, h2), (logging.getLogger("httpx2"), h3)):
            logger.removeHandler(h)
    for out in (before, after, own):
        text = out.getvalue()
        assert KEY not in text
    text = before.getvalue()
    assert f"sig={REDACTED}" in text  # httpx2's INFO "HTTP Request" line, with the query redacted
    assert f"root logger: key {REDACTED}" in text and f"event loop: key {REDACTED}" in text


def test_other_loggers_and_the_record_factory_are_left_alone(root_debug: None) -> None:
    factory = logging.getLogRecordFactory()
    install_log_redaction()
    out, h = capture(logging.getLogger())
    try:
        logging.getLogger("someone.else").info("api_key=%s", "abc123")
    finally:
        logging.getLogger().removeHandler(h)
    assert "api_key=abc123" in out.getvalue()
    assert logging.getLogRecordFactory() is factory
    uninstall_log_redaction()
    assert not any(type(f).__name__ == "RedactingFilter" for f in logging.getLogger().filters)
