"""The sandbox package's own metrics: registered here, by the package that defines the events.

==================  ========================  ==========  ==========
Event               Metric                    Type        Unit
==================  ========================  ==========  ==========
SandboxLeased       ``sandbox.lease_wait``    histogram   s
SandboxExec         ``sandbox.exec``          histogram   s
                    ``sandbox.execs``         counter     execs
                    ``sandbox.exec_errors``   counter     execs
SandboxLeaseTimed…  ``sandbox.lease_timeouts``  counter   leases
SandboxCreated      ``sandbox.create``        histogram   s (successful creations)
                    ``sandbox.create_failures``  counter  sandboxes
==================  ========================  ==========  ==========
"""

from __future__ import annotations

from typing import Any

from ..metrics.registry import MetricsRegistry, register_handler
from .events import SandboxCreated, SandboxExec, SandboxLeased, SandboxLeaseTimedOut

__all__: list[str] = []


def _on_leased(reg: MetricsRegistry, e: Any) -> None:
    reg.histogram("sandbox.lease_wait", unit="s").record(e.wait)


def _on_exec(reg: MetricsRegistry, e: Any) -> None:
    reg.histogram("sandbox.exec", unit="s").record(e.seconds)
    reg.counter("sandbox.execs", unit="execs").value += 1
    if not e.ok or e.timed_out:
        reg.counter("sandbox.exec_errors", unit="execs").value += 1


def _on_lease_timeout(reg: MetricsRegistry, e: Any) -> None:
    reg.counter("sandbox.lease_timeouts", unit="leases").value += 1


def _on_created(reg: MetricsRegistry, e: Any) -> None:
    if e.ok:
        reg.histogram("sandbox.create", unit="s").record(e.seconds)
    else:
        reg.counter("sandbox.create_failures", unit="sandboxes").value += 1


register_handler(SandboxCreated, _on_created)
register_handler(SandboxLeased, _on_leased)
register_handler(SandboxExec, _on_exec)
register_handler(SandboxLeaseTimedOut, _on_lease_timeout)
