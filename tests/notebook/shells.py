"""nbagent's magics in a real IPython InteractiveShell on a private registry (the fixtures are in conftest)."""

from __future__ import annotations

import asyncio
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from support import sim_settings

from nbagent.agent import RunResult
from nbagent.events import EventBus
from nbagent.notebook import register
from nbagent.notebook.magics import AgentMagics
from nbagent.notebook.session import RunRegistry
from nbagent.testing import SimServer


class Notebook:
    """A shell with the magics on a private registry and bus; ``await nb.run(code)`` runs one cell."""

    def __init__(self, shell: InteractiveShell, registry: RunRegistry, magics: AgentMagics) -> None:
        self.shell, self.registry, self.magics = shell, registry, magics

    async def run(self, code: str) -> ExecutionResult:
        return await self.shell.run_cell_async(code, transformed_cell=self.shell.transform_cell(code))

    def ns(self, name: str) -> Any:
        return self.shell.user_ns[name]

    async def until_done(self, name: str, timeout: float = 20.0) -> RunResult:
        entry = self.registry.get(name)
        assert entry is not None and entry.handle is not None
        await asyncio.wait([entry.handle.task], timeout=timeout)
        await asyncio.sleep(0)
        assert entry.result is not None
        return entry.result


def make_notebook(shell: InteractiveShell, sim: SimServer, **settings: Any) -> Notebook:
    registry = RunRegistry(EventBus(), settings=sim_settings(sim, **settings))
    return Notebook(shell, registry, register(shell, registry))


def usage_error(result: ExecutionResult) -> str:
    err = result.error_in_exec or result.error_before_exec
    assert isinstance(err, UsageError), err
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg
    return msg
