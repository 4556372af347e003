"""Gates for tests against a real Docker engine and real bubblewrap.

When a part is missing the tests skip, unless ``NBAGENT_REQUIRE_SANDBOXES=1`` (set by the project's test
command and CI), in which case they fail with what to do about it: CI never skips them silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from nbagent.events import EventBus
from nbagent.sandbox import DEFAULT_IMAGE, PoolConfig, SandboxManager, SandboxSpec
from nbagent.sandbox.docker import DockerBackend
from nbagent.sandbox.local import LocalBackend

SETUP_HINT = "run `bash scripts/setup-sandbox.sh` (as root) to install and start it"


def _unavailable(what: str, why: str) -> None:
    if os.environ.get("NBAGENT_REQUIRE_SANDBOXES") == "1":
        pytest.fail(f"{what} is required (NBAGENT_REQUIRE_SANDBOXES=1) but unavailable: {why}; {SETUP_HINT}",
                    pytrace=False)
    pytest.skip(f"{what} unavailable: {why}")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A Docker client for a running engine that has the sandbox image."""
    try:
        import docker
    except ImportError:
        _unavailable("Docker", "the 'docker' Python package is not installed")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        _unavailable("Docker", f"the engine does not answer ({e})")
    try:
        client.images.get(DEFAULT_IMAGE)
    except Exception as e:
        _unavailable("Docker", f"the image {DEFAULT_IMAGE} is missing ({e})")
    yield client
    client.close()


@pytest.fixture(scope="session")
def bwrap_path() -> str:
    """The bubblewrap binary, after checking it can create namespaces here."""
    path = shutil.which("bwrap")
    if path is None:
        _unavailable("bubblewrap", "bwrap is not installed")
        raise AssertionError("unreachable")
    probe = subprocess.run([path, "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        _unavailable("bubblewrap", f"bwrap cannot create namespaces: {probe.stderr.decode().strip()}")
    return path


@pytest.fixture
def local_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="nbagent-it-"))
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


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

