"""A real ipykernel driven by nbclient one cell at a time, for tests."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient
from nbclient.util import run_sync
from nbformat import NotebookNode

ROOT = Path(__file__).resolve().parents[2]
KERNEL_NAME = "python3"


def kernel_env(base_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The test process's environment for a kernel: nbagent importable, pointed at ``base_url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NBAGENT_"))}
    path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in path)),
               NBAGENT_BASE_URL=base_url, NBAGENT_MODEL="sim", NBAGENT_HOME=str(home), JUPYTER_PLATFORM_DIRS="1",
               PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.update(extra)
    return env


class KernelNotebook:
    """A notebook whose cells are appended and executed one by one in a real kernel (nbclient)."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": KERNEL_NAME, "display_name": "Python 3",
                                                                    "language": "python"}})
        self.client = NotebookClient(self.nb, kernel_name=KERNEL_NAME, timeout=120, startup_timeout=120,
                                     resources={"metadata": {"path": str(workdir)}}, record_timing=True)
        self._cm = self.client.setup_kernel(env=env)
        self._cm.__enter__()
        self._subshell: str | None = None

    def run(self, source: str, *, raises: bool = False) -> NotebookNode:
        """Append a code cell and execute it; returns the cell (its outputs keep updating by display id).

        ``raises``: the cell is expected to fail (tagged ``raises-exception``).
        """
        cell = nbformat.v4.new_code_cell(source)
        if raises:
            cell.metadata["tags"] = ["raises-exception"]
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return cell

    def close(self) -> None:
        self._cm.__exit__(None, None, None)

    # --- reading outputs ----------------------------------------------------------------------------

    def widget_state(self) -> dict[str, Any]:
        return dict(self.client.widget_state)

    def click(self, model_id: str) -> None:
        """Send what JupyterLab sends when a button is clicked."""
        self._comm_msg(model_id, {"method": "custom", "content": {"event": "click"}})

    def update(self, model_id: str, **state: Any) -> None:
        """Send what JupyterLab sends when the user changes a widget's value (a toggle, a typed number)."""
        self._comm_msg(model_id, {"method": "update", "state": state, "buffer_paths": []})

    def _comm_msg(self, model_id: str, data: dict[str, Any]) -> None:
        """A widget message as JupyterLab (4.4+) sends it to a kernel with subshells (ipykernel 7): on a subshell,
        whose handlers run on a thread of their own, not the kernel's main thread and loop."""
        kc = self.client.kc
        assert kc is not None
        msg = kc.session.msg("comm_msg", {"comm_id": model_id, "data": data})
        if self._subshell is None:
            request = kc.session.msg("create_subshell_request", {})
            kc.control_channel.send(request)
            while True:
                reply = run_sync(kc.control_channel.get_msg)(timeout=30)
                if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                    break
            self._subshell = reply["content"]["subshell_id"]
        msg["header"]["subshell_id"] = self._subshell
        kc.shell_channel.send(msg)

    def stop_button_of(self, cell: NotebookNode) -> str:
        """The model id of the Stop button of the run widget shown in ``cell``."""
        button = self.widget_in(cell, "nbagent-stop")
        state = self.widget_state()[button]
        assert state["description"] in ("Stop", "Stopping"), state
        return button

    def widget_in(self, cell: NotebookNode, css_class: str) -> str:
        """The model id of the widget with ``css_class`` in the widget tree shown in ``cell``."""
        state = self.widget_state()
        view = next(o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {}))
        stack = [view["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]]
        while stack:
            model_id = stack.pop()
            model = state[model_id]
            if css_class in model.get("_dom_classes", ()):
                return model_id
            stack.extend(_ref(child) for child in model.get("children", ()))
        raise AssertionError(f"no widget with class {css_class} in the cell")

    def save(self, path: Path) -> Path:
        """Write the notebook as ``nbclient`` does at the end of an execution (widget state included)."""
        self.client.set_widgets_metadata()
        nbformat.write(self.nb, str(path))
        return path


def _ref(value: str) -> str:
    return value.removeprefix("IPY_MODEL_")


def text_of(cell: NotebookNode) -> str:
    """The stdout/stderr text and any error of a cell."""
    parts = []
    for o in cell.outputs:
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type == "error":
            parts.append(f"{o.ename}: {o.evalue}")
    return "".join(parts)


def summaries(cell: NotebookNode) -> list[dict[str, str]]:
    """The static run summaries in a cell's outputs, as their ``data-*`` attributes."""
    out = []
    for o in cell.outputs:
        page = o.get("data", {}).get("text/html", "")
        for m in re.finditer(r'<div class="nbagent-summary"([^>]*)>', page):
            out.append(dict(re.findall(r'data-([a-z-]+)="([^"]*)"', m.group(1))))
    return out


def dump(cell: NotebookNode) -> str:
    """A cell's outputs, for assertion messages."""
    return json.dumps(cell.outputs, default=str)[:3000]

