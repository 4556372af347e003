"""Agents: the tool-calling loop, ``@tool`` and the per-run context."""

from __future__ import annotations

from .loop import Agent, RunHandle, RunResult
from .tools import RunContext, Tool, tool

__all__ = ["Agent", "RunContext", "RunHandle", "RunResult", "Tool", "tool"]
