"""From a ``%%agent`` cell to an agent: prompt interpolation, tool lookup and the run's settings.

Errors a user can fix in the cell are raised as IPython ``UsageError`` (one line, no traceback).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError

from .. import local_model
from ..agent import Agent, Tool
from ..errors import EndpointNotConfigured
from .session import RunRegistry

__all__ = ["CellSpec", "interpolate", "resolve_policy", "resolve_tools"]


@dataclass
class CellSpec:
    """One ``%%agent`` cell, parsed: the prompt and every setting of its run (None = the default)."""

    prompt: str
    name: str | None = None
    model: str | None = None
    base_url: str | None = None
    system: str | None = None
    tools: list[str] = field(default_factory=list)
    max_steps: int | None = None
    timeout: float | None = None
    sandbox: str | None = None
    cache: str | None = None
    stream: bool | None = None
    out: str | None = None
    wait: bool = False
    first_tool: str | None = None
    profile: bool = False
    policy: Any = None  # a nbagent.policy.Policy; None: the settings' [policy], if any; False: none
    tags: list[str] = field(default_factory=list)


class _Namespace(string.Formatter):
    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        if isinstance(key, int):
            raise UsageError(f"positional field {{{key}}} in the prompt: use a name, or {{{{ }}}} for a brace")
        if key not in kwargs:
            raise UsageError(f"name {key!r} in the prompt is not defined in the notebook (write {{{{ for a "
                             f"literal brace, or use --raw)")
        return kwargs[key]


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """Fill ``{name}`` (also ``{name.attr}``, ``{name[0]}``, ``{name:.2f}``) from ``namespace``; ``{{`` is ``{``."""
    try:
        return _Namespace().vformat(template, (), namespace)
    except UsageError:
        raise
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cannot fill the prompt: {msg} (write {{{{ for a literal brace, or use --raw)") from None


def resolve_tools(names: list[str], namespace: Mapping[str, Any], registry: Mapping[str, Tool]) -> list[Tool]:
    """Tools by name: notebook variables (``@tool`` functions or plain functions), then ``registry`` (registered
    and built-in tools).

    ``*`` takes every ``Tool`` defined in the notebook.
    """
    out: dict[str, Tool] = {}
    for raw in names:
        for name in filter(None, (n.strip() for n in raw.split(","))):
            if name == "*":
                out.update({t.name: t for t in namespace.values() if isinstance(t, Tool)})
                continue
            value = namespace.get(name, registry.get(name))
            if isinstance(value, Tool):
                out[value.name] = value
            elif callable(value) and not isinstance(value, type):
                try:
                    tool = Tool(value)
                except (TypeError, ValueError) as exc:
                    raise UsageError(f"{name} cannot be a tool: {exc}") from None
                out[tool.name] = tool
            else:
                known = sorted({k for k, v in namespace.items() if isinstance(v, Tool)} | set(registry))
                raise UsageError(f"unknown tool {name!r}; tools defined: {', '.join(known) or 'none'} "
                                 f"(define one with @tool)")
    return list(out.values())


def resolve_policy(name: str | None, namespace: Mapping[str, Any]) -> Any:
    """``--policy NAME``: the notebook variable holding a :class:`~nbagent.policy.Policy`; ``off`` for none.

    Returns the policy, ``False`` for ``off``, or None when no name is given (the settings' policy applies).
    """
    if name is None:
        return None
    if name in ("off", "none"):
        return False
    from ..policy import Policy

    value = namespace.get(name)
    if isinstance(value, Policy):
        return value
    if value is None:
        raise UsageError(f"--policy {name!r} is not defined in the notebook (make one with nbagent.policy.Policy, "
                         f"or use --policy off)")
    raise UsageError(f"--policy {name!r} is a {type(value).__name__}, not a nbagent.policy.Policy")


def agent_factory(spec: CellSpec, registry: RunRegistry, tools: list[Tool]) -> Callable[[], Agent]:
    """Build the agent lazily, so that bad settings become a failed run instead of a traceback."""

    def build() -> Agent:
        kwargs: dict[str, Any] = {"system": spec.system, "max_steps": spec.max_steps, "stream": spec.stream,
                                  "base_url": spec.base_url,
                                  "first_tool": spec.first_tool, "tags": tuple(spec.tags),
                                  "policy": (registry.default_policy or False) if spec.policy is None else
                                  registry.with_approvals(spec.policy)}
        mode = spec.cache or "off"
        cache = registry.runtime.response_cache(mode)
        if cache is not None:
            kwargs["cache"] = cache
            kwargs["tool_cache"] = registry.runtime.tool_cache(mode)
        agent = registry.agent(spec.model, tools, **kwargs)
        if spec.timeout is not None:
            agent.limits.max_wall_time = spec.timeout
        try:
            agent.endpoint()  # resolve now: a missing endpoint fails the run before it starts
        except EndpointNotConfigured:
            if not (agent.settings.embedded and local_model.available()):
                raise  # otherwise the run starts the embedded model
        return agent

    return build
