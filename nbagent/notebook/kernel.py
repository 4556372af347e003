"""Small bridges to the kernel: parent headers, blocking inside the running loop, updating displays.

Output routing: ipykernel tags every message with a *parent header*, the request that caused it; the
frontend puts a message's output in the cell of that request. A run outlives the cell that started it, so
its output is sent with the header captured when the cell ran (:func:`current_parent`, :func:`as_parent`).

Blocking: a synchronous call that must wait for a coroutine inside the kernel's running loop (``--wait``,
``Agent.run_sync`` in a notebook) re-enters the loop with ``nest-asyncio2`` (:func:`block_on`). The patch is
applied on first use only, so notebooks that never block keep asyncio's C tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from IPython.display import DisplayHandle

__all__ = ["as_parent", "block_on", "current_parent", "kernel_shell", "running_loop", "update_display"]

T = TypeVar("T")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The running event loop of this thread (the kernel's), or None outside one."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def kernel_shell() -> Any:
    """The IPython shell when this runs in a notebook kernel (whose frontend can draw displays and widgets), else
    None (plain IPython, a script)."""
    from IPython import get_ipython

    shell = get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None


def current_parent(shell: Any) -> dict[str, Any] | None:
    """The parent header of the request being executed (None outside a kernel)."""
    header = getattr(shell, "parent_header", None)
    return dict(header) if isinstance(header, dict) and header else None


@contextlib.contextmanager
def as_parent(shell: Any, parent: dict[str, Any] | None) -> Iterator[None]:
    """Send the output made inside the block with ``parent`` as its parent header."""
    if shell is None or not parent:
        yield
        return
    set_thread = getattr(shell, "set_thread_parent", None)
    if set_thread is not None:  # ipykernel >= 7: per-context parents
        tokens = set_thread(parent)
        try:
            yield
        finally:
            shell.reset_thread_parent(tokens)
        return
    set_parent = getattr(shell, "set_parent", None)
    if set_parent is None:
        yield
        return
    old = getattr(shell, "parent_header", None)
    set_parent(parent)
    try:
        yield
    finally:
        if old:
            set_parent(old)


def update_display(handle: DisplayHandle | None, bundle: dict[str, Any], *, shell: Any = None,
                   parent: dict[str, Any] | None = None) -> None:
    """Replace what ``handle`` shows with ``bundle`` (a mime bundle), sent with ``parent`` as its parent.

    In a kernel the message goes straight to IOPub: the display publisher would first flush stdout and
    stderr, a round trip to the kernel's IO thread that waits behind every queued widget message, which
    under load stalls the event loop. A static rendering needs no ordering with printed text.
    """
    if handle is None:
        return
    pub = getattr(shell, "display_pub", None)
    session, socket = getattr(pub, "session", None), getattr(pub, "pub_socket", None)
    if session is None or socket is None or getattr(pub, "_hooks", None):  # an Output widget is capturing
        with as_parent(shell, parent):
            handle.update(bundle, raw=True)
        return
    content = {"data": bundle, "metadata": {}, "transient": {"display_id": handle.display_id}}
    msg = session.msg("update_display_data", content, parent=parent or getattr(pub, "parent_header", None) or {})
    session.send(socket, msg, ident=getattr(pub, "topic", None))


def block_on(awaitable: Awaitable[T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Wait for ``awaitable`` from synchronous code, even inside the running loop.

    Inside a running loop (a kernel) this re-enters it with ``nest-asyncio2``: the other tasks on the loop
    (other runs, widget refreshes) keep running while the caller waits. Outside one, it runs ``loop`` (or a
    new loop) until the awaitable is done.
    """
    running = running_loop()
    if running is None:
        own = loop if loop is not None else asyncio.new_event_loop()
        try:
            return own.run_until_complete(awaitable)
        finally:
            if loop is None:
                own.close()
    from ..reenter import wait_in_running_loop

    return wait_in_running_loop(running, awaitable, what="waiting for a run", instead="`await`")
