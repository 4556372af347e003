"""What a notebook executed headless (nbclient, a real ipykernel) keeps: the final state of ``nbagent.map``'s
progress line, in the cell that started the batch."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from kernels import KernelNotebook, dump, kernel_env, text_of

from nbagent.testing import SimServer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def sim_module() -> Iterator[SimServer]:
    with SimServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def kn(sim_module: SimServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelNotebook]:
    env = kernel_env(sim_module.url, tmp_path_factory.mktemp("kernel-home"), NBAGENT_RETRY__MAX_ATTEMPTS="1")
    notebook = KernelNotebook(tmp_path_factory.mktemp("kernel"), env)
    try:
        setup = notebook.run("import asyncio\nimport nbagent")
        assert not text_of(setup), text_of(setup)
        yield notebook
    finally:
        notebook.close()


def progress_of(cell: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """The progress lines of a cell: (text, the HTML's data-done/data-total)."""
    out = []
    for o in cell.outputs:
        page = o.get("data", {}).get("text/html", "")
        m = re.search(r'class="nbagent-progress" data-done="(\d+)" data-total="(\d+)"', page)
        if m:
            out.append((o["data"]["text/plain"], f"{m.group(1)}/{m.group(2)}"))
    return out


def test_a_batch_awaited_in_a_later_cell_saves_its_final_count(kn: KernelNotebook, sim_module: SimServer,
                                                              tmp_path: Path) -> None:
    sim_module.configure(latency=0.2, tool_calls_per_run=0)
    start = kn.run('batch = nbagent.map([f"q{i}" for i in range(20)], concurrency=4, desc="map")')
    assert progress_of(start) and progress_of(start)[0][1] == "0/20", dump(start)  # shown at once, in this cell
    end = kn.run("result = await batch\nprint(result.ok, len(result))")
    assert text_of(end).strip() == "20 20", dump(end)
    saved = nbformat.read(kn.save(tmp_path / "saved.ipynb"), as_version=4)
    lines = progress_of(saved.cells[-2])
    assert [done for _, done in lines] == ["20/20"], dump(saved.cells[-2])
    assert lines[0][0].startswith("map: 20/20 runs") and "(done)" in lines[0][0]
    assert not any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in start.outputs)


def test_a_batch_that_ends_between_cells_is_sent_again_by_the_next_cell(kn: KernelNotebook,
                                                                       sim_module: SimServer) -> None:
    sim_module.configure(latency=0.2, tool_calls_per_run=0)
    start = kn.run('b2 = nbagent.map([f"r{i}" for i in range(12)], concurrency=4, desc="second")')
    # waits for the task itself (not the Batch, which would send the final line here)
    waited = kn.run("_ = await asyncio.wait([b2.task])\nprint(b2.done())")
    assert text_of(waited).strip() == "True"
    assert [done for _, done in progress_of(start)] != ["12/12"]  # the final update went to the starting cell
    kn.run("1 + 1")  # the next cell sends it again, under its own request
    assert [done for _, done in progress_of(start)] == ["12/12"], dump(start)
