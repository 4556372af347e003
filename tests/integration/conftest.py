"""Fixtures for tests against a real Docker engine and real bubblewrap (the gates: tests/sandbox_gates.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sandbox_gates import checked_bwrap, docker_client_or_skip, unavailable

from nbagent.events import EventBus
from nbagent.sandbox import PoolConfig, SandboxManager, SandboxSpec
from nbagent.sandbox.docker import DockerBackend
from nbagent.sandbox.local import LocalBackend

_unavailable = unavailable


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker client for a running engine that has the sandbox image."""
    client = docker_client_or_skip()
    yield client
    client.close()


@pytest.fixture(scope="session")
def bwrap_path() -> str:
    """The bubblewrap binary, after checking it can create namespaces here."""
    return checked_bwrap()


@pytest.fixture
async def docker_manager(docker_client: Any, bus: EventBus) -> AsyncIterator[Callable[..., SandboxManager]]:
    """Make Docker-backed managers (closed, with their containers removed, after the test)."""
    made: list[SandboxManager] = []

    def make(spec: SandboxSpec | None = None, **pool: Any) -> SandboxManager:
        options = {"min_idle": 0, "max_total": 2, "lease_timeout": 120.0, **pool}
        m = SandboxManager(spec or SandboxSpec(backend="docker", timeout=20), PoolConfig(**options), bus=bus,
                           backends={"docker": DockerBackend(docker_client)}, prune_on_start=False)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.aclose(grace=0)


@pytest.fixture
async def local_manager(
    bwrap_path: str, bus: EventBus, local_root: Path
) -> AsyncIterator[Callable[..., SandboxManager]]:
    """Make local (bubblewrap) managers over a per-test root directory."""
    made: list[SandboxManager] = []

    def make(spec: SandboxSpec | None = None, **pool: Any) -> SandboxManager:
        options = {"min_idle": 0, "max_total": 2, "lease_timeout": 60.0, **pool}
        m = SandboxManager(spec or SandboxSpec(backend="local", timeout=20), PoolConfig(**options), bus=bus,
                           backends={"local": LocalBackend(local_root, bwrap=bwrap_path)}, prune_on_start=False)
        made.append(m)
        return m

    yield make
    for m in made:
        await m.aclose(grace=0)

