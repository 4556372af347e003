"""One bad character never costs a run: text UTF-8 cannot encode (a lone surrogate, as ``os.fsdecode`` makes of
an undecodable file name) is escaped where it leaves the process, the HTTP body and the cache file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import Sleeps, sim_settings

from nbagent import Agent, tool
from nbagent.cache import ResponseCache, ToolCache
from nbagent.cache.keys import request_key
from nbagent.events import CacheWarning, EventBus
from nbagent.llm import EndpointModel, LLMClient, ModelRequest
from nbagent.llm.text import encodable
from nbagent.runtime import Runtime
from nbagent.testing import SimServer

NAME = os.fsdecode(b"name-\xff")  # "name-\udcff"


def ask(text: str, *, stream: bool = False) -> ModelRequest:
    return ModelRequest(model="sim", messages=[{"role": "user", "content": text}], stream=stream)


def test_encodable_escapes_only_what_utf8_cannot_carry() -> None:
    assert encodable(NAME) == "name-\\xff"
    assert encodable("\ud800 alone") == "\\ud800 alone"
    for fine in ("plain", "déjà vu ✓", ""):
        assert encodable(fine) is fine


@pytest.mark.parametrize("transport", ["direct", "sdk", "httpx"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_lone_surrogate_reaches_the_server_escaped(sim: SimServer, transport: str, stream: bool) -> None:
    client = LLMClient(sim_settings(sim, http__transport=transport), bus=EventBus(), sleep=Sleeps())
    resp = await client.request(ask(f"list {NAME}", stream=stream))
    assert resp.text == "Answer to: list name-\\xff"
    assert resp.attempts == 1 and sim.requests == 1
    assert sim.history[-1]["messages"][0]["content"] == "list name-\\xff"
    await client.aclose()


async def test_the_response_cache_keys_and_stores_it(sim: SimServer, tmp_path: Path) -> None:
    bus = EventBus()
    warnings: list[CacheWarning] = []
    bus.tap(lambda e: warnings.append(e) if isinstance(e, CacheWarning) else None)
    client = LLMClient(sim_settings(sim), bus=bus, sleep=Sleeps())
    model = EndpointModel(client, client.settings.endpoint())
    path = tmp_path / "cache.sqlite3"
    cache = ResponseCache(path, bus=bus)
    first = await cache.wrap(model).request(ask(NAME))
    assert not first.cached and (await cache.wrap(model).request(ask(NAME))).cached
    # distinct unencodable texts keep distinct keys
    assert request_key(ask(NAME)) != request_key(ask(os.fsdecode(b"name-\xfe")))
    await cache.aclose()
    fresh = ResponseCache(path, memory_size=0, bus=bus)  # the persistent tier only
    again = await fresh.wrap(model).request(ask(NAME))
    assert again.cached and again.text == first.text and sim.requests == 1
    assert not warnings
    await fresh.aclose()
    await client.aclose()


async def test_an_agent_run_with_a_tool_returning_an_undecodable_name(sim: SimServer, tmp_path: Path) -> None:
    @tool(cache=True)
    def list_files(folder: str) -> str:
        """List a folder."""
        return NAME

    bus = EventBus()
    warnings: list[CacheWarning] = []
    bus.tap(lambda e: warnings.append(e) if isinstance(e, CacheWarning) else None)
    settings = sim_settings(sim)
    client = LLMClient(settings, bus=bus, sleep=Sleeps())
    path = tmp_path / "cache.sqlite3"
    tools = ToolCache(path, bus=bus)
    for stream in (False, True):
        agent = Agent("sim", [list_files], runtime=Runtime(settings, bus=bus, client=client), stream=stream,
                      cache=ResponseCache(path, bus=bus), tool_cache=tools)
        result = await agent.run("what is in x?")
        assert result.ok, result.error
        assert result.output == "Answer to: what is in x? (tool said: name-\\xff)"
    await tools.flush()
    fresh = ToolCache(path, memory_size=0, bus=bus)
    assert await fresh.get("list_files", {"folder": "x"}) == "name-\\xff"
    assert not warnings
    await fresh.aclose()
    await tools.aclose()
    await client.aclose()
