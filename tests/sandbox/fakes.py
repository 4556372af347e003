"""An in-memory sandbox backend for testing the pool's ordering and bookkeeping (not isolation)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence

from nbagent.errors import SandboxError
from nbagent.sandbox.backend import ExecOutput, Isolation, SandboxLabels, SandboxRecord
from nbagent.sandbox.files import PUT_SCRIPT
from nbagent.sandbox.spec import SandboxSpec

_ids = itertools.count(1)


class FakeDriver:
    """Runs no commands: echoes argv, and keeps files written and read with the file-transfer commands."""

    backend = "fake"
    workdir = "/workspace"
    isolation = Isolation(kind="fake")

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
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, limit: int,
        env: Mapping[str, str] | None = None,
    ) -> ExecOutput:
        if self.destroyed:
            raise SandboxError(f"{self.id} is destroyed")
        if self.fail_exec:
            raise SandboxError(f"{self.id} broke")
        await asyncio.sleep(0)
        if list(argv[:3]) == ["/bin/sh", "-c", PUT_SCRIPT]:
            self.files[argv[4]] = stdin or b""
            return ExecOutput(stdout=b"", stderr=b"", exit_code=0, duration=0.001)
        if argv[0] == "head":
            data = self.files.get(argv[4])
            if data is None:
                return ExecOutput(stdout=b"", stderr=b"head: No such file or directory", exit_code=1, duration=0.001)
            return ExecOutput(stdout=data[: int(argv[2])][:limit], stderr=b"", exit_code=0, duration=0.001)
        return ExecOutput(stdout=" ".join(argv).encode(), stderr=b"", exit_code=0, duration=0.001)

    async def check(self) -> str | None:
        self.checks += 1
        if self.owner.check_gate is not None:
            await self.owner.check_gate.wait()
        self.files.clear()
        return self.problem

    async def destroy(self) -> None:
        self.destroyed = True
        self.owner.destroyed.append(self)
        self.owner.records = [r for r in self.owner.records if r.id != self.id]


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
            self.records.append(SandboxRecord(id=driver.id, backend=self.name, status="running",
                                              labels=labels.as_dict()))
            return driver
        finally:
            self.in_flight -= 1

    async def list_sandboxes(self) -> list[SandboxRecord]:
        return list(self.records)

    async def remove(self, sandbox_id: str) -> None:
        self.removed.append(sandbox_id)
        self.records = [r for r in self.records if r.id != sandbox_id]

    async def aclose(self) -> None:
        self.closed = True
