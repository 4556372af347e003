"""Execute a notebook headless (nbclient, a real ipykernel) and export it to HTML (nbconvert).

``nbagent execute notebooks/quickstart.ipynb --out artifacts`` writes ``artifacts/quickstart.ipynb`` (with
outputs) and ``artifacts/quickstart.html``, which a person can open in any browser: every run leaves a
static summary with its numbers beside the live widget, so the HTML shows them.

Needs the ``execute`` extra: ``pip install 'nbagent[execute]'`` (nbclient and nbconvert, on top of the
``notebook`` extra).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ExecutedNotebook", "execute_notebook"]


@dataclass
class ExecutedNotebook:
    notebook: Path
    html: Path
    seconds: float
    cells: int
    errors: list[str]


def execute_notebook(path: str | Path, out_dir: str | Path = "artifacts", *, timeout: float = 900.0,
                     kernel_name: str = "python3", progress: bool = True) -> ExecutedNotebook:
    """Run every cell of ``path`` in a fresh kernel; save the executed copy and its HTML in ``out_dir``.

    A cell that raises stops the run; the notebook is still saved (with the error in it) and the error is
    reported in ``errors``. Raises ``ImportError`` naming the extra to install when nbclient or nbconvert is
    missing.
    """
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError
        from nbconvert import HTMLExporter
    except ImportError as exc:
        raise ImportError(f"running a notebook headless needs {exc.name or 'nbclient and nbconvert'}: "
                          f"pip install 'nbagent[execute]'", name=exc.name) from None

    src = Path(path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nb = nbformat.read(src, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(src.parent.resolve())}})
    errors: list[str] = []
    t0 = time.perf_counter()
    done = 0

    def on_cell_executed(**kwargs: object) -> None:
        nonlocal done
        done += 1
        if progress:
            bar = "#" * (30 * done // max(len(code_cells), 1))
            print(f"\r  {src.name} [{bar:<30}] cell {done}/{len(code_cells)}  {time.perf_counter() - t0:5.1f} s",
                  end="", file=sys.stderr, flush=True)

    client.on_cell_executed = on_cell_executed
    try:
        client.execute(cwd=str(src.parent.resolve()), env=dict(os.environ))
    except CellExecutionError as exc:
        errors.append(str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc))
    finally:
        if progress:
            print(file=sys.stderr)
    executed = out / src.name
    nbformat.write(nb, executed)
    with warnings.catch_warnings():  # outputs with no HTML form (a widget-only view) are simply left out
        warnings.filterwarnings("ignore", message="Your element with mimetype", category=UserWarning)
        body, _ = HTMLExporter().from_notebook_node(nb)
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return ExecutedNotebook(executed, html, time.perf_counter() - t0, len(code_cells), errors)
