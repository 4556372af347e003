"""The disk of a local sandbox: one size-limited tmpfs holding its workspace and its ``/tmp``.

When this process may mount file systems (root, or ``CAP_SYS_ADMIN``), each local sandbox gets a tmpfs of
``workspace_size`` at ``<home>/disk`` with ``workspace/`` and ``tmp/`` in it, so everything a sandbox can
write is bounded in total. Otherwise ``<home>/disk`` is a plain directory: each file is bounded
(``RLIMIT_FSIZE``) but the total is not, and :attr:`LocalSandbox.isolation` says so.

Blocking: call these from a worker thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

__all__ = ["mount_disk", "unmount_disk"]

_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def mount_disk(path: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``path`` (an existing empty directory); None when done, else why
    it could not be (the sandbox then has no bound on its total size)."""
    if _LIBC is None:
        return "no C library to call mount(2) with"
    if os.geteuid() != 0:
        return "mounting a size-limited tmpfs needs root"
    options = f"size={size},mode=0711".encode()
    if _LIBC.mount(b"nbagent-sandbox", os.fsencode(path), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        err = ctypes.get_errno()
        return f"mount(2) of a tmpfs failed: {os.strerror(err)}"
    return None


def unmount_disk(path: Path) -> None:
    """Detach a disk mounted by :func:`mount_disk` (nothing when ``path`` is not a mount point)."""
    if _LIBC is None or not os.path.ismount(path):
        return
    if _LIBC.umount2(os.fsencode(path), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, f"cannot unmount the sandbox disk: {os.strerror(err)}", str(path))
