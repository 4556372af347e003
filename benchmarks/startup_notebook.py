"""How fast the notebook layer starts: ``%load_ext nbagent`` and the first ``%%agent`` run.

Figures, each the median (and best) of ``--repeat`` fresh processes:

* ``load_ext (IPython)``: ``%load_ext nbagent`` in a fresh in-process IPython shell, and how many modules it
  imports (what a kernel pays on the cell that loads the extension);
* ``load_ext (kernel)``: the same cell in a real ipykernel, request to reply as a frontend sees it;
* ``first %%agent, right away``: a ``%%agent --wait`` cell (one model call, against the simulated server)
  sent just after the extension loaded: it pays for every import the first run needs;
* ``first %%agent, after idle``: the same cell once the kernel was idle long enough for the extension's idle
  warm-up to import the run widget, the client stack and plotly.

``--tree PATH`` measures another checkout (``PYTHONPATH=PATH``), so a change can be measured before and after:

    python benchmarks/startup_notebook.py                  # this checkout
    python benchmarks/startup_notebook.py --tree ../main   # another one
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import start_new_kernel

from nbagent.testing import SimServer

ROOT = Path(__file__).resolve().parents[1]

LOAD_EXT = """
import json, sys, time
from IPython.testing.globalipapp import start_ipython
ip = start_ipython()
before = len(sys.modules)
t = time.perf_counter()
ip.run_line_magic("load_ext", "nbagent")
print(json.dumps({"seconds": time.perf_counter() - t, "modules": len(sys.modules) - before}))
"""

AGENT_CELL = "%%agent --wait --max-steps 1 -o r\nSay hello."

#: True once the idle warm-up has imported everything (its last step is plotly's widget stack).
WARMED = ("import sys; print(all(m in sys.modules for m in ('nbagent.notebook.widgets', 'nbagent.llm.http', "
          "'plotly.graph_objects')))")


def _env(tree: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NBAGENT_"))}
    env.update(PYTHONPATH=str(tree), JUPYTER_PLATFORM_DIRS="1", PYDEVD_DISABLE_FILE_VALIDATION="1", **extra)
    return env


def load_ext_in_process(tree: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", LOAD_EXT], env=_env(tree), cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _execute(kc: Any, code: str, timeout: float = 120.0) -> tuple[float, str]:
    """Send ``code``; the seconds until its reply and what it printed."""
    printed: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            printed.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            printed.append(f"{msg['content']['ename']}: {msg['content']['evalue']}")

    t = time.perf_counter()
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    seconds = time.perf_counter() - t
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"{code!r} failed: {''.join(printed)}")
    return seconds, "".join(printed)


def in_kernel(tree: Path, url: str, *, idle: bool) -> dict[str, float]:
    """``%load_ext`` then the first ``%%agent`` cell in a fresh kernel (after the warm-up when ``idle``)."""
    with tempfile.TemporaryDirectory() as home:
        env = _env(tree, NBAGENT_BASE_URL=url, NBAGENT_MODEL="sim", NBAGENT_HOME=home)
        km, kc = start_new_kernel(kernel_name="python3", env=env, cwd=str(tree))  # the tree's nbagent
        try:
            _, where = _execute(kc, "import os, nbagent; print(os.path.dirname(os.path.dirname(nbagent.__file__)))")
            if Path(where.strip()) != tree:
                raise RuntimeError(f"the kernel imported nbagent from {where.strip()}, not {tree}")
            load, _ = _execute(kc, "%load_ext nbagent")
            waited = 0.0
            if idle:
                t = time.perf_counter()
                while _execute(kc, WARMED)[1].strip() != "True":
                    time.sleep(0.2)  # bounded by the warm-up's three steps (each retried while runs are active)
                    if time.perf_counter() - t > 120:
                        raise RuntimeError("the idle warm-up did not finish in 120 s")
                waited = time.perf_counter() - t
            first, _ = _execute(kc, AGENT_CELL)
            return {"load_ext": load, "first_run": first, "warm_up_wait": waited}
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} ms (best {min(values) * 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tree = args.tree.resolve()

    local = [load_ext_in_process(tree) for _ in range(args.repeat)]
    kernel: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with SimServer(latency=0.0, tool_calls_per_run=0) as sim:
        for _ in range(args.repeat):
            for idle in (False, True):
                kernel[idle].append(in_kernel(tree, sim.url, idle=idle))
    print(f"tree: {tree}")
    print(f"load_ext (IPython)            {_fmt([r['seconds'] for r in local])}, "
          f"{statistics.median(r['modules'] for r in local):.0f} modules imported")
    print(f"load_ext (kernel)             {_fmt([r['load_ext'] for r in kernel[False] + kernel[True]])}")
    print(f"first %%agent, right away     {_fmt([r['first_run'] for r in kernel[False]])}")
    print(f"first %%agent, after idle     {_fmt([r['first_run'] for r in kernel[True]])} "
          f"(warm-up done {statistics.median(r['warm_up_wait'] for r in kernel[True]):.1f} s after load_ext)")


if __name__ == "__main__":
    main()
