"""Handle on a simulated chat server running in a subprocess (``python -m nbagent.testing``)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .behavior import Reply
from .config import SimConfig
from .faults import Fault
from .server import format_base_url

_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _read_line(stream: IO[str], timeout: float) -> str | None:
    """Read one line from ``stream`` within ``timeout`` seconds; None on timeout."""
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return out[0] if out else None


class SpawnedSimServer:
    """A simulated chat server running in a child process, controlled over HTTP.

    Made by :meth:`nbagent.testing.SimServer.spawn`. The server's CPU time is not spent in the calling process,
    which is what benchmarks want. The child exits when :meth:`stop` is called or when this process exits
    (it watches its standard input).
    """

    def __init__(self, process: subprocess.Popen[str], host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port

    @classmethod
    def start_process(
        cls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 30.0,
        python: str | None = None,
        uvloop: bool = False,
        **settings: Any,
    ) -> SpawnedSimServer:
        """Start ``python -m nbagent.testing`` with ``settings`` and wait until it listens.

        ``uvloop=True`` serves on uvloop's event loop (the ``uvloop`` package must be installed): the server then
        takes about a quarter less CPU per request, which matters when it shares the machine with the client
        being measured.
        """
        if "behavior" in settings:
            raise TypeError("a custom behavior is only supported by the in-process SimServer")
        config = SimConfig().updated(**settings)  # validates names and values before spawning
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PROJECT_ROOT, env.get("PYTHONPATH")) if p)
        cmd = [
            python or sys.executable,
            "-m",
            "nbagent.testing",
            "--host",
            host,
            "--port",
            str(port),
            "--config-json",
            json.dumps(config.to_dict()),
            "--watch-stdin",
            "--quiet",
            *(["--uvloop"] if uvloop else []),
        ]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
        assert proc.stdout is not None
        line = _read_line(proc.stdout, startup_timeout)
        try:
            bound = int((line or "").strip())
        except ValueError:
            bound = 0
        if bound <= 0:
            proc.kill()
            proc.wait()
            why = "timed out" if line is None else f"printed {line!r}, exit code {proc.returncode}"
            raise RuntimeError(f"the simulated server subprocess failed to start ({why})")
        return cls(proc, host, bound)

    # ----------------------------------------------------------------- lifecycle

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the child and wait for it (killing it after ``timeout`` seconds). Idempotent."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self.process.poll() is None

    def __enter__(self) -> SpawnedSimServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SpawnedSimServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ----------------------------------------------------------------- control over HTTP

    @property
    def url(self) -> str:
        """The OpenAI ``base_url``: ``http://<host>:<port>/v1``."""
        return format_base_url(self.host, self.port)

    def _control(self, method: str, path: str, payload: Any = None) -> Any:
        root = self.url[: -len("/v1")]
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(root + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _OPENER.open(req, timeout=30) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ValueError(f"{method} {path} failed with {exc.code}: {detail}") from None

    def stats(self) -> dict[str, Any]:
        """Counters, fetched from ``GET /_sim/stats``."""
        result: dict[str, Any] = self._control("GET", "/_sim/stats")
        return result

    @property
    def requests(self) -> int:
        """Number of chat-completion requests received by the child."""
        return int(self.stats()["requests"])

    @property
    def history(self) -> list[dict[str, Any]]:
        """Recorded request bodies, fetched from ``GET /_sim/history``."""
        result: list[dict[str, Any]] = self._control("GET", "/_sim/history")
        return result

    def configure(self, **changes: Any) -> SimConfig:
        """Change settings at runtime via ``POST /_sim/config``; returns the new settings."""
        SimConfig().updated(**changes)  # fail early on unknown names or bad values
        data = self._control("POST", "/_sim/config", changes)
        data["fault_kinds"] = tuple(data["fault_kinds"])
        return SimConfig(**data)

    def inject(self, *faults: Fault) -> None:
        """Queue faults in the child (``POST /_sim/inject``)."""
        self._control("POST", "/_sim/inject", {"faults": [f.to_dict() for f in faults]})

    def script(self, *replies: Reply) -> None:
        """Queue replies in the child (``POST /_sim/script``)."""
        self._control("POST", "/_sim/script", {"replies": [r.to_dict() for r in replies]})

    def reset(self) -> None:
        """Clear the child's counters, history and queues (``POST /_sim/reset``)."""
        self._control("POST", "/_sim/reset", {})

    def __repr__(self) -> str:
        return f"<SpawnedSimServer {self.url} pid={self.process.pid}>"
