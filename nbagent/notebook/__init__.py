"""The notebook layer: the only package that imports IPython, ipywidgets or plotly.

``%load_ext nbagent`` calls :func:`load_ipython_extension`, which registers the ``%%agent`` and ``%agent``
magics (configurable with ``%config AgentMagics``). :func:`nbagent.notebook.dashboard.dashboard` (also
``nbagent.dashboard``) is the live dashboard of every run in the kernel.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["load_ipython_extension", "register", "unload_ipython_extension", "unregister", "warm_up_client",
           "warm_up_magics"]

_ATTR = "_nbagent_magics"  # the magics registered on a shell are kept on the shell itself


def register(ipython: Any, registry: Any = None) -> Any:
    """Register the magics on ``ipython`` (with ``registry``, default the kernel's); returns them.

    They become configurable with ``%config AgentMagics`` and publish the summaries of runs that ended
    before each cell.
    """
    from .magics import AgentMagics

    unregister(ipython)
    magics = AgentMagics(ipython, registry=registry)
    ipython.register_magics(magics)  # a Magics instance adds itself to ipython.configurables (%config)
    ipython.events.register("pre_run_cell", magics.pre_run_cell)
    setattr(ipython, _ATTR, magics)
    return magics


def unregister(ipython: Any) -> None:
    """Undo :func:`register` (the runs and the registry are left alone)."""
    magics = getattr(ipython, _ATTR, None)
    if magics is None:
        return
    delattr(ipython, _ATTR)
    try:
        ipython.events.unregister("pre_run_cell", magics.pre_run_cell)
    except ValueError:
        pass
    while magics in ipython.configurables:
        ipython.configurables.remove(magics)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext nbagent``: a runtime for the kernel and the magics on it (loading twice is a no-op).

    The kernel's runtime becomes the default one (:func:`nbagent.runtime`); it keeps every run in the run store
    (``NBAGENT_STORE=off``: not kept) and is closed when the extension is unloaded or the kernel shuts down.
    """
    if getattr(ipython, _ATTR, None) is None:
        import atexit

        from ..runtime import Runtime, set_runtime

        rt = Runtime()
        old = set_runtime(rt)
        if old is not None and not old.closed:
            old.close()
        magics = register(ipython)
        rt.enable_store()
        atexit.register(_close_at_exit, rt)
        _warm_up_when_idle(magics)


def _close_at_exit(rt: Any) -> None:
    """Kernel shutdown: close the kernel's runtime (flush the store, stop sandboxes and servers)."""
    if not rt.closed:
        try:
            asyncio.run(rt.aclose())
        except Exception:  # noqa: BLE001 - at exit, a part that fails to close must not hide the others
            pass


def warm_up_client() -> None:
    """Import what the first run needs (the HTTP stack, the tokenizer) so that it does not pay for it.

    ``import nbagent`` and ``%load_ext nbagent`` import none of it; a run imports what it lacks itself.
    """
    from ..llm.http import import_http_stack
    from ..llm.tokens import encoding

    encoding()  # tiktoken and its BPE file
    import_http_stack()


def warm_up_magics(magics: Any) -> None:
    """Import what the first ``%%agent`` cell needs beyond the client: the runs' registry (made here), the cell's
    agent factory, and the run widget with ipywidgets."""
    from . import spec, static, tables, widgets  # noqa: F401

    magics.registry  # noqa: B018 - made on first use


def _warm_up_when_idle(magics: Any, delay: float = 0.5) -> None:
    """Import what ``%load_ext`` left out (the runs' registry and the run widget, the client stack, then plotly's
    widget stack), on the loop while no run is active (retrying until then).

    ``%load_ext nbagent`` itself imports only what registering the magics needs; each first import takes from
    a fraction of a second to seconds (plotly pulls in nbformat and jsonschema); done later, in the first run
    or when a dashboard is opened during runs, it would slow them. It is not done in a thread: a CPU-bound
    thread makes the loop thread wait for the GIL after every ``select()`` and every import lock, which slows
    all runs far more than one short pause while nothing runs. The steps are separate callbacks, so a cell the
    user runs meanwhile waits for one step at most.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    def dashboard() -> None:
        from .dashboard import warm_up

        warm_up()

    steps = [lambda: warm_up_magics(magics), warm_up_client, dashboard]

    def attempt() -> None:
        registry = magics.registry_if_started()
        if registry is not None and registry.active():
            loop.call_later(2.0, attempt)
            return
        try:
            steps.pop(0)()
        except Exception:  # noqa: BLE001 - only a head start; what is needed later imports itself
            pass
        if steps:
            loop.call_later(0.05, attempt)

    loop.call_later(delay, attempt)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext nbagent``: cancel the runs, stop the views and forget the magics."""
    from .magics import shutdown

    unregister(ipython)
    shutdown()
