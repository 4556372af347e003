"""Bad values for the magics are refused in one line in a real IPython shell, and never stick."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from support import sim_settings

from nbagent.events import EventBus
from nbagent.notebook import register, unregister
from nbagent.notebook.magics import AgentMagics
from nbagent.notebook.session import RunRegistry
from nbagent.testing import SimServer


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    sh = InteractiveShell.instance()
    yield sh
    sh.config.pop("AgentMagics", None)  # %config persists in the shell's config


@pytest.fixture
async def magics(shell: InteractiveShell, sim: SimServer) -> AsyncIterator[AgentMagics]:
    registry = RunRegistry(EventBus(), settings=sim_settings(sim, retry__max_attempts=1))
    m = register(shell, registry)
    yield m
    unregister(shell)
    await registry.aclose()


def _root_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "root" and r.levelno == logging.ERROR]


@pytest.mark.parametrize(
    ("assignment", "trait", "allowed"),
    [
        ("refresh_hz = -1", "refresh_hz", "a finite number > 0"),
        ("refresh_hz = 0", "refresh_hz", "a finite number > 0"),
        ("lag_threshold = float('nan')", "lag_threshold", "a finite number > 0"),
        ("timeout = float('inf')", "timeout", "a finite number > 0, or none"),
        ("timeout = -3", "timeout", "a finite number > 0, or none"),
        ("max_steps = 0", "max_steps", "a whole number >= 1, or none"),
    ],
)
def test_a_bad_config_value_is_refused_in_one_line_and_the_old_value_kept(
        shell: InteractiveShell, magics: AgentMagics, caplog: pytest.LogCaptureFixture,
        assignment: str, trait: str, allowed: str) -> None:
    before = getattr(magics, trait)
    hz, threshold = magics.registry.refresh_hz, magics.registry.monitor.threshold
    shell.run_line_magic("config", f"AgentMagics.{assignment}")
    errors = _root_errors(caplog)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(f"AgentMagics.{trait} = ") and f"must be {allowed}" in errors[0]
    assert getattr(magics, trait) == before
    assert (magics.registry.refresh_hz, magics.registry.monitor.threshold) == (hz, threshold)


def test_a_good_config_value_still_applies(shell: InteractiveShell, magics: AgentMagics,
                                           caplog: pytest.LogCaptureFixture) -> None:
    shell.run_line_magic("config", "AgentMagics.refresh_hz = 10")
    shell.run_line_magic("config", "AgentMagics.timeout = 2.5")
    shell.run_line_magic("config", "AgentMagics.timeout = None")
    assert not _root_errors(caplog)
    assert magics.refresh_hz == 10.0 and magics.registry.refresh_hz == 10.0 and magics.timeout is None


def test_a_refused_value_does_not_break_reloading_the_extension(shell: InteractiveShell, sim: SimServer,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NBAGENT_BASE_URL", sim.url)
    monkeypatch.setenv("NBAGENT_MODEL", "sim")
    monkeypatch.setenv("NBAGENT_STORE", "off")
    shell.run_line_magic("load_ext", "nbagent")
    try:
        shell.run_line_magic("config", "AgentMagics.refresh_hz = -1")
        shell.run_line_magic("reload_ext", "nbagent")  # raised a TraitError before
        (m,) = [c for c in shell.configurables if isinstance(c, AgentMagics)]
        assert m.refresh_hz == 4.0
        notes = [r.getMessage() for r in caplog.records if r.name == "nbagent.notebook.magics"]
        assert len(notes) == 1 and "AgentMagics.refresh_hz = -1" in notes[0] and "default" in notes[0]
        assert "refresh_hz" not in shell.config.get("AgentMagics", {})
    finally:
        shell.run_line_magic("unload_ext", "nbagent")


async def _run(shell: InteractiveShell, code: str) -> ExecutionResult:
    return await shell.run_cell_async(code, transformed_cell=shell.transform_cell(code))


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("%%agent --timeout nan\nhi", "--timeout must be a finite number of seconds > 0, got nan"),
        ("%%agent --timeout inf\nhi", "--timeout must be a finite number of seconds > 0, got inf"),
        ("%%agent --timeout=-inf\nhi", "--timeout must be a finite number of seconds > 0"),
        ("%agent bench 1 1 nan", "latency a finite number >= 0"),
    ],
)
async def test_non_finite_flags_are_one_line_usage_errors(shell: InteractiveShell, magics: AgentMagics,
                                                          cell: str, expected: str) -> None:
    result = await _run(shell, cell)
    err = result.error_in_exec or result.error_before_exec
    assert isinstance(err, UsageError), err
    assert expected in str(err) and "\n" not in str(err)
    assert not magics.registry.entries
