"""Local sandboxes: a workspace directory on this machine, commands run under bubblewrap.

With bubblewrap (``isolated == True``) every command runs in fresh namespaces
(``bwrap --unshare-all --die-with-parent``): no network, its own pid namespace (so killing bubblewrap
kills every process of the command), read-only binds of the system directories, a read-write bind of the
workspace at the spec's ``workdir`` and a private ``/tmp``.

Disk: when this process may mount (root), the workspace and ``/tmp`` live on one tmpfs of
``workspace_size`` per sandbox (:mod:`.localdisk`), so their total is bounded. Otherwise only each file is
bounded (``RLIMIT_FSIZE``) and ``/tmp`` is a fresh tmpfs of ``workspace_size`` per command;
``sandbox.isolation`` lists the workspace's total as not bounded.

Without bubblewrap (``isolated == False``; a :class:`SandboxNotIsolatedWarning` says so) commands are plain
processes in the workspace directory: they can read the machine and reach the network. Both modes run
each command in its own session under resource limits (address space = ``memory``, process count ≈
``pids``, file size), as the spec's uid when running as root, and kill its process group at the timeout.
Processes that leave the group are found by a marker in their environment and killed too.

All process handling is asyncio subprocesses; file system work goes to a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import SandboxError
from .backend import ExecOutput, Isolation, SandboxLabels, SandboxRecord
from .backend_registry import register_backend
from .localdisk import mount_disk, unmount_disk
from .procs import feed, in_thread, kill_marked, processes_of, read_capped, rmtree
from .spec import SandboxSpec

__all__ = ["LocalBackend", "LocalSandbox", "SandboxNotIsolatedWarning"]

log = logging.getLogger("nbagent.sandbox.local")

_META = "sandbox.json"
_KILL_WAIT = 0.5
_START_WAIT = 10.0  # how long a cancelled exec waits for its command to start, so as to kill it
_ETC = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "passwd", "group",
        "nsswitch.conf", "ssl", "ca-certificates", "mime.types", "os-release", "python3")
_NET_ETC = ("resolv.conf", "hosts", "host.conf", "gai.conf")


class SandboxNotIsolatedWarning(UserWarning):
    """Local sandboxes run as plain processes: bubblewrap is missing or cannot create namespaces."""


def _default_root() -> Path:
    return Path(tempfile.gettempdir()) / f"nbagent-sandboxes-{os.getuid()}"


class LocalBackend:
    """Makes :class:`LocalSandbox` workspaces under ``root`` (default: a per-user directory in the
    system temp dir). ``bwrap`` is the bubblewrap binary (default: found on PATH)."""

    name = "local"

    def __init__(self, root: str | os.PathLike[str] | None = None, *, bwrap: str | None = None) -> None:
        self.root = Path(root) if root is not None else _default_root()
        self.bwrap = bwrap if bwrap is not None else shutil.which("bwrap")
        self.prlimit = shutil.which("prlimit")
        self._bwrap_ok: bool | None = None
        self._bwrap_error = ""
        self._counts: dict[int, tuple[float, int]] = {}  # uid -> (when, processes)

    async def nproc_limit(self, spec: SandboxSpec) -> int:
        """RLIMIT_NPROC counts every process of the real uid, so a command may have ``pids`` more than
        the uid runs now (the count is refreshed at most once a second: it is an approximation)."""
        uid = spec.uid if _drop_privileges(spec) else os.getuid()
        now = time.monotonic()
        when, count = self._counts.get(uid, (-1.0, 0))
        if now - when > 1.0:
            try:
                count = await asyncio.to_thread(processes_of, uid)
            except OSError:  # no /proc (not Linux): the limit is then per user, as documented
                count = 0
            self._counts[uid] = (now, count)
        return spec.pids + count

    async def available(self) -> bool:
        return True  # a plain subprocess is always possible

    async def isolation(self, spec: SandboxSpec) -> bool:
        """Will sandboxes of ``spec`` run under bubblewrap? Probes bubblewrap once."""
        if spec.local_isolation == "none":
            return False
        if self._bwrap_ok is None:
            self._bwrap_ok, self._bwrap_error = await self._probe(spec)
        if not self._bwrap_ok and spec.local_isolation == "bwrap":
            raise SandboxError(f"bubblewrap is required (local_isolation='bwrap') but unusable: {self._bwrap_error}")
        return self._bwrap_ok

    async def _probe(self, spec: SandboxSpec) -> tuple[bool, str]:
        if not self.bwrap:
            return False, "bwrap is not installed"
        probe_dir = await asyncio.to_thread(tempfile.mkdtemp, prefix="nbagent-probe-")
        try:
            await asyncio.to_thread(_own, Path(probe_dir), spec)
            argv = [*_bwrap_args(self.bwrap, spec, probe_dir), "--", "/bin/sh", "-c", "true"]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, **_drop_privileges(spec))
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
                return False, "bubblewrap did not start within 10s"
            if proc.returncode != 0:
                return False, err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
            return True, ""
        finally:
            await asyncio.to_thread(shutil.rmtree, probe_dir, True)

    async def create(self, spec: SandboxSpec, labels: SandboxLabels) -> LocalSandbox:
        isolated = await self.isolation(spec)
        if not isolated:
            reason = self._bwrap_error or "local_isolation='none'"
            warnings.warn(
                f"local sandboxes are NOT isolated ({reason}): commands run as plain processes that can read "
                "this machine and use its network. Install bubblewrap or use the Docker backend.",
                SandboxNotIsolatedWarning,
                stacklevel=2,
            )
        sandbox_id = f"local-{uuid.uuid4().hex[:10]}"
        home = self.root / sandbox_id
        meta = {"labels": labels.as_dict(), "isolated": isolated}
        unbounded = await asyncio.to_thread(_make_home, self.root, home, meta, spec)
        sandbox = LocalSandbox(self, sandbox_id, home, spec, isolated, disk_bounded=unbounded is None)
        try:
            out = await sandbox.exec(["/bin/sh", "-c", "true"], stdin=None, timeout=10, limit=65536)
            if out.exit_code != 0 or out.timed_out:
                detail = (out.stdout + out.stderr).decode(errors="replace").strip()[-300:]
                raise SandboxError(f"local sandbox cannot run commands: {detail or out.exit_code}")
        except BaseException:
            await asyncio.shield(sandbox.destroy())
            raise
        return sandbox

    async def list_sandboxes(self) -> list[SandboxRecord]:
        return await in_thread(self._list_sync)

    def _list_sync(self) -> list[SandboxRecord]:
        out = []
        for meta_file in sorted(self.root.glob(f"*/{_META}")):
            try:
                meta = json.loads(meta_file.read_text())
            except (OSError, ValueError):
                continue
            out.append(SandboxRecord(id=meta_file.parent.name, backend=self.name,
                                     status="isolated" if meta.get("isolated") else "plain",
                                     labels=dict(meta.get("labels") or {})))
        return out

    async def remove(self, sandbox_id: str) -> None:
        await in_thread(lambda: self._remove_sync(sandbox_id))

    def _remove_sync(self, sandbox_id: str) -> None:
        if "/" in sandbox_id or sandbox_id in ("", ".", ".."):
            raise SandboxError(f"not a sandbox id: {sandbox_id!r}")
        kill_marked(f"NBAGENT_SANDBOX={sandbox_id}")
        try:
            unmount_disk(self.root / sandbox_id / "disk")
        except OSError as e:
            raise SandboxError(f"cannot remove sandbox {sandbox_id}: {e}") from e
        rmtree(self.root / sandbox_id)

    async def aclose(self) -> None:
        return None


class LocalSandbox:
    """One local workspace. Created by :class:`LocalBackend`; used through a lease's Sandbox."""

    backend = "local"

    def __init__(self, owner: LocalBackend, sandbox_id: str, home: Path, spec: SandboxSpec, isolated: bool, *,
                 disk_bounded: bool) -> None:
        self._owner = owner
        self.id = sandbox_id
        self.home = home
        self.workspace = home / "disk" / "workspace"
        self.tmp = home / "disk" / "tmp"
        self.spec = spec
        self.isolated = isolated
        self.disk_bounded = disk_bounded
        self.workdir = spec.workdir if isolated else str(self.workspace)
        self.isolation = _isolation(spec, isolated, disk_bounded)
        self._problem: str | None = None
        self._bwrap: list[str] | None = None

    def __repr__(self) -> str:
        return f"<LocalSandbox {self.id} isolated={self.isolated}>"

    def _argv(self, argv: Sequence[str], nproc: int) -> list[str]:
        limits: list[str] = []
        spec = self.spec
        if self._owner.prlimit:
            limits = [self._owner.prlimit, f"--as={spec.memory_bytes}", f"--nproc={nproc}",
                      f"--fsize={spec.workspace_bytes}", "--core=0", "--nofile=1024", "--"]
        if self.isolated:
            if self._bwrap is None:  # the same for every command of this sandbox
                assert self._owner.bwrap is not None
                tmp = str(self.tmp) if self.disk_bounded else None
                self._bwrap = [*_bwrap_args(self._owner.bwrap, spec, str(self.workspace), tmp), "--"]
            return [*limits, *self._bwrap, *argv]
        return [*limits, *argv]

    def _env(self, marker: str, env: Mapping[str, str] | None) -> dict[str, str]:
        path = "/usr/local/bin:/usr/bin:/bin" if self.isolated else os.environ.get("PATH", "/usr/bin:/bin")
        tmp = {} if self.isolated else {"TMPDIR": str(self.tmp)}
        return {"PATH": path, "HOME": self.workdir, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **tmp,
                "NBAGENT_SANDBOX": self.id, **dict(self.spec.env), **(env or {}), "NBAGENT_EXEC": marker}

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, limit: int,
        env: Mapping[str, str] | None = None,
    ) -> ExecOutput:
        marker = uuid.uuid4().hex
        nproc = await self._owner.nproc_limit(self.spec)
        started = time.monotonic()
        creating = asyncio.ensure_future(asyncio.create_subprocess_exec(
            *self._argv(argv, nproc),
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(self.workspace),
            env=self._env(marker, env),
            start_new_session=True,  # its own process group, killed as one
            **_drop_privileges(self.spec),
        ))
        try:
            # shielded: a cancel that lands while asyncio connects the pipes (the command already runs) would leave
            # it to asyncio's own clean-up, which kills the direct child only; let the start finish, kill the group
            proc = await asyncio.shield(creating)
        except asyncio.CancelledError:
            await asyncio.wait({creating}, timeout=_START_WAIT)
            if creating.done():
                if not creating.cancelled() and creating.exception() is None:
                    await self._kill(creating.result(), marker)
            else:
                creating.add_done_callback(_kill_when_started)
            raise
        except OSError as e:
            raise SandboxError(f"sandbox {self.id}: cannot start a command: {e}") from e
        assert proc.stdout is not None and proc.stderr is not None
        out_task = asyncio.ensure_future(read_capped(proc.stdout, limit))
        err_task = asyncio.ensure_future(read_capped(proc.stderr, limit))
        wait_task = asyncio.ensure_future(proc.wait())
        tasks = {out_task, err_task, wait_task}
        feeder = asyncio.ensure_future(feed(proc.stdin, stdin)) if stdin is not None else None
        timed_out = False
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                timed_out = True
                await self._kill(proc, marker)
                _, pending = await asyncio.wait(tasks, timeout=_KILL_WAIT)
                for task in pending:
                    task.cancel()
                if wait_task in pending:
                    self._problem = f"a timed-out command (pid {proc.pid}) did not die"
        except BaseException:
            await asyncio.shield(self._kill(proc, marker))
            for task in tasks:
                task.cancel()
            if feeder is not None:
                feeder.cancel()
            raise
        finally:
            if feeder is not None and not feeder.done():
                feeder.cancel()
        duration = time.monotonic() - started
        out, out_cut = out_task.result() if not out_task.cancelled() else (b"", False)
        err, err_cut = err_task.result() if not err_task.cancelled() else (b"", False)
        code = proc.returncode
        if code is not None and code < 0:
            code = 128 - code  # shell convention for "killed by signal"
        return ExecOutput(stdout=out, stderr=err, exit_code=code, duration=duration, timed_out=timed_out,
                          oom_killed=None, truncated=out_cut or err_cut)

    async def _kill(self, proc: asyncio.subprocess.Process, marker: str) -> None:
        """SIGKILL the command's process group (under bubblewrap that ends its pid namespace, so every
        process of the command), then every process still carrying the exec's marker."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if not self.isolated:
            await asyncio.to_thread(kill_marked, f"NBAGENT_EXEC={marker}")

    # --- lifecycle ------------------------------------------------------------------------------

    async def check(self) -> str | None:
        if self._problem is not None:
            return self._problem
        return await asyncio.to_thread(self._reset_sync)

    def _reset_sync(self) -> str | None:
        survivors = kill_marked(f"NBAGENT_SANDBOX={self.id}")
        if survivors:
            return f"processes survived the reset: {survivors}"
        for what, ws in (("workspace", self.workspace), ("/tmp", self.tmp)):
            if ws.is_symlink() or not ws.is_dir():
                return f"the {what} directory was replaced"
            for child in list(ws.iterdir()):
                try:
                    if child.is_dir() and not child.is_symlink():
                        rmtree(child)
                    else:
                        child.unlink()
                except OSError as e:
                    return f"cannot wipe the {what}: {e}"
            if any(ws.iterdir()):
                return f"the {what} could not be emptied"
            _own(ws, self.spec)
        return None

    async def destroy(self) -> None:
        await in_thread(lambda: self._owner._remove_sync(self.id))


# --- helpers ------------------------------------------------------------------------------------


def _bwrap_args(bwrap: str, spec: SandboxSpec, workspace: str, tmp: str | None = None) -> list[str]:
    """bubblewrap's arguments; ``tmp`` is the directory bound at ``/tmp`` (None: a fresh tmpfs of
    ``workspace_size`` per command)."""
    args = [bwrap, "--unshare-all"]
    if spec.network:
        args.append("--share-net")
    args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
             "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    etc = list(_ETC) + (list(_NET_ETC) if spec.network else [])
    etc += [os.path.basename(p) for p in glob.glob("/etc/python3.*")]
    for name in etc:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--bind", tmp, "/tmp"] if tmp is not None else ["--size", str(spec.workspace_bytes), "--tmpfs", "/tmp"]
    args += ["--bind", workspace, spec.workdir, "--chdir", spec.workdir,
             "--uid", str(spec.uid), "--gid", str(spec.gid)]
    return args


def _kill_when_started(creating: asyncio.Future[asyncio.subprocess.Process]) -> None:
    """Kill the process group of a command whose exec was cancelled before it had started."""
    if creating.cancelled() or creating.exception() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(creating.result().pid, signal.SIGKILL)


def _drop_privileges(spec: SandboxSpec) -> dict[str, Any]:
    """When running as root, commands run as the spec's uid/gid (so limits like RLIMIT_NPROC apply)."""
    if os.geteuid() != 0 or spec.uid == 0:
        return {}
    return {"user": spec.uid, "group": spec.gid, "extra_groups": []}


def _own(path: Path, spec: SandboxSpec) -> None:
    if os.geteuid() == 0 and spec.uid != 0:
        os.chown(path, spec.uid, spec.gid)
    os.chmod(path, 0o700)


def _make_home(root: Path, home: Path, meta: dict[str, Any], spec: SandboxSpec) -> str | None:
    """Make a sandbox's home; return None when its disk is bounded in total, else why it is not."""
    root.mkdir(mode=0o711, parents=True, exist_ok=True)
    home.mkdir(mode=0o711)
    os.chmod(home, 0o711)  # traversable by the sandbox's uid, not listable
    fd = os.open(home / _META, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(meta, f)
    disk = home / "disk"
    disk.mkdir(mode=0o711)
    why = mount_disk(disk, spec.workspace_bytes)
    if why is not None:
        log.debug("local sandbox disk not bounded in total: %s", why)
    for name in ("workspace", "tmp"):
        (disk / name).mkdir()
        _own(disk / name, spec)
    return why


def _isolation(spec: SandboxSpec, isolated: bool, disk_bounded: bool) -> Isolation:
    size = spec.workspace_size
    limits = {
        "memory": f"address space {spec.memory} per process (RLIMIT_AS)",
        "pids": f"about {spec.pids} more processes of its uid (RLIMIT_NPROC)",
        "disk": (f"workspace and /tmp share one {size} tmpfs" if disk_bounded
                 else f"each file at most {size} (RLIMIT_FSIZE)"),
    }
    unbounded = ["cpu"]
    if not disk_bounded:
        unbounded.append("the workspace's total size")
        if isolated:
            limits["tmp"] = f"a fresh {size} tmpfs per command"
    if isolated:
        limits["network"] = "shared with the host" if spec.network else "none (own network namespace)"
    else:
        unbounded += ["network", "the host's files (readable)", "/tmp (the host's; TMPDIR points into the sandbox)"]
    return Isolation(kind="bwrap" if isolated else "process", limits=limits, unbounded=tuple(unbounded))


register_backend("local", LocalBackend, auto_rank=100)
