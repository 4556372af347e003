"""Which handlers turn an event into metric updates: :class:`HandlerTable`, the shared
:data:`DEFAULT_HANDLERS`, and :func:`register_handler`.

A handler is a plain function ``handler(registry, event) -> None`` that updates metrics through
``registry.counter(name)``, ``registry.gauge(name)`` and ``registry.histogram(name)``. A handler registered for
a base class also sees the events of its subclasses (a handler for :class:`~nbagent.events.Event` sees
everything). Tables chain: a registry's own table has the default table as its parent.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from nbagent.events import Event

if TYPE_CHECKING:  # pragma: no cover
    from nbagent.metrics.registry import MetricsRegistry

__all__ = ["DEFAULT_HANDLERS", "Handler", "HandlerTable", "register_handler"]

Handler = Callable[["MetricsRegistry", Event], None]
"""``handler(registry, event)``: updates ``registry``'s metrics from one event."""


def _chain(handlers: tuple[Handler, ...]) -> Handler:
    def run_all(registry: MetricsRegistry, event: Event) -> None:
        for h in handlers:
            h(registry, event)

    return run_all


class HandlerTable:
    """Event type -> handlers, with an optional parent whose handlers also apply.

    ``dispatch`` caches the resolved handler (or None) per concrete event type, so looking one up costs one
    dict access; registering or unregistering anywhere up the chain clears the caches below.
    """

    def __init__(self, parent: HandlerTable | None = None) -> None:
        self.parent = parent
        self._explicit: dict[type[Event], tuple[Handler, ...]] = {}
        self.dispatch: dict[type[Event], Handler | None] = {}
        self._children: weakref.WeakSet[HandlerTable] = weakref.WeakSet()
        if parent is not None:
            parent._children.add(self)

    def register(self, event_type: type[Event], handler: Handler) -> Callable[[], None]:
        """Run ``handler(registry, event)`` for every ``event_type`` event (subclasses included).

        Returns a function that removes this handler again.
        """
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"event_type must be an Event subclass, got {event_type!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        self._explicit[event_type] = (*self._explicit.get(event_type, ()), handler)
        self._invalidate()

        def unregister() -> None:
            self.unregister(event_type, handler)

        return unregister

    def unregister(self, event_type: type[Event], handler: Handler) -> None:
        """Remove one registration of ``handler`` for ``event_type`` (no error if absent)."""
        handlers = list(self._explicit.get(event_type, ()))
        for i, h in enumerate(handlers):
            if h is handler:
                del handlers[i]
                break
        else:
            return
        if handlers:
            self._explicit[event_type] = tuple(handlers)
        else:
            del self._explicit[event_type]
        self._invalidate()

    def handlers_for(self, event_type: type[Event]) -> tuple[Handler, ...]:
        """Every handler that applies to ``event_type``: most specific class first, parents' before ours."""
        chain: list[HandlerTable] = []
        table: HandlerTable | None = self
        while table is not None:
            chain.append(table)
            table = table.parent
        chain.reverse()
        out: list[Handler] = []
        for cls in event_type.__mro__:
            for t in chain:
                out.extend(t._explicit.get(cls, ()))
        return tuple(out)

    def resolve(self, event_type: type[Event]) -> Handler | None:
        """The single callable to run for ``event_type`` (None when nothing applies), cached in ``dispatch``."""
        handlers = self.handlers_for(event_type)
        handler = None if not handlers else handlers[0] if len(handlers) == 1 else _chain(handlers)
        self.dispatch[event_type] = handler
        return handler

    def _invalidate(self) -> None:
        self.dispatch.clear()
        for child in list(self._children):
            child._invalidate()


DEFAULT_HANDLERS = HandlerTable()
"""The built-in event -> metric mapping, shared by every registry."""


def register_handler(event_type: type[Event], handler: Handler) -> Callable[[], None]:
    """Add an event -> metric mapping to every registry (present and future). Returns an unregister function.

    For example, a sandbox manager could count leases with::

        register_handler(SandboxLeased, lambda reg, e: reg.counter("sandbox.leases").inc())
    """
    return DEFAULT_HANDLERS.register(event_type, handler)
