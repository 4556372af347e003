"""Replies and the default deterministic behaviour of the simulated chat server."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: A tool call in a :class:`Reply`: ``(function name, arguments)`` where the arguments are a dict
#: (serialised to JSON) or a raw string sent verbatim (which may deliberately be invalid JSON).
ToolCallSpec = tuple[str, dict[str, Any] | str]


@dataclass(frozen=True)
class Reply:
    """One assistant reply produced by the simulated server.

    ``text`` is the message content, ``tool_calls`` a list of ``(name, args)`` tuples where ``args`` is a dict
    or a raw JSON string. ``usage`` overrides fields of the computed usage block and ``finish_reason`` the
    computed finish reason (``"tool_calls"`` when there are tool calls, ``"stop"`` otherwise).
    """

    text: str | None = None
    tool_calls: Sequence[ToolCallSpec] | None = None
    usage: dict[str, int] | None = None
    finish_reason: str | None = None

    @property
    def effective_finish_reason(self) -> str:
        """The finish reason sent to the client."""
        if self.finish_reason is not None:
            return self.finish_reason
        return "tool_calls" if self.tool_calls else "stop"

    def encoded_tool_calls(self) -> list[tuple[str, str]]:
        """Return the tool calls as ``(name, arguments string)`` pairs."""
        out: list[tuple[str, str]] = []
        for name, args in self.tool_calls or ():
            out.append((name, args if isinstance(args, str) else json.dumps(args, separators=(",", ":"))))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable form, the inverse of :meth:`from_dict`."""
        return {
            "text": self.text,
            "tool_calls": [[name, args] for name, args in self.tool_calls] if self.tool_calls is not None else None,
            "usage": self.usage,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Reply:
        """Build a reply from a dict (as made by :meth:`to_dict`) or from a bare text string."""
        if isinstance(data, str):
            return cls(text=data)
        raw_calls = data.get("tool_calls")
        calls = [(str(c[0]), c[1]) for c in raw_calls] if raw_calls is not None else None
        return cls(
            text=data.get("text"),
            tool_calls=calls,
            usage=data.get("usage"),
            finish_reason=data.get("finish_reason"),
        )


#: A pluggable behaviour: receives the request body, returns the reply.
Behavior = Callable[[dict[str, Any]], Reply]


def content_text(content: Any) -> str:
    """Return the text of a message ``content`` (a string, a list of content parts, or None)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    return str(content)


def estimate_prompt_tokens(messages: Any) -> int:
    """Cheap deterministic prompt-size estimate: characters of the contents // 4 + 4 per message."""
    if not isinstance(messages, list):
        return 0
    chars = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        chars += len(content_text(msg.get("content")))
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict):
                    chars += len(str(fn.get("arguments") or "")) + len(str(fn.get("name") or ""))
    return chars // 4 + 4 * len(messages)


def estimate_completion_tokens(text: str | None, tool_calls: Sequence[tuple[str, str]]) -> int:
    """Completion-size estimate: ``len(text) // 4 + 1`` plus the argument lengths of tool calls // 4."""
    chars = sum(len(args) for _, args in tool_calls)
    return len(text or "") // 4 + 1 + chars // 4


def _value_for_schema(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return "x"
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in schema:
        return schema["const"]
    typ = schema.get("type")
    if isinstance(typ, list):
        non_null = [t for t in typ if t != "null"]
        typ = non_null[0] if non_null else "null"
    if typ is None:
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return _value_for_schema(options[0])
        return "x"
    return {
        "string": "x",
        "integer": 1,
        "number": 1.0,
        "boolean": True,
        "array": [],
        "object": {},
        "null": None,
    }.get(typ, "x")


def args_from_schema(parameters: Any) -> dict[str, Any]:
    """Generate arguments for each required property of a JSON-schema ``parameters`` object."""
    if not isinstance(parameters, dict):
        return {}
    props = parameters.get("properties")
    props = props if isinstance(props, dict) else {}
    required = parameters.get("required")
    if not isinstance(required, list):
        return {}
    return {str(name): _value_for_schema(props.get(name)) for name in required}


def _tool_function(tool: Any) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function")
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return fn
    return None


def first_tool_name(body: dict[str, Any]) -> str | None:
    """Return the name of the first function tool of a request, if any."""
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            fn = _tool_function(tool)
            if fn is not None:
                return str(fn["name"])
    return None


def default_behavior(body: dict[str, Any], tool_calls_per_run: int = 1) -> Reply:
    """The deterministic default behaviour.

    While the request offers tools and fewer than ``tool_calls_per_run`` tool results follow the last user
    message, call the first tool (or the one named by ``tool_choice``; none with ``tool_choice="none"``) with
    arguments generated from its schema; otherwise answer
    ``"Answer to: <last user text>"`` (plus ``" (tool said: ...)"`` when the last message is a tool result).
    """
    messages = body.get("messages")
    msgs: list[Any] = messages if isinstance(messages, list) else []
    last_user = -1
    for i in range(len(msgs) - 1, -1, -1):
        msg = msgs[i]
        if isinstance(msg, dict) and msg.get("role") == "user":
            last_user = i
            break
    n_tool = sum(1 for m in msgs[last_user + 1 :] if isinstance(m, dict) and m.get("role") == "tool")
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if isinstance(tools, list) and tools and n_tool < tool_calls_per_run and choice != "none":
        wanted = None
        if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
            wanted = choice["function"].get("name")
        functions = [fn for fn in map(_tool_function, tools) if fn is not None]
        chosen = [fn for fn in functions if fn["name"] == wanted] or functions
        if chosen:
            fn = chosen[0]
            return Reply(text="", tool_calls=[(str(fn["name"]), args_from_schema(fn.get("parameters")))])
    user_text = content_text(msgs[last_user].get("content")) if last_user >= 0 else ""
    text = "Answer to: " + user_text[:80]
    if msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "tool":
        text += " (tool said: " + content_text(msgs[-1].get("content"))[:40] + ")"
    return Reply(text=text)
