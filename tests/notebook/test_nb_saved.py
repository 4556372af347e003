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
    # under the line, one line per run of the batch, each with its status and a spark of its timeline
    page = next(o["data"]["text/html"] for o in saved.cells[-2].outputs if "nbagent-progress" in
                o.get("data", {}).get("text/html", ""))
    assert 'class="nbagent-batch-lines" data-runs="20"' in page
    assert page.count('class="nbagent-line"') == 20 and page.count('data-status="ok"') == 20
    assert page.count("<svg") >= 20
    # the one widget is the batch's controls (the progress line is HTML, so that its last state is saved)
    views = [o for o in start.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1 and kn.widget_in(start, "nbagent-batch-controls"), dump(start)


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


def test_an_executed_notebook_is_small_and_its_static_outputs_show_every_figure(
        sim_module: SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbagent.execute import execute_notebook
    from nbagent.notebook.dashboard import SERIES_PANELS

    sim_module.configure(latency=0.0, tool_calls_per_run=1)
    for key, value in kernel_env(sim_module.url, tmp_path / "home", NBAGENT_LIMITS__STUCK_REPEATS="0").items():
        monkeypatch.setenv(key, value)  # the executed kernel inherits this process's environment
    source = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in (
        "%load_ext nbagent\nfrom nbagent import tool\n\n@tool\ndef lookup(key: str) -> str:\n"
        "    '''Look a key up.'''\n    return 'v-' + key",
        "%%agent -t lookup --wait\nLook up x.",
        "%agent dashboard",
        "%%agent -t lookup --wait\nLook up y.",
    )], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(source, tmp_path / "small.ipynb")
    result = execute_notebook(tmp_path / "small.ipynb", tmp_path / "out", progress=False)
    assert result.errors == []
    assert result.notebook.stat().st_size <= 300_000, result.notebook.stat().st_size  # plotly.js is 5 MB
    nb = nbformat.read(result.notebook, as_version=4)
    pages = ["".join(o["data"]["text/html"]) for c in nb.cells for o in c.get("outputs", [])
             if "text/html" in o.get("data", {})]
    assert sum('class="nbagent-timeline"' in p for p in pages) == 2  # each run's waterfall
    dash = next(p for p in pages if "nbagent-dashboard-static" in p)
    assert "LLM latency: n=4" in dash and "tool time: n=2" in dash  # the second run too
    assert re.findall(r'class="nbagent-series" data-title="([^"]*)"', dash) == [t for t, _ in SERIES_PANELS]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    figure = next(m["state"] for m in state.values() if "_widget_data" in m["state"])
    assert "plotly.js-dist-min" in figure["_esm"] and sum(figure["_widget_data"][0]["y"]) == 4
    html = result.html.read_text()
    assert html.count('class="nbagent-series"') == len(SERIES_PANELS) and "nbagent-timeline" in html
