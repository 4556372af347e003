"""An agent with a tool of a real MCP server (mcp-server-time), through ``%%agent`` in a real ipykernel."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from kernels import KernelNotebook, kernel_env, text_of

from nbagent.testing import Reply, SimServer

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def kn(sim: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelNotebook]:
    home = tmp_path_factory.mktemp("kernel-home")
    config = home / "config.toml"
    config.write_text("[mcp.servers.time]\n"
                      f"command = {sys.executable!r}\n"
                      'args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]\n'
                      "timeout = 60\n")
    env = kernel_env(sim.url, home, NBAGENT_CONFIG=str(config), NBAGENT_RETRY__MAX_ATTEMPTS="1")
    notebook = KernelNotebook(tmp_path_factory.mktemp("kernel"), env)
    try:
        setup = notebook.run("%load_ext nbagent")
        assert not text_of(setup), text_of(setup)
        yield notebook
    finally:
        notebook.close()


def test_an_mcp_tool_runs_through_a_cell_in_a_real_kernel(kn: KernelNotebook, sim: SimServer) -> None:
    sim.script(Reply(tool_calls=[("get_current_time", {"timezone": "Asia/Tokyo"})]), Reply(text="it is morning"))
    cell = kn.run("%%agent -n clock -t mcp:time --wait -o r\nwhat time is it in Tokyo?")
    assert "error" not in [o.get("output_type") for o in cell.outputs], text_of(cell)
    check = kn.run("spans = [s.kind for s in r.record.spans]\n"
                   "print(r.status, r.output, 'tool' in spans, 'mcp' in spans)")
    assert text_of(check).split() == ["ok", "it", "is", "morning", "True", "True"], text_of(check)
    tool_msg = next(m for m in sim.history[-1]["messages"] if m["role"] == "tool")
    assert "Asia/Tokyo" in tool_msg["content"]
    listing = kn.run("%agent mcp")
    shown = " ".join(o.get("data", {}).get("text/plain", "") for o in listing.outputs)
    assert "time (stdio): ready" in shown and "get_current_time" in shown and "calls 1, errors 0" in shown
