"""Gates for tests against a real Docker engine and real bubblewrap, shared by tests/integration and
tests/reliability.

When a part is missing the tests skip, unless ``NBAGENT_REQUIRE_SANDBOXES=1`` (set by the project's test
command and CI), in which case they fail with what to do about it: CI never skips them silently.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbagent.sandbox import DEFAULT_IMAGE

SETUP_HINT = "run `bash scripts/setup-sandbox.sh` (as root) to install and start it"


def unavailable(what: str, why: str) -> None:
    if os.environ.get("NBAGENT_REQUIRE_SANDBOXES") == "1":
        pytest.fail(f"{what} is required (NBAGENT_REQUIRE_SANDBOXES=1) but unavailable: {why}; {SETUP_HINT}",
                    pytrace=False)
    pytest.skip(f"{what} unavailable: {why}")


def docker_client_or_skip() -> Any:
    """A Docker client for a running engine that has the sandbox image."""
    try:
        import docker
    except ImportError:
        unavailable("Docker", "the 'docker' Python package is not installed")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        unavailable("Docker", f"the engine does not answer ({e})")
    try:
        client.images.get(DEFAULT_IMAGE)
    except Exception as e:
        unavailable("Docker", f"the image {DEFAULT_IMAGE} is missing ({e})")
    return client


def checked_bwrap() -> str:
    """The bubblewrap binary, after checking it can create namespaces here."""
    path = shutil.which("bwrap")
    if path is None:
        unavailable("bubblewrap", "bwrap is not installed")
        raise AssertionError("unreachable")
    probe = subprocess.run([path, "--unshare-all", "--ro-bind", "/", "/", "true"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        unavailable("bubblewrap", f"bwrap cannot create namespaces: {probe.stderr.decode().strip()}")
    return path


@pytest.fixture
def local_root() -> Iterator[Path]:
    """A directory for local sandboxes, removed after the test."""
    root = Path(tempfile.mkdtemp(prefix="nbagent-it-"))
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)
