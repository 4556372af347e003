"""Shared fixtures: every test gets its own nbagent home and config dirs; a simulated server over real HTTP."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from support import Sleeps, sim_settings

from nbagent.events import Event, EventBus
from nbagent.llm import LLMClient
from nbagent.testing import SimServer

pytest_plugins = ["sandbox_gates"]  # the local_root fixture of the sandbox tests (integration, reliability)


@pytest.fixture(autouse=True)
def _nbagent_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path_factory.mktemp("nbagent-home")
    monkeypatch.setenv("NBAGENT_HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))  # no user's config file reaches a test
    for var in list(os.environ):
        if var.startswith(("OPENAI_", "NBAGENT_")) and var not in ("NBAGENT_HOME", "NBAGENT_REQUIRE_SANDBOXES"):
            monkeypatch.delenv(var)


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer() as srv:
        yield srv


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def client(sim: SimServer, sleeps: Sleeps) -> AsyncIterator[LLMClient]:
    c = LLMClient(sim_settings(sim), bus=EventBus(), sleep=sleeps, rng=lambda: 0.5)
    yield c
    await c.aclose()


@pytest.fixture
def events() -> list[Event]:
    """Every event ``bus`` carries."""
    return []


@pytest.fixture
def bus(events: list[Event]) -> EventBus:
    b = EventBus()
    b.tap(events.append)
    return b
