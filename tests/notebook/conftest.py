"""Fixtures of the notebook tests: a real InteractiveShell (``shell``) and the magics on it (``nb``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Notebook, make_notebook

from nbagent.notebook import unregister
from nbagent.testing import SimServer


@pytest.fixture(scope="module")
def sim_module() -> Iterator[SimServer]:
    """One simulated server for a whole test module (for the modules that share one real kernel)."""
    with SimServer() as srv:
        yield srv


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    sh = InteractiveShell.instance()
    yield sh
    sh.config.pop("AgentMagics", None)  # %config persists in the shell's config
    for name in [k for k in sh.user_ns if not k.startswith("_") and k not in sh.user_ns_hidden]:
        sh.user_ns.pop(name, None)


@pytest.fixture
async def nb(shell: InteractiveShell, sim: SimServer) -> AsyncIterator[Notebook]:
    notebook = make_notebook(shell, sim, retry__max_attempts=1)
    yield notebook
    unregister(shell)
    await notebook.registry.aclose()
