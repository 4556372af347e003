"""Fixtures for the pool tests: a fake backend and a manager over it, closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from nbagent.events import EventBus
from nbagent.sandbox import PoolConfig, SandboxManager, SandboxSpec

from .fakes import FakeBackend


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_manager(
    backend: FakeBackend, bus: EventBus
) -> AsyncIterator[Callable[..., SandboxManager]]:
    made: list[SandboxManager] = []

    def make(*, clock: Callable[[], float] | None = None, **pool: object) -> SandboxManager:
        kwargs: dict[str, object] = {"min_idle": 0, "max_total": 4, "lease_timeout": 5.0, "reap_interval": 3600.0}
        kwargs.update(pool)
        extra = {"clock": clock} if clock is not None else {}
        m = SandboxManager(SandboxSpec(backend="docker"), PoolConfig(**kwargs),  # type: ignore[arg-type]
                           bus=bus, backends={"docker": backend, "local": FakeBackend("local")}, **extra)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.aclose(grace=0)
