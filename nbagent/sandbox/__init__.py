"""Sandboxes: code that agents run never runs in the notebook kernel.

>>> manager = SandboxManager(SandboxSpec(backend="docker"), PoolConfig(min_idle=1, max_total=4))
>>> async with manager.lease() as sb:                                          # doctest: +SKIP
...     result = await sb.exec("print(6 * 7)", lang="python", timeout=10)

Backends: Docker (:mod:`nbagent.sandbox.docker`) and local (:mod:`nbagent.sandbox.local`: bubblewrap,
or a plain subprocess reported as not isolated), each one module that registers itself; add one with
:func:`register_backend` (:mod:`nbagent.sandbox.backend_registry`). Agent tools: :func:`sandbox_tools`.
"""

from __future__ import annotations

from . import metrics as _metrics  # noqa: F401 - registers the package's metrics
from .backend import ExecOutput, Isolation, SandboxBackend, SandboxDriver, SandboxLabels, SandboxRecord
from .backend_registry import backends, register_backend, unregister_backend
from .docker import DockerBackend
from .events import (
    SandboxChecked,
    SandboxCreated,
    SandboxDestroyed,
    SandboxExec,
    SandboxLeased,
    SandboxLeaseTimedOut,
    SandboxReleased,
)
from .files import TransferLimitExceeded
from .local import LocalBackend, SandboxNotIsolatedWarning
from .manager import SandboxManager, default_manager
from .sandbox import Sandbox
from .spec import DEFAULT_IMAGE, ExecResult, PoolConfig, SandboxSpec
from .stats import SandboxStats

__all__ = [
    "DEFAULT_IMAGE",
    "DockerBackend",
    "ExecOutput",
    "ExecResult",
    "Isolation",
    "LocalBackend",
    "PoolConfig",
    "Sandbox",
    "SandboxBackend",
    "SandboxChecked",
    "SandboxCreated",
    "SandboxDestroyed",
    "SandboxDriver",
    "SandboxExec",
    "SandboxLabels",
    "SandboxLeaseTimedOut",
    "SandboxLeased",
    "SandboxManager",
    "SandboxNotIsolatedWarning",
    "SandboxRecord",
    "SandboxReleased",
    "SandboxSpec",
    "SandboxStats",
    "TransferLimitExceeded",
    "backends",
    "default_manager",
    "register_backend",
    "sandbox_tools",
    "unregister_backend",
]


def __getattr__(name: str) -> object:
    # the tools need the agent package; import them only when asked for
    if name == "sandbox_tools":
        from .tools import sandbox_tools

        return sandbox_tools
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
