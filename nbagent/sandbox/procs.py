"""Host-side process and file helpers for the sandbox backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["feed", "file_error", "in_thread", "kill_marked", "processes_of", "read_capped", "rmtree"]

T = TypeVar("T")


async def in_thread(fn: Callable[[], T], *, executor: Executor | None = None) -> T:
    """Run blocking ``fn`` in ``executor`` (default: the loop's), or in a thread of its own when executors
    refuse work (at interpreter exit, when the manager's exit hook removes what is left)."""
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(executor, fn)
    except RuntimeError as e:
        if "shutdown" not in str(e):  # "cannot schedule new futures after (interpreter) shutdown"
            raise
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)  # type: ignore[arg-type]

    def target() -> None:
        try:
            value = fn()
        except BaseException as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, value, None)

    threading.Thread(target=target, name="nbagent-sandbox-exit", daemon=True).start()
    return await fut


def processes_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                count += entry.stat().st_uid == uid
    return count


def kill_marked(marker: str) -> str:
    """SIGKILL every process whose environment holds ``marker`` (``NAME=value``); return the pids that
    survive, space-separated. Blocking: call it from a worker thread."""
    needle = marker.encode()
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    except OSError:
        return ""
    hits = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    os.kill(pid, signal.SIGKILL)
                    hits.append(pid)
        except OSError:
            continue
    deadline = time.monotonic() + 2
    alive = hits
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.01)
    return " ".join(map(str, alive))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
        return state not in (b"Z", b"X")  # a zombie is dead, only not yet reaped
    except OSError:
        return False


def rmtree(path: Path) -> None:
    """Remove a tree (never following symlinks), making directories writable where needed."""

    def unlock(func: Any, target: str, _exc: Any) -> None:
        os.chmod(os.path.dirname(target), 0o700)
        func(target)

    if not path.exists() and not path.is_symlink():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=unlock)
    else:
        shutil.rmtree(path, onerror=unlock)


async def read_capped(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, bool]:
    buf = bytearray()
    cut = False
    while chunk := await stream.read(1 << 16):
        room = limit - len(buf)
        if room > 0:
            buf += chunk[:room]
        if len(chunk) > room:
            cut = True
    return bytes(buf), cut


async def feed(pipe: asyncio.StreamWriter | None, data: bytes) -> None:
    if pipe is None:
        return
    try:
        pipe.write(data)
        await pipe.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command exited without reading it all
    finally:
        pipe.close()


def file_error(path: str, stderr: str, exit_code: int | None, timed_out: bool) -> OSError:
    """The OSError for a failed file transfer, from what ``cat`` / ``mkdir`` said."""
    message = stderr.strip() or f"exit code {exit_code}"
    if timed_out:
        return OSError(f"{path}: transfer timed out")
    if "No such file" in message:
        return FileNotFoundError(2, message, path)
    if "Is a directory" in message:
        return IsADirectoryError(21, message, path)
    if "Permission denied" in message:
        return PermissionError(13, message, path)
    return OSError(message)
