"""The Docker exec stream: reading the multiplexed output, feeding stdin, cutting a stuck connection."""

from __future__ import annotations

import asyncio
import io
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ExecStream", "RawOutput", "consume", "read_frames", "send_stdin"]


@dataclass
class ExecStream:
    """One exec's connection, shared between the reading thread and the event loop (to cut it)."""

    sock: Any = None
    cut: bool = False
    started_at: float | None = None  # monotonic time the engine started the command
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self, sock: Any) -> bool:
        with self.lock:
            self.sock = sock
            return not self.cut

    def close(self) -> None:
        with self.lock:
            self.cut = True
            raw = getattr(self.sock, "_sock", self.sock)
            if raw is not None:
                try:
                    raw.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@dataclass
class RawOutput:
    """One command's captured output (each stream capped) and exit code (None: unknown)."""

    stdout: bytes
    stderr: bytes
    truncated: bool
    exit_code: int | None


def consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def send_stdin(sock: Any, data: bytes) -> None:
    try:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the command sees end-of-file
    except OSError:
        pass  # the command exited without reading it all


def read_frames(sock: Any, limit: int) -> tuple[bytes, bytes, bool]:
    """Read Docker's multiplexed stream (8-byte headers: stream, 0, 0, 0, big-endian length) to the end,
    keeping at most ``limit`` bytes of each of stdout and stderr."""
    reader = io.BufferedReader(sock, 1 << 16)
    out = [bytearray(), bytearray()]
    truncated = False
    try:
        while True:
            header = reader.read(8)
            if len(header) < 8:
                break
            kind, size = struct.unpack(">BxxxL", header)
            buf = out[1] if kind == 2 else out[0]
            while size > 0:  # a frame is read in pieces: what is past the limit is never held
                data = reader.read(min(size, 1 << 16))
                if not data:
                    return bytes(out[0]), bytes(out[1]), truncated
                size -= len(data)
                room = limit - len(buf)
                if room > 0:
                    buf += data[:room]
                if len(data) > room:
                    truncated = True
    except (OSError, ValueError):
        pass  # the stream was cut
    return bytes(out[0]), bytes(out[1]), truncated
