"""A fresh virtualenv built only from the binder/ files runs the quickstart notebook.

This is what mybinder.org does with repo2docker: install binder/requirements.txt from the repository root,
run binder/postBuild, then open notebooks/quickstart.ipynb. (apt.txt's compiler is on this machine.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbagent import local_model

ROOT = Path(__file__).resolve().parents[2]


def test_binder_environment_runs_quickstart(tmp_path: Path) -> None:
    if not local_model.available() and os.environ.get("NBAGENT_REQUIRE_LOCAL_MODEL") != "1":
        pytest.skip("the binder environment builds the embedded model (llama.cpp); not set up here")
    venv = tmp_path / "binder-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NBAGENT_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '')}", JUPYTER_PATH=str(venv / "share" / "jupyter"),
               NBAGENT_HOME=str(tmp_path / "home"))
    pip = subprocess.run([py, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r",
                          "binder/requirements.txt"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert pip.returncode == 0, pip.stderr[-3000:]
    post = subprocess.run(["bash", "binder/postBuild"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert post.returncode == 0, post.stdout[-2000:] + post.stderr[-2000:]
    assert "embedded model weights:" in post.stdout
    out = tmp_path / "out"
    code = (
        "import sys, nbagent\n"
        f"assert nbagent.__file__.startswith({str(venv)!r}), nbagent.__file__\n"
        "from nbagent.execute import execute_notebook\n"
        f"r = execute_notebook({str(ROOT / 'notebooks' / 'quickstart.ipynb')!r}, {str(out)!r}, progress=False)\n"
        "print(r.errors)\n"
        "sys.exit(1 if r.errors else 0)\n"
    )
    run = subprocess.run([py, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert (out / "quickstart.html").stat().st_size > 10_000
