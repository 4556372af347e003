"""Execute a notebook headless (nbclient, a real ipykernel) and export it to HTML (nbconvert).

``nbagent execute notebooks/quickstart.ipynb --out artifacts`` writes ``artifacts/quickstart.ipynb`` (with
outputs) and ``artifacts/quickstart.html``, which a person can open in any browser: every run leaves a
static summary with its numbers beside the live widget, so the HTML shows them.

The saved copy is kept small (:func:`slim_widget_state`): a plotly figure widget carries plotly.js (several
MB) in its saved widget state; it is replaced by a few lines that draw the saved figure with plotly.js from a
CDN. Re-running the notebook shows the live widget again.

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
from typing import Any

__all__ = ["ExecutedNotebook", "execute_notebook", "slim_widget_state"]

#: The code of a saved plotly figure widget (``%(src)s``: an ES module of plotly.js): it draws the figure of
#: the saved widget state once (buffers of numbers become typed arrays), or says where the figures are.
_PLOTLY_ESM = """// nbagent: the saved state of a plotly figure widget, drawn with plotly.js from a CDN.
// (the widget's own code, plotly.js included, is left out of saved notebooks; run the cell to get it back)
const TYPED = {float64: Float64Array, float32: Float32Array, int32: Int32Array, int16: Int16Array,
               int8: Int8Array, uint32: Uint32Array, uint16: Uint16Array, uint8: Uint8Array};
function plain(v) {
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") {
    if (v.buffer && v.dtype && TYPED[v.dtype]) {
      const b = v.buffer.buffer ? v.buffer : new DataView(v.buffer);
      return Array.from(new TYPED[v.dtype](b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
    }
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  }
  return v;
}
export default {
  async render({ model, el }) {
    const div = document.createElement("div");
    el.appendChild(div);
    try {
      const mod = await import("%(src)s");
      const Plotly = mod.default || mod;
      await Plotly.newPlot(div, plain(model.get("_widget_data")), plain(model.get("_widget_layout")),
                           plain(model.get("_config") || {}));
    } catch (err) {
      div.textContent = "(plotly.js could not be loaded: the static figures below show the same data)";
    }
  },
};
"""


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
    slim_widget_state(nb)
    nbformat.write(nb, executed)
    with warnings.catch_warnings():  # outputs with no HTML form (a widget-only view) are simply left out
        warnings.filterwarnings("ignore", message="Your element with mimetype", category=UserWarning)
        body, _ = HTMLExporter().from_notebook_node(nb)
    html = executed.with_suffix(".html")
    html.write_text(body, encoding="utf-8")
    return ExecutedNotebook(executed, html, time.perf_counter() - t0, len(code_cells), errors)


def slim_widget_state(nb: dict[str, Any], *, max_code: int = 100_000) -> int:
    """Replace the code of each saved plotly figure widget (plotly.js bundled, several MB) by a small module
    that draws the saved figure with plotly.js from a CDN; returns the number of characters removed.

    Only frontend code longer than ``max_code`` characters that the widget re-creates when its cell runs again
    is replaced (an anywidget's ``_esm``); the figure's data, layout and every other widget are left as saved.
    """
    state = nb.get("metadata", {}).get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
    code = _PLOTLY_ESM % {"src": _plotly_module()}
    removed = 0
    for model in state.get("state", {}).values():
        st = model.get("state", {})
        esm = st.get("_esm")
        if isinstance(esm, str) and len(esm) > max_code and "_widget_data" in st and "_widget_layout" in st:
            st["_esm"] = code
            removed += len(esm) - len(code)
    return removed


def _plotly_module() -> str:
    """An ES module of the plotly.js the installed plotly draws with (jsDelivr's build of plotly.js-dist-min)."""
    version = "3.0.1"
    try:
        from plotly.offline import get_plotlyjs_version

        version = get_plotlyjs_version()
    except ImportError:  # pragma: no cover - plotly is part of the notebook extra
        pass
    return f"https://cdn.jsdelivr.net/npm/plotly.js-dist-min@{version}/+esm"
