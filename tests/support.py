"""Helpers shared by tests (import them from ``support``: every test folder has its own ``conftest``)."""

from __future__ import annotations

from nbagent.config import Settings
from nbagent.testing import SimServer

__all__ = ["Sleeps", "sim_settings"]


class Sleeps:
    """An injected sleep that records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def sim_settings(srv: SimServer, **overrides: object) -> Settings:
    return Settings.load(env={"NBAGENT_BASE_URL": srv.url, "NBAGENT_MODEL": "sim"}, **overrides)
