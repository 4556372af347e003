"""Docker sandboxes: one long-lived container per pooled sandbox, commands run with ``docker exec``.

Every container gets hard memory (no swap), CPU and pids limits, no network (``network_mode="none"``)
unless asked, a non-root user, all capabilities dropped, ``no-new-privileges``, and tmpfs mounts for the
workspace and ``/tmp`` (so a read-only root still has a writable workspace). PID 1 is a tiny Python
reaper, so orphaned processes never pile up as zombies and count against the pids limit.

A command runs under a small shell wrapper (:data:`~nbagent.sandbox.scripts.WRAP`) with a per-exec marker
in its environment: ``timeout -s KILL`` kills the command's process group at its timeout, and when the
command ends (at the timeout or not) the wrapper looks for any other process (a glob of ``/proc``: no
fork). Only when there is one does it run the sweep, which kills every process the exec left behind --
those carrying its marker and, when no other exec runs, those that cleared their environment -- and waits
until they are gone: background jobs never outlive their exec, and a bounded fork loop never leaves the
sandbox at its pids limit. If the wrapper does not end in time, marked processes are killed from outside;
if the output stream is still open shortly after, it is cut and the sandbox is marked broken, so the call
always returns within about a second of the timeout.

Every Docker SDK call runs in the backend's own thread pool, never on the event loop (and never in the
loop's default executor, which long-running execs would starve).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from ..errors import SandboxError
from . import scripts
from .backend import LABEL_SANDBOX, ExecOutput, Isolation, SandboxLabels, SandboxRecord
from .backend_registry import register_backend
from .docker_stream import ExecStream, RawOutput, consume, read_frames, send_stdin
from .procs import in_thread
from .spec import SandboxSpec, parse_size

__all__ = ["DockerBackend", "DockerSandbox"]

log = logging.getLogger("nbagent.sandbox.docker")
T = TypeVar("T")

_KILL_GRACE = 0.75  # after the in-container timeout fires, how long the runner may take to clean up
_KILL_STEP = 0.25  # the bound on each later step (marker kill, wait, cut)
_TMP_SIZE = "64m"


def _docker() -> Any:
    try:
        import docker
    except ImportError as e:  # pragma: no cover - depends on the install
        raise SandboxError("the Docker backend needs the 'docker' package: pip install 'nbagent[docker]'") from e
    return docker


class DockerBackend:
    """Makes :class:`DockerSandbox` containers. ``client`` is a ``docker.DockerClient`` (default: from the
    environment, made on first use); ``max_workers`` bounds the threads that talk to the engine."""

    name = "docker"

    def __init__(self, client: Any = None, *, max_workers: int = 64) -> None:
        self._client = client
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._client_lock = threading.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    def client(self) -> Any:
        """The Docker client (blocking: call it from a worker thread)."""
        with self._client_lock:
            if self._client is None:
                docker = _docker()
                try:
                    self._client = docker.from_env(max_pool_size=self._max_workers)
                except docker.errors.DockerException as e:
                    raise SandboxError(f"cannot reach the Docker engine: {e}") from e
            return self._client

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in the backend's thread pool."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="nbagent-docker")
        return await in_thread(functools.partial(fn, *args, **kwargs), executor=self._executor)

    # --- SandboxBackend -------------------------------------------------------------------------

    async def available(self) -> bool:
        """Does the engine answer?"""
        try:
            return bool(await self.run(lambda: self.client().ping()))
        except Exception:
            return False

    async def create(self, spec: SandboxSpec, labels: SandboxLabels) -> DockerSandbox:
        name = f"nbagent-{uuid.uuid4().hex[:10]}"
        container = await self.run(self._create_container, name, spec, labels)
        sandbox = DockerSandbox(self, container, spec)
        try:
            await sandbox._prepare()
        except BaseException:
            await asyncio.shield(sandbox.destroy())
            raise
        return sandbox

    def _create_container(self, name: str, spec: SandboxSpec, labels: SandboxLabels) -> Any:
        docker = _docker()
        client = self.client()
        owner = f"uid={spec.uid},gid={spec.gid}"
        kwargs: dict[str, Any] = dict(
            image=spec.image,
            command=[spec.python, "-c", scripts.INIT],
            entrypoint=[],
            name=name,
            hostname="sandbox",
            detach=True,
            user=spec.user,
            labels=labels.as_dict(),
            mem_limit=spec.memory_bytes,
            memswap_limit=spec.memory_bytes,  # no swap: the limit is real
            nano_cpus=int(spec.cpus * 1e9),
            pids_limit=spec.pids,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=spec.read_only,
            tmpfs={
                spec.workdir: f"rw,exec,nosuid,nodev,size={parse_size(spec.workspace_size)},mode=1777,{owner}",
                "/tmp": f"rw,exec,nosuid,nodev,size={parse_size(_TMP_SIZE)},mode=1777",
            },
            working_dir=spec.workdir,
            environment={"HOME": spec.workdir, "PYTHONUNBUFFERED": "1", **dict(spec.env)},
            ulimits=[docker.types.Ulimit(name="nofile", soft=1024, hard=1024)],
        )
        if not spec.network:
            kwargs["network_mode"] = "none"
        try:
            try:
                container = client.containers.create(**kwargs)
            except docker.errors.ImageNotFound:
                log.info("pulling sandbox image %s", spec.image)
                try:
                    client.images.pull(spec.image)
                except docker.errors.APIError as e:
                    raise SandboxError(
                        f"sandbox image {spec.image!r} is not present and cannot be pulled ({e}); build it with "
                        "scripts/setup-sandbox.sh or set the image to a public one such as python:3.12-slim"
                    ) from e
                container = client.containers.create(**kwargs)
            try:
                container.start()
            except docker.errors.APIError:
                container.remove(force=True)
                raise
        except docker.errors.APIError as e:
            raise SandboxError(f"cannot create a Docker sandbox from {spec.image!r}: {e}") from e
        return container

    async def list_sandboxes(self) -> list[SandboxRecord]:
        def find() -> list[SandboxRecord]:
            try:
                rows = self.client().api.containers(all=True, filters={"label": LABEL_SANDBOX})
            except _docker().errors.DockerException as e:
                raise SandboxError(f"cannot list Docker sandboxes: {e}") from e
            return [
                SandboxRecord(id=(r.get("Names") or [r["Id"]])[0].lstrip("/"), backend=self.name,
                              status=r.get("State", "?"), labels=dict(r.get("Labels") or {}))
                for r in rows
            ]

        return await self.run(find)

    async def remove(self, sandbox_id: str) -> None:
        await self.run(self._remove_sync, sandbox_id)

    def _remove_sync(self, sandbox_id: str) -> None:
        docker = _docker()
        try:
            self.client().api.remove_container(sandbox_id, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code == 409 and "already in progress" in str(e):
                return
            raise SandboxError(f"cannot remove sandbox {sandbox_id}: {e}") from e

    async def aclose(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)


class DockerSandbox:
    """One sandbox container. Created by :class:`DockerBackend`; used through a lease's Sandbox."""

    backend = "docker"

    def __init__(self, owner: DockerBackend, container: Any, spec: SandboxSpec) -> None:
        self._owner = owner
        self._container = container
        self.spec = spec
        self.id: str = container.name
        self.workdir = spec.workdir
        self.isolation = _isolation(spec)
        self._oom_kills: int | None = None
        self._baseline: frozenset[str] = frozenset()
        self._problem: str | None = None  # set when a command could not be killed cleanly

    def __repr__(self) -> str:
        return f"<DockerSandbox {self.id}>"

    async def _prepare(self) -> None:
        """Wait for the container to run commands; note its OOM-kill count and filesystem baseline."""
        self._oom_kills = await self._read_oom_kills()
        if not self.spec.read_only:
            self._baseline = await self._owner.run(self._diff)

    # --- commands -------------------------------------------------------------------------------

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, limit: int,
        env: Mapping[str, str] | None = None,
    ) -> ExecOutput:
        started = time.monotonic()
        raw, timed_out = await self._exec_raw(argv, stdin=stdin, timeout=timeout, env=env, limit=limit)
        duration = time.monotonic() - started
        code = raw.exit_code
        oom: bool | None = False
        if not timed_out and (code is None or code == 137):
            oom = await self._oom_since_last()  # raises SandboxError if the container is gone
        return ExecOutput(stdout=raw.stdout, stderr=raw.stderr, exit_code=code, duration=duration,
                          timed_out=timed_out, oom_killed=oom, truncated=raw.truncated)

    async def _exec_raw(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None,
        timeout: float,
        env: Mapping[str, str] | None,
        limit: int,
        wrap: bool = True,
    ) -> tuple[RawOutput, bool]:
        """Run one command; return its raw output and whether it was killed at ``timeout``. ``wrap=False``
        leaves out the in-container runner (for the reset, which kills every process but PID 1)."""
        marker = uuid.uuid4().hex
        runner = ["/bin/sh", "-c", scripts.WRAP, "sh", f"{timeout:.3f}", self.spec.python, scripts.SWEEP]
        cmd = [*runner, *argv] if wrap else list(argv)
        environment = {**(env or {}), "NBAGENT_EXEC": marker}
        stream = ExecStream()
        started = time.monotonic()
        fut = asyncio.ensure_future(self._owner.run(self._exec_sync, cmd, stdin, environment, limit, stream))
        fut.add_done_callback(consume)  # an abandoned exec's late error must not be logged as unretrieved
        timed_out = False
        try:
            deadline = started + timeout + _KILL_GRACE
            while True:
                done, _ = await asyncio.wait({fut}, timeout=max(0.0, deadline - time.monotonic()))
                begun = stream.started_at  # the command's clock starts when the engine started it
                if done or begun is None or begun + timeout + _KILL_GRACE <= deadline:
                    break
                deadline = begun + timeout + _KILL_GRACE
            if not done:  # the in-container timeout did not end it: kill from outside, then cut the stream
                timed_out = True
                await self._kill_marked(marker)
                done, _ = await asyncio.wait({fut}, timeout=_KILL_STEP)
                if not done:
                    stream.close()
                    self._problem = "a timed-out command kept its output open after being killed"
                    done, _ = await asyncio.wait({fut}, timeout=_KILL_STEP)
                    if not done:
                        raise SandboxError(f"sandbox {self.id}: a timed-out command could not be stopped")
            raw = fut.result()
        except BaseException as e:
            if isinstance(e, SandboxError) or fut.done():
                raise
            # cancelled mid-command: cut the stream and kill the command before giving up on it
            stream.close()
            await asyncio.shield(self._kill_marked(marker))
            raise
        if not timed_out and raw.exit_code == 137 and time.monotonic() - started >= timeout:
            timed_out = True  # killed by the in-container timeout
            await self._kill_marked(marker)  # and whatever left its process group
        return raw, timed_out

    def _exec_sync(
        self, cmd: list[str], stdin: bytes | None, env: dict[str, str], limit: int, stream: ExecStream
    ) -> RawOutput:
        docker = _docker()
        api = self._owner.client().api
        try:
            exec_id = api.exec_create(self._container.id, cmd, stdin=stdin is not None, user=self.spec.user,
                                      workdir=self.workdir, environment=env)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except docker.errors.NotFound as e:
            raise SandboxError(f"sandbox {self.id} is gone: {e}") from e
        except docker.errors.APIError as e:
            raise SandboxError(f"sandbox {self.id} cannot run commands: {e}") from e
        stream.started_at = time.monotonic()
        raw_sock = getattr(sock, "_sock", sock)
        try:
            raw_sock.settimeout(None)  # our own timer decides when to give up
            if not stream.attach(sock):
                raise SandboxError(f"sandbox {self.id}: command cancelled")
            if stdin is not None:
                threading.Thread(target=send_stdin, args=(raw_sock, stdin), daemon=True).start()
            out, err, truncated = read_frames(sock, limit)
        finally:
            sock.close()
        try:
            code = api.exec_inspect(exec_id).get("ExitCode")
        except docker.errors.APIError as e:
            raise SandboxError(f"sandbox {self.id} is gone: {e}") from e
        return RawOutput(out, err, truncated, code)

    async def _kill_marked(self, marker: str) -> None:
        """Kill every process of one exec (bounded: a container at its pids limit may refuse new execs)."""
        try:
            await asyncio.wait_for(
                self._owner.run(self._run_quiet, [self.spec.python, "-c", scripts.KILL_MARKED, marker]), _KILL_STEP
            )
        except Exception as e:  # the caller has already decided the outcome; this is cleanup
            log.debug("marker kill in %s did not finish: %s", self.id, e)

    def _run_quiet(self, cmd: list[str]) -> tuple[int | None, bytes]:
        r = self._container.client.api.exec_create(self._container.id, cmd, user=self.spec.user)
        out = self._container.client.api.exec_start(r["Id"])
        return self._container.client.api.exec_inspect(r["Id"]).get("ExitCode"), out

    # --- OOM accounting -------------------------------------------------------------------------

    async def _read_oom_kills(self) -> int | None:
        raw, _ = await self._exec_raw(["/bin/sh", "-c", "cat " + " ".join(scripts.OOM_FILES) + " 2>/dev/null; true"],
                                      stdin=None, timeout=10, env=None, limit=65536)
        if raw.exit_code != 0:
            raise SandboxError(f"sandbox {self.id} cannot run commands (exit {raw.exit_code}): {raw.stderr[-300:]!r}")
        for line in raw.stdout.decode(errors="replace").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    async def _oom_since_last(self) -> bool | None:
        """Did the kernel OOM-kill something since the last look? Raises SandboxError if the container
        itself stopped (killed from outside, or its PID 1 died)."""
        try:
            count = await self._read_oom_kills()
        except SandboxError as e:
            raise SandboxError(f"sandbox {self.id} stopped while running a command: {e}") from e
        before, self._oom_kills = self._oom_kills, count
        if count is None or before is None:
            return None
        return count > before

    # --- lifecycle ------------------------------------------------------------------------------

    async def check(self) -> str | None:
        if self._problem is not None:
            return self._problem
        scratch = [self.workdir, "/tmp", "/dev/shm"]
        raw, timed_out = await self._exec_raw([self.spec.python, "-c", scripts.CHECK, *scratch], stdin=None, timeout=10,
                                              env=None, limit=65536, wrap=False)
        if timed_out or raw.exit_code != 0:
            detail = (raw.stdout + raw.stderr).decode(errors="replace").strip()[-300:]
            return f"reset failed (exit {raw.exit_code}): {detail}"
        if not self.spec.read_only:
            changed = await self._owner.run(self._diff) - self._baseline
            if changed:
                return "dirty: files changed outside the workspace: " + ", ".join(sorted(changed)[:5])
        return None

    def _diff(self) -> frozenset[str]:
        return frozenset(f"{d['Kind']}:{d['Path']}" for d in (self._container.diff() or []))

    async def destroy(self) -> None:
        await self._owner.remove(self._container.id)


def _isolation(spec: SandboxSpec) -> Isolation:
    limits = {
        "network": "the engine's default network" if spec.network else "none (loopback only)",
        "memory": f"{spec.memory} (cgroup, no swap)",
        "cpu": f"{spec.cpus:g} CPUs (cgroup)",
        "pids": f"{spec.pids} (cgroup)",
        "disk": f"workspace {spec.workspace_size} tmpfs, /tmp {_TMP_SIZE} tmpfs (both in the memory limit)",
    }
    if spec.read_only:
        limits["root"] = "read-only"
        unbounded: tuple[str, ...] = ()
    else:
        limits["root"] = "writable layer, checked with docker diff after each lease"
        unbounded = ("disk writes outside the workspace and /tmp (the container's writable layer)",)
    return Isolation(kind="docker", limits=limits, unbounded=unbounded)


register_backend("docker", DockerBackend, auto_rank=0)
