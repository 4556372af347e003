"""File transfers, the same on every backend: two commands run through the driver's ``exec``, capped.

A read runs ``head -c LIMIT+1`` in the sandbox, so the sandbox stops producing bytes one past the cap and
the host never holds more than that (``/dev/zero`` or a huge file cost at most the cap, not the host's
memory). A write refuses data over the cap before sending anything.
"""

from __future__ import annotations

import errno

from .backend import SandboxDriver
from .procs import file_error

__all__ = ["PUT_SCRIPT", "TransferLimitExceeded", "get_argv", "get_file", "put_argv", "put_file", "sandbox_path"]

PUT_SCRIPT = 'mkdir -p -- "$(dirname -- "$1")" && cat > "$1"'


class TransferLimitExceeded(OSError):
    """A file is larger than the transfer limit (``SandboxSpec.max_transfer``, or the call's ``max_bytes``)."""

    def __init__(self, path: str, limit: int, action: str) -> None:
        super().__init__(errno.EFBIG, f"{action} stopped at the transfer limit of {_size(limit)} "
                                      "(SandboxSpec.max_transfer)", path)
        self.limit = limit


def _size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def sandbox_path(workdir: str, path: str) -> str:
    """``path`` inside the sandbox: relative paths are in the workspace."""
    return path if path.startswith("/") else f"{workdir.rstrip('/')}/{path}"


def put_argv(target: str) -> list[str]:
    return ["/bin/sh", "-c", PUT_SCRIPT, "sh", target]


def get_argv(target: str, limit: int) -> list[str]:
    return ["head", "-c", str(limit + 1), "--", target]


async def put_file(driver: SandboxDriver, path: str, data: bytes, *, limit: int, timeout: float) -> None:
    """Write ``data`` to ``path`` (parents created); over ``limit`` bytes raises :class:`TransferLimitExceeded`."""
    target = sandbox_path(driver.workdir, path)
    if len(data) > limit:
        raise TransferLimitExceeded(target, limit, f"writing {len(data)} bytes")
    out = await driver.exec(put_argv(target), stdin=data, timeout=timeout, limit=65536)
    if out.timed_out or out.exit_code != 0:
        raise file_error(target, out.stderr.decode(errors="replace"), out.exit_code, out.timed_out)


async def get_file(driver: SandboxDriver, path: str, *, limit: int, timeout: float, truncate: bool = False) -> bytes:
    """Read ``path``, streaming at most ``limit`` + 1 bytes out of the sandbox. A longer file raises
    :class:`TransferLimitExceeded`, or with ``truncate`` returns its first ``limit`` bytes."""
    target = sandbox_path(driver.workdir, path)
    out = await driver.exec(get_argv(target, limit), stdin=None, timeout=timeout, limit=limit + 1)
    if out.timed_out or out.exit_code != 0:
        raise file_error(target, out.stderr.decode(errors="replace"), out.exit_code, out.timed_out)
    if len(out.stdout) > limit:
        if not truncate:
            raise TransferLimitExceeded(target, limit, "reading")
        return out.stdout[:limit]
    return out.stdout
