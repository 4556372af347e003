"""What a sandbox is asked to be (:class:`SandboxSpec`), how the pool behaves (:class:`PoolConfig`) and what
one command returned (:class:`ExecResult`)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, SandboxTimeout
from . import backend_registry as registry

__all__ = ["DEFAULT_IMAGE", "ExecResult", "PoolConfig", "SandboxSpec", "from_settings", "parse_size"]

DEFAULT_IMAGE = "nbagent-sandbox:bookworm"

_ISOLATION = ("auto", "bwrap", "none")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: str | int) -> int:
    """Bytes in a Docker-style size (``"512m"``, ``"1g"``, ``"64k"``, or an int of bytes)."""
    if isinstance(value, int):
        if value <= 0:
            raise ConfigError(f"size must be positive, got {value}")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(f"cannot read size {value!r}; use e.g. '512m', '1g' or a number of bytes")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"size must be positive, got {value!r}")
    return size


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxSpec:
    """The shape of a sandbox. Frozen and hashable: the pool keeps one warm list per distinct spec.

    ``backend`` is a registered backend (:func:`~nbagent.sandbox.register_backend`): ``"docker"``,
    ``"local"`` (bubblewrap, or a plain subprocess when bubblewrap is absent), or ``"auto"`` (the first
    available by rank: Docker when the engine answers, else local). ``memory``, ``cpus`` and ``pids`` are
    hard limits; ``network=False`` gives the sandbox no network at all. ``user`` is ``"uid:gid"`` (non-root
    by default). ``timeout`` is the default per-command wall-clock limit in seconds. ``workspace_size``
    bounds what the workspace and ``/tmp`` hold. ``max_output`` caps each of a command's stdout and stderr
    (bytes); ``max_transfer`` caps one file read or write (``get_file``, ``put_file`` and the file tools).
    """

    backend: str = "auto"
    image: str = DEFAULT_IMAGE
    memory: str = "512m"
    cpus: float = 1.0
    pids: int = 128
    network: bool = False
    read_only: bool = False
    user: str = "65534:65534"
    workdir: str = "/workspace"
    timeout: float = 30.0
    workspace_size: str = "256m"
    max_output: int = 1_000_000
    max_transfer: str = "8m"
    env: tuple[tuple[str, str], ...] = ()
    local_isolation: str = "auto"
    python: str = "python3"

    def __post_init__(self) -> None:
        registry.check_name(self.backend)
        if self.local_isolation not in _ISOLATION:
            raise ConfigError(f"local_isolation must be one of {_ISOLATION}, got {self.local_isolation!r}")
        parse_size(self.memory)
        parse_size(self.workspace_size)
        parse_size(self.max_transfer)
        if not self.cpus > 0:
            raise ConfigError(f"cpus must be positive, got {self.cpus}")
        if self.pids < 8:
            raise ConfigError(f"pids must be at least 8, got {self.pids}")
        if not self.timeout > 0:
            raise ConfigError(f"timeout must be positive, got {self.timeout}")
        if self.max_output < 1024:
            raise ConfigError(f"max_output must be at least 1024 bytes, got {self.max_output}")
        if not self.workdir.startswith("/"):
            raise ConfigError(f"workdir must be an absolute path, got {self.workdir!r}")
        uid, _, gid = self.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            raise ConfigError(f"user must be numeric 'uid' or 'uid:gid', got {self.user!r}")

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def max_transfer_bytes(self) -> int:
        return parse_size(self.max_transfer)

    @property
    def workspace_bytes(self) -> int:
        return parse_size(self.workspace_size)

    @property
    def uid(self) -> int:
        return int(self.user.partition(":")[0])

    @property
    def gid(self) -> int:
        uid, _, gid = self.user.partition(":")
        return int(gid or uid)

    def replace(self, **changes: Any) -> SandboxSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """How the warm pool behaves.

    ``min_idle`` sandboxes of the manager's default spec are kept ready; never more than ``max_total``
    exist at once (creating, idle, leased, being checked or destroyed). A lease waits at most
    ``lease_timeout`` seconds. Idle sandboxes beyond ``min_idle`` are destroyed after ``idle_ttl``
    seconds; the reaper looks every ``reap_interval`` seconds. A returned sandbox gets ``check_timeout``
    seconds to be wiped and checked, and is retired after ``max_leases`` leases.
    """

    min_idle: int = 1
    max_total: int = 4
    lease_timeout: float = 60.0
    idle_ttl: float = 300.0
    reap_interval: float = 5.0
    check_timeout: float = 15.0
    max_leases: int | None = 200

    def __post_init__(self) -> None:
        if self.max_total < 1:
            raise ConfigError(f"max_total must be at least 1, got {self.max_total}")
        if not 0 <= self.min_idle <= self.max_total:
            raise ConfigError(f"min_idle must be between 0 and max_total ({self.max_total}), got {self.min_idle}")
        for name in ("lease_timeout", "idle_ttl", "reap_interval", "check_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_leases is not None and self.max_leases < 1:
            raise ConfigError(f"max_leases must be at least 1 or None, got {self.max_leases}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecResult:
    """What one command in a sandbox did.

    ``exit_code`` follows the shell convention (128 + N when killed by signal N) and is None when the
    process could not be waited for. ``oom_killed`` is None when the backend cannot tell.
    ``truncated`` says that stdout or stderr went past the spec's ``max_output`` and was cut.
    """

    stdout: str
    stderr: str
    exit_code: int | None
    duration: float
    timed_out: bool = False
    oom_killed: bool | None = False
    truncated: bool = False
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        """Exited with status 0, in time."""
        return self.exit_code == 0 and not self.timed_out

    @property
    def output(self) -> str:
        """stdout followed by stderr."""
        if self.stdout and self.stderr and not self.stdout.endswith("\n"):
            return self.stdout + "\n" + self.stderr
        return self.stdout + self.stderr

    def raise_for_timeout(self) -> ExecResult:
        """Raise :class:`~nbagent.errors.SandboxTimeout` if the command was killed at its timeout."""
        if self.timed_out:
            raise SandboxTimeout(f"command timed out after {self.timeout:g}s and was killed")
        return self

    def summary(self) -> str:
        """Combined output plus a status line: what a tool hands back to the model."""
        text = self.output
        if text and not text.endswith("\n"):
            text += "\n"
        if self.truncated:
            text += "[output truncated]\n"
        if self.timed_out:
            text += f"[timed out after {self.timeout:g}s; the process tree was killed]"
        elif self.oom_killed:
            text += f"[killed: out of memory; exit code {self.exit_code}]"
        else:
            text += f"[exit code {self.exit_code}]"
        return text


def from_settings(values: dict[str, Any]) -> tuple[SandboxSpec, PoolConfig]:
    """Split the ``[sandbox]`` settings (config file or ``NBAGENT_SANDBOX__<FIELD>``) into a spec and a pool.

    Strings from the environment are converted to each field's type; an unknown key is a ``ConfigError``.
    """
    spec_fields = {f.name: f for f in dataclasses.fields(SandboxSpec)}
    pool_fields = {f.name: f for f in dataclasses.fields(PoolConfig)}
    spec_kw: dict[str, Any] = {}
    pool_kw: dict[str, Any] = {}
    for key, value in values.items():
        if key in spec_fields:
            target, fields = spec_kw, spec_fields
        elif key in pool_fields:
            target, fields = pool_kw, pool_fields
        else:
            known = ", ".join(sorted([*spec_fields, *pool_fields]))
            raise ConfigError(f"[sandbox]: unknown setting {key!r} (known: {known})")
        target[key] = _convert(value, str(fields[key].type), key)
    return SandboxSpec(**spec_kw), PoolConfig(**pool_kw)


def _convert(value: Any, annotation: str, key: str) -> Any:
    if not isinstance(value, str) or annotation.startswith("str"):
        return value
    text = value.strip()
    if "None" in annotation and text.lower() in {"", "none"}:
        return None
    try:
        if annotation.startswith("bool"):
            if text.lower() not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(text)
            return text.lower() in {"1", "true", "yes", "on"}
        if annotation.startswith("int"):
            return int(text)
        if annotation.startswith("float"):
            return float(text)
    except ValueError:
        raise ConfigError(f"[sandbox] {key}: cannot read {value!r} as {annotation}") from None
    return value
