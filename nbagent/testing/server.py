"""In-process simulated OpenAI-compatible chat server running on a background thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .behavior import Behavior, Reply
from .config import SimConfig
from .core import SimCore
from .faults import Fault

if TYPE_CHECKING:
    from .spawn import SpawnedSimServer

#: Listen backlog of the simulated server (the kernel may cap it lower).
BACKLOG = 4096
#: Seconds in-flight requests get to finish when the server stops before they are cancelled.
SHUTDOWN_TIMEOUT = 0.25


async def start_site(core: SimCore, host: str, port: int) -> tuple[web.ServerRunner, int]:
    """Start serving ``core`` on ``host:port`` in the running loop; return the runner and the bound port."""
    server = web.Server(core.handle, handler_cancellation=True, access_log=None)
    runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=BACKLOG, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


def format_base_url(host: str, port: int) -> str:
    """Return the OpenAI ``base_url`` of a server listening on ``host:port``."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


class SimServer:
    """A simulated OpenAI-compatible chat-completions server over real HTTP on loopback.

    The server runs on a background thread with its own event loop, so it can be used from synchronous
    code (``with SimServer() as srv``) as well as from inside a running event loop (``async with``).
    ``srv.url`` is the ``base_url`` to hand to an OpenAI client.

    Settings (all changeable at runtime with :meth:`configure`):

    * ``latency``: seconds before a non-stream answer (and before the first chunk of a stream when ``ttft`` is
      None); ``ttft``: seconds before the first chunk of a stream; ``chunk_delay``: seconds between chunks.
    * ``tool_calls_per_run``: how many tool calls the default behaviour makes after each user message.
    * ``report_usage``: send ``usage`` (streams only with ``stream_options.include_usage``).
    * ``api_key``: when set, other ``Authorization`` values get 401.
    * ``context_window``: when set, prompts estimated larger get 400 ``context_length_exceeded``.
    * ``fault_rate``/``fault_kinds``/``seed``: each request gets, with probability ``fault_rate``, a fault of a
      kind drawn from ``fault_kinds`` by ``random.Random(seed)``; ``fault_delay`` is the delay of the random
      ``slow_first_token`` and ``stall`` faults.
    * ``record_history``: keep every request body in :attr:`history`.
    * ``capacity``: at most this many chat requests are served at once; beyond it, with ``overload="queue"``
      a request waits for a free place (first come, first served), with ``overload="reject"`` it gets 429
      with ``Retry-After: overload_retry_after``. ``stats()["capacity"]`` counts both.

    ``behavior`` replaces the default deterministic behaviour: a callable receiving the request body and
    returning a :class:`Reply`. Queued faults (:meth:`inject`) and replies (:meth:`script`) take precedence.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        ttft: float | None = None,
        chunk_delay: float = 0.0,
        tool_calls_per_run: int = 1,
        report_usage: bool = True,
        api_key: str | None = None,
        context_window: int | None = None,
        fault_rate: float = 0.0,
        fault_kinds: Iterable[str] = ("500",),
        seed: int = 0,
        record_history: bool = True,
        fault_delay: float = 1.0,
        capacity: int | None = None,
        overload: str = "queue",
        overload_retry_after: float | None = 1.0,
        behavior: Behavior | None = None,
    ) -> None:
        config = SimConfig(
            latency=latency,
            ttft=ttft,
            chunk_delay=chunk_delay,
            tool_calls_per_run=tool_calls_per_run,
            report_usage=report_usage,
            api_key=api_key,
            context_window=context_window,
            fault_rate=fault_rate,
            fault_kinds=(fault_kinds,) if isinstance(fault_kinds, str) else tuple(fault_kinds),
            seed=seed,
            record_history=record_history,
            fault_delay=fault_delay,
            capacity=capacity,
            overload=overload,
            overload_retry_after=overload_retry_after,
        )
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._core = SimCore(config, behavior)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.ServerRunner | None = None
        self._state_lock = threading.Lock()

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> SimServer:
        """Start listening on a background thread; return once the port is bound. Starting twice is a no-op."""
        with self._state_lock:
            if self._thread is not None:
                return self
            ready = threading.Event()
            errors: list[BaseException] = []
            thread = threading.Thread(target=self._run, args=(ready, errors), name="nbagent-sim-server", daemon=True)
            thread.start()
            ready.wait()
            if errors:
                thread.join()
                raise errors[0]
            self._thread = thread
            return self

    def _run(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        try:
            try:
                self._runner, self._port = loop.run_until_complete(
                    start_site(self._core, self.host, self._port or self._requested_port)
                )
            except BaseException as exc:
                errors.append(exc)
                return
            self._loop = loop
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
        finally:
            ready.set()
            loop.close()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def stop(self) -> None:
        """Stop the server and join its thread. Idempotent."""
        with self._state_lock:
            thread, loop = self._thread, self._loop
            if thread is None:
                return
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:  # the loop closed in the meantime
                    pass
            thread.join()
            self._thread = None
            self._loop = None

    @property
    def running(self) -> bool:
        """Whether the server thread is running."""
        return self._thread is not None

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> SimServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ----------------------------------------------------------------- properties

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """The OpenAI ``base_url``: ``http://<host>:<port>/v1``."""
        return format_base_url(self.host, self.port)

    @property
    def config(self) -> SimConfig:
        """The current settings."""
        return self._core.config

    @property
    def requests(self) -> int:
        """Number of chat-completion requests received, faulted and rejected ones included."""
        return self._core.requests

    @property
    def history(self) -> list[dict[str, Any]]:
        """Copies of the received chat-completion request bodies (when ``record_history``)."""
        return self._core.history()

    # ----------------------------------------------------------------- control

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each of the next chat-completion requests consumes one, in order."""
        self._core.inject(*faults)

    def script(self, *replies: Reply) -> None:
        """Queue replies answered in order before the behaviour is asked.

        A reply is consumed only by a request that delivers it: error, drop and garbage faults leave it queued,
        and it is put back when the client disconnects before receiving it.
        """
        self._core.script(*replies)

    def configure(self, **changes: Any) -> SimConfig:
        """Change settings at runtime (thread-safe); returns the new settings."""
        return self._core.configure(**changes)

    def reset(self) -> None:
        """Clear counters, history and queued faults/replies; re-seed the fault generator."""
        self._core.reset()

    def stats(self) -> dict[str, Any]:
        """Counters: requests, completed, faults per kind, rejected, in-flight, max in-flight, queue sizes."""
        return self._core.stats()

    @classmethod
    def spawn(cls, **kwargs: Any) -> SpawnedSimServer:
        """Run the server as a subprocess (``python -m nbagent.testing``) with the same keyword arguments.

        ``behavior`` is not supported in this mode. ``uvloop=True`` serves on uvloop's event loop (less CPU per
        request; the ``uvloop`` package must be installed).
        """
        from .spawn import SpawnedSimServer

        return SpawnedSimServer.start_process(**kwargs)

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<SimServer {where}>"
