"""An in-memory sandbox backend for testing the pool's ordering and bookkeeping (not isolation)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence

from nbagent.errors import SandboxError
from nbagent.sandbox.backend import SandboxLabels, SandboxRecord
from nbagent.sandbox.spec import ExecResult, SandboxSpec

_ids = itertools.count(1)


class FakeDriver:
    backend = "fake"
    isolated = True
    workdir = "/workspace"

    def __init__(self, owner: FakeBackend, spec: SandboxSpec, labels: SandboxLabels) -> None:
        self.owner = owner
        self.spec = spec
        self.labels = labels
        self.id = f"fake-{next(_ids)}"
        self.files: dict[str, bytes] = {}
        self.problem: str | None = None
        self.fail_exec = False
        self.destroyed = False
        self.checks = 0

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, env: Mapping[str, str] | None = None
    ) -> ExecResult:
        if self.destroyed:
            raise SandboxError(f"{self.id} is destroyed")
        if self.fail_exec:
            raise SandboxError(f"{self.id} broke")
        await asyncio.sleep(0)
        return ExecResult(stdout=" ".join(argv), stderr="", exit_code=0, duration=0.001, timeout=timeout)

    async def put_file(self, path: str, data: bytes) -> None:
        self.files[path] = data

    async def get_file(self, path: str) -> bytes:
        try:
            return self.files[path]
        except KeyError:
            raise FileNotFoundError(2, "No such file", path) from None

    async def check(self) -> str | None:
        self.checks += 1
        if self.owner.check_gate is not None:
            await self.owner.check_gate.wait()
        self.files.clear()
        return self.problem

    async def destroy(self) -> None:
        self.destroyed = True
        self.owner.destroyed.append(self)


class FakeBackend:
    """Creations can be held at a gate (to see them run in parallel) or made to fail."""

    def __init__(self, name: str = "docker") -> None:
        self.name = name
        self.created: list[FakeDriver] = []
        self.destroyed: list[FakeDriver] = []
        self.create_gate: asyncio.Event | None = None
        self.check_gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.fail_creates = 0
        self.records: list[SandboxRecord] = []
        self.removed: list[str] = []
        self.cleaned: list[str] = []
        self.closed = False
        self.reachable = True

    async def available(self) -> bool:
        return self.reachable

    async def create(self, spec: SandboxSpec, labels: SandboxLabels) -> FakeDriver:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.create_gate is not None:
                await self.create_gate.wait()
            else:
                await asyncio.sleep(0)
            if self.fail_creates:
                self.fail_creates -= 1
                raise SandboxError("the engine said no")
            driver = FakeDriver(self, spec, labels)
            self.created.append(driver)
            return driver
        finally:
            self.in_flight -= 1

    async def list_sandboxes(self) -> list[SandboxRecord]:
        return list(self.records)

    async def remove(self, sandbox_id: str) -> None:
        self.removed.append(sandbox_id)
        self.records = [r for r in self.records if r.id != sandbox_id]

    def cleanup_sync(self, manager_id: str) -> None:
        self.cleaned.append(manager_id)

    async def aclose(self) -> None:
        self.closed = True
