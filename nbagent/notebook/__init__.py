"""The notebook layer: the only package that imports IPython, ipywidgets or plotly.

``%load_ext nbagent`` calls :func:`load_ipython_extension`, which registers the ``%%agent`` and
``%agent`` magics.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_ipython_extension", "unload_ipython_extension"]


def load_ipython_extension(ipython: Any) -> None:
    magics = importlib.import_module(".magics", __package__)
    ipython.register_magics(magics.AgentMagics(ipython))


def unload_ipython_extension(ipython: Any) -> None:
    magics = importlib.import_module(".magics", __package__)
    magics.shutdown()
