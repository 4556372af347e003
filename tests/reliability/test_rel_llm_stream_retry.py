"""Text is never delivered twice: after a stream breaks and is retried, ``on_text`` and ``LLMTextDelta`` carry
only what goes beyond the text already delivered, or one ``TextRestart`` when the new attempt says otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support import Sleeps, sim_settings

from nbagent.events import Event, EventBus, LLMRequestFailed, LLMRetry, LLMTextDelta
from nbagent.llm import LLMClient, ModelRequest
from nbagent.llm.types import TextRestart
from nbagent.testing import Fault, Reply, SimServer

TEXT = "one two three four five six seven eight"


class Screen:
    """What a display shows: deltas appended, a TextRestart replacing everything shown so far."""

    def __init__(self) -> None:
        self.text = ""
        self.calls: list[str] = []

    def __call__(self, delta: str) -> None:
        self.calls.append(delta)
        self.text = str(delta) if isinstance(delta, TextRestart) else self.text + delta


def folded(events: list[Event]) -> str:
    """The text a subscriber folds from LLMTextDelta events (``restart`` replaces)."""
    text = ""
    for e in events:
        if isinstance(e, LLMTextDelta):
            text = e.text if e.restart else text + e.text
    return text


def ask(text: str = "x") -> ModelRequest:
    return ModelRequest(model="sim", messages=[{"role": "user", "content": text}], stream=True)


@pytest.fixture
def rig(sim: SimServer) -> Iterator[tuple[LLMClient, list[Event]]]:
    events: list[Event] = []
    bus = EventBus()
    bus.tap(events.append)
    yield LLMClient(sim_settings(sim), bus=bus, sleep=Sleeps(), rng=lambda: 0.5), events


@pytest.mark.parametrize("drops", [1, 2])
async def test_a_replayed_stream_delivers_each_piece_once(rig: Any, sim: SimServer, drops: int) -> None:
    client, events = rig
    sim.script(Reply(text=TEXT))
    sim.inject(*[Fault("drop_mid_stream")] * drops)
    plain: list[str] = []
    resp = await client.request(ask(), on_text=plain.append)
    assert resp.text == TEXT and resp.attempts == drops + 1
    assert "".join(plain) == TEXT and not any(isinstance(p, TextRestart) for p in plain)
    assert folded(events) == TEXT and not any(e.restart for e in events if isinstance(e, LLMTextDelta))
    retries = [e for e in events if isinstance(e, LLMRetry)]
    assert [r.restarted_stream for r in retries] == [True] * drops
    await client.aclose()


async def test_a_retry_before_any_text_is_no_restart(rig: Any, sim: SimServer) -> None:
    client, events = rig
    sim.inject(Fault("500"))
    await client.request(ask())
    assert [r.restarted_stream for r in events if isinstance(r, LLMRetry)] == [False]
    await client.aclose()


def _changing(texts: list[str]) -> Any:
    """A behaviour answering each request with the next of ``texts``."""
    answers = iter(texts)
    return lambda body: Reply(text=next(answers))


@pytest.mark.parametrize("second", ["something else entirely now", "one two"])
async def test_a_retry_that_says_otherwise_replaces_the_text_once(second: str) -> None:
    # the dropped attempt delivered "one two three four " (half its events); the retry answers ``second``
    with SimServer(behavior=_changing([TEXT, second])) as srv:
        events: list[Event] = []
        bus = EventBus()
        bus.tap(events.append)
        client = LLMClient(sim_settings(srv), bus=bus, sleep=Sleeps())
        srv.inject(Fault("drop_mid_stream"))
        screen = Screen()
        resp = await client.request(ask(), on_text=screen)
        assert resp.text == second
        assert screen.text == second and folded(events) == second
        assert sum(isinstance(c, TextRestart) for c in screen.calls) == 1
        assert sum(e.restart for e in events if isinstance(e, LLMTextDelta)) == 1
        await client.aclose()


async def test_an_on_text_error_is_the_callers_and_never_retried(rig: Any, sim: SimServer) -> None:
    client, events = rig

    def on_text(delta: str) -> None:
        raise BrokenPipeError("the terminal went away")  # an OSError: must not look like a dropped connection

    with pytest.raises(BrokenPipeError, match="terminal went away"):
        await client.request(ask(TEXT), on_text=on_text)
    assert sim.requests == 1 and not [e for e in events if isinstance(e, LLMRetry)]
    assert [e.error_type for e in events if isinstance(e, LLMRequestFailed)] == ["BrokenPipeError"]
    assert client.in_flight == 0
    await client.aclose()
