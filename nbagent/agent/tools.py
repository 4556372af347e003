"""``@tool``: typed Python functions as JSON-schema tools, and the per-run context tools may ask for.

A tool is any function, sync or async, with type hints. Its docstring's first paragraph becomes the
description; Google-style ``Args:`` lines become parameter descriptions. A first parameter annotated
:class:`RunContext` is injected by the agent and left out of the schema. Sync tools run in a worker
thread, so a slow tool never blocks the event loop.

>>> @tool
... def add(a: int, b: int = 2) -> int:
...     '''Add two numbers.
...
...     Args:
...         a: the first number
...     '''
...     return a + b
>>> add.schema["function"]["parameters"]["required"]
['a']
"""

from __future__ import annotations

import contextlib
import contextvars
import enum
import functools
import inspect
import json
import re
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, get_args, get_origin, overload

if TYPE_CHECKING:  # pragma: no cover
    import asyncio

    from ..events import EventBus

__all__ = ["RunContext", "Tool", "tool", "tools_by_name"]

LENIENT_JSON = json.JSONDecoder(strict=False)  # raw newlines in strings allowed; one decoder, not one per call

_HAS_TIMEOUT_CM = sys.version_info >= (3, 11)

T = TypeVar("T")


@dataclass
class RunContext:
    """What a tool may know of the run that called it.

    ``resource(key, factory)`` enters ``factory()`` (an async context manager) once per run and keeps it
    until the run ends, so a run leases one sandbox and reuses it across steps.
    """

    run_id: str
    bus: EventBus
    deps: Any = None
    step: int = 0
    runtime: Any = None  # the nbagent.Runtime the run belongs to
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack, repr=False)
    _resources: dict[str, Any] = field(default_factory=dict, repr=False)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict, repr=False)

    async def resource(self, key: str, factory: Callable[[], AbstractAsyncContextManager[T]]) -> T:
        if key in self._resources:
            return typing.cast(T, self._resources[key])
        import asyncio

        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # two tools of one step asking at once get the same resource
            if key not in self._resources:
                self._resources[key] = await self._stack.enter_async_context(factory())
        return typing.cast(T, self._resources[key])

    def holds_resources(self) -> bool:
        """Whether a resource was entered (or is being entered) for this run: :meth:`aclose` has work to do."""
        return bool(self._resources or self._locks)

    async def aclose(self) -> None:
        """Exit every resource entered for this run (the agent calls it when the run ends)."""
        self._resources.clear()
        await self._stack.aclose()


_PRIMITIVES: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
    Any: {},
}


def _schema_for(tp: Any) -> dict[str, Any]:
    """JSON schema of a type hint (primitives, containers, Optional/Union, Literal, Enum, TypedDict)."""
    if tp in _PRIMITIVES:
        return dict(_PRIMITIVES[tp])
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is typing.Annotated:
        schema = _schema_for(args[0])
        for meta in args[1:]:
            if isinstance(meta, str):
                schema["description"] = meta
        return schema
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        schema = {"enum": list(args)}
        if len(kinds) == 1:
            schema.update(_schema_for(kinds.pop()))
        return schema
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            return _schema_for(non_null[0])  # Optional[X]: optional-ness is expressed by "required"
        return {"anyOf": [_schema_for(a) for a in args]}
    if origin in (list, tuple, set, frozenset, typing.Sequence) or tp in (list, tuple, set):
        schema = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = _schema_for(args[0])
        return schema
    if origin in (dict, typing.Mapping) or tp is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _schema_for(args[1])
        return schema
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        return {"enum": values}
    if isinstance(tp, type) and typing.is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return {
            "type": "object",
            "properties": {k: _schema_for(v) for k, v in hints.items()},
            "required": sorted(getattr(tp, "__required_keys__", hints)),
        }
    raise TypeError(f"cannot describe type {tp!r} as JSON schema; use str, int, float, bool, list, dict, "
                    "Literal, Enum, TypedDict or Optional of those")


_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\([^)]*\))?\s*:\s*(.+)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """Description (text before any section) and Google-style ``Args:`` descriptions."""
    doc = inspect.cleandoc(doc or "")
    lines = doc.splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.rstrip(":").lower() in {"args", "arguments", "parameters", "returns", "raises", "examples"} \
                and stripped.endswith(":"):
            section = stripped[:-1].lower()
            current = None
            continue
        if section is None:
            description.append(line)
        elif section in {"args", "arguments", "parameters"}:
            m = _ARG_LINE.match(line)
            if m and (line.startswith("    ") or not line.startswith(" ")) and len(line) - len(line.lstrip()) <= 4:
                current = m.group(1).lstrip("*")
                params[current] = m.group(2).strip()
            elif current and stripped:
                params[current] += " " + stripped
    text = "\n".join(description).strip()
    return text.split("\n\n")[0].replace("\n", " ").strip(), params


class Tool:
    """A callable exposed to the model: its name, description, JSON schema and how to call it."""

    inline: bool = False  # (a class default: subclasses that build themselves, like MCP tools, run as async)

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        cache: bool = False,
        timeout: float | None = None,
        facts: Mapping[str, Any] | None = None,
        inline: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        doc_text, doc_params = _parse_docstring(fn.__doc__ or "")
        self.description = description if description is not None else doc_text
        self.cache = cache
        self.timeout = timeout
        self.facts: Mapping[str, Any] = facts if facts is not None else {}
        """What a policy may know of the tool beyond its arguments (sandbox tools: ``sandbox``, ``network``)."""
        self.is_async = inspect.iscoroutinefunction(fn)
        if inline and self.is_async:
            raise ValueError(f"tool {self.name!r}: inline=True is for sync functions (an async tool already runs "
                             f"on the event loop)")
        if inline and timeout is not None:
            raise ValueError(f"tool {self.name!r}: a timeout cannot interrupt an inline tool (it runs on the event "
                             f"loop); drop inline=True to run it in a thread with its timeout")
        self.inline = inline
        """A sync tool called on the event loop itself, not in a thread (see :func:`tool`)."""
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)
        self.takes_context = False
        properties: dict[str, Any] = {}
        required: list[str] = []
        for i, (pname, param) in enumerate(sig.parameters.items()):
            hint = hints.get(pname, Any)
            if i == 0 and (hint is RunContext or get_origin(hint) is RunContext):
                self.takes_context = True
                continue
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"tool {self.name!r}: *args / **kwargs cannot be described to a model")
            prop = _schema_for(hint)
            if pname in doc_params and "description" not in prop:
                prop["description"] = doc_params[pname]
            if param.default is inspect.Parameter.empty:
                required.append(pname)
            elif param.default is not None and _jsonable(param.default):
                prop["default"] = param.default
            properties[pname] = prop
        self.parameters: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
        self._param_names = set(properties)
        self.schema: dict[str, Any] = {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    def parse_arguments(self, raw: str) -> dict[str, Any]:
        """Parse the model's JSON arguments; raise ``ValueError`` with a message the model can act on."""
        if not raw or not raw.strip():
            args: Any = {}
        else:
            try:
                args = LENIENT_JSON.decode(raw)  # raw newlines in strings: small models write them
            except json.JSONDecodeError as e:
                raise ValueError(f"arguments are not valid JSON ({e.msg} at char {e.pos}): {raw[:200]!r}") from None
        if not isinstance(args, dict):
            raise ValueError(f"arguments must be a JSON object, got {type(args).__name__}")
        unknown = set(args) - self._param_names
        if unknown:
            raise ValueError(f"unknown argument(s) {sorted(unknown)}; expected {sorted(self._param_names)}")
        missing = [p for p in self.parameters["required"] if p not in args]
        if missing:
            raise ValueError(f"missing required argument(s) {missing}")
        return args

    async def call(self, ctx: RunContext | None, args: dict[str, Any]) -> Any:
        """Run the tool: async tools on the loop, sync tools in a thread of the runtime's
        :class:`~nbagent.agent.threads.ToolThreads`; bounded by the tool's ``timeout``, else the settings'
        ``[limits] tool_timeout`` (raises ``TimeoutError``)."""
        import asyncio  # here, not at the top: ``@tool`` is used at import time and needs no event loop

        pos: tuple[Any, ...] = (ctx,) if self.takes_context else ()
        runtime = ctx.runtime if ctx is not None else None
        if self.inline:  # declared quick and non-blocking: no thread hop, and no timeout can stop it
            return contextvars.copy_context().run(self.fn, *pos, **args)  # its context, as in a thread
        if self.is_async:
            coro: Awaitable[Any] = self.fn(*pos, **args)
        elif runtime is not None:
            coro = runtime.part("tool_threads", _tool_threads).run(self.fn, *pos, **args)
        else:
            coro = asyncio.to_thread(self.fn, *pos, **args)
        timeout = self.timeout
        if timeout is None and runtime is not None:
            timeout = runtime.settings.limits.tool_timeout
        if timeout is not None:
            if _HAS_TIMEOUT_CM:  # no task of its own per call (``wait_for`` makes one before 3.12)
                async with asyncio.timeout(timeout):
                    return await coro
            return await asyncio.wait_for(coro, timeout)  # pragma: no cover - Python 3.10
        return await coro

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def _tool_threads(runtime: Any) -> Any:
    from .threads import ToolThreads

    return ToolThreads(size=runtime.settings.limits.tool_threads)


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None, cache: bool = False, timeout: float | None = None,
    inline: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...
def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    cache: bool = False,
    timeout: float | None = None,
    inline: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Turn a typed function into a :class:`Tool`. Use bare (``@tool``) or with options.

    ``cache=True`` declares the tool deterministic (its results may be cached); ``timeout`` bounds one call.

    A sync tool runs in a thread of the runtime, so a slow or stuck one never blocks the event loop and its
    timeout frees the run. ``inline=True`` declares a sync tool quick and non-blocking (a lookup in memory,
    arithmetic, formatting: no I/O, no sleeps, microseconds): it is called on the event loop itself, which
    saves the thread hand-over (tens to hundreds of microseconds of CPU per call, most of the cost of a cheap
    tool), but nothing can interrupt it (``timeout`` is refused with it) and, while it runs, every other run
    on the loop waits. Like a threaded tool, it runs in a copy of the run's context variables.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, cache=cache, timeout=timeout, inline=inline)

    return wrap(fn) if fn is not None else wrap


def tools_by_name(tools: typing.Iterable[Tool | Callable[..., Any]]) -> dict[str, Tool]:
    """Index tools by name, wrapping plain functions; duplicate names are an error."""
    out: dict[str, Tool] = {}
    for t in tools:
        t = t if isinstance(t, Tool) else Tool(t)
        if t.name in out:
            raise ValueError(f"two tools are named {t.name!r}")
        out[t.name] = t
    return out


