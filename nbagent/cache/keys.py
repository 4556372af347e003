"""Canonical cache keys: the same request always gets the same key, any change that can alter the answer a new one.

A key is the BLAKE2b digest (128 bits, 32 hex characters) of the request's *canonical JSON*: keys sorted, no
whitespace, numbers normalised (``1 == 1.0 == 1e0``, ``-0.0 == 0``; booleans stay booleans, so ``True`` and
``1`` differ), tuples as lists. Two requests that differ only in the order of their dict entries share a key.

What a response key covers is what goes on the wire plus where it goes: the model name, the endpoint's base
URL, the messages, the tools, ``tool_choice`` (only when tools are sent, as on the wire) and every other
parameter (``temperature``, ``max_tokens``, ``seed``, ``response_format``...). The ``stream`` flag and
``stream_options`` are left out: a streamed and a non-streamed request ask for the same answer, and a stored
entry serves both (streams are stored with their chunks, see :mod:`nbagent.cache.tiered`).

Text UTF-8 cannot encode (lone surrogates, as ``os.fsdecode`` makes of undecodable file names) still gets a
key: such a text is digested with its surrogates kept as they are (``surrogatepass``), so distinct texts keep
distinct keys; descriptions are escaped for humans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..llm.text import encodable
from ..llm.types import ModelRequest

__all__ = ["KEY_VERSION", "canonical_json", "describe_request", "digest", "request_key", "tool_key"]

KEY_VERSION = 1
"""Bumped whenever the key layout changes, so old entries are never served for new requests."""

# body fields that change how the answer is delivered, never the answer itself
_DELIVERY_ONLY = frozenset({"stream", "stream_options"})


_PLAIN = (str, int, bool, type(None))  # exact types passed through as they are


def _normalise(obj: Any) -> Any:
    t = type(obj)
    if t is dict:
        out = {}
        for k, v in obj.items():
            out[k if type(k) is str else str(k)] = v if type(v) in _PLAIN else _normalise(v)
        return out
    if t is list or t is tuple:
        return [v if type(v) in _PLAIN else _normalise(v) for v in obj]
    if t in _PLAIN:
        return obj
    if t is float:
        return int(obj) if obj.is_integer() else obj
    return _normalise_other(obj)


def _normalise_other(obj: Any) -> Any:
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)  # int subclasses (IntEnum) become plain ints
    if isinstance(obj, float):
        return _normalise(float(obj))
    if isinstance(obj, Mapping):
        return _normalise(dict(obj))
    if isinstance(obj, (list, tuple)):
        return _normalise(list(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _normalise(dataclasses.asdict(obj))
    dump = getattr(obj, "model_dump", None)  # pydantic models
    if callable(dump):
        return _normalise(dump())
    if isinstance(obj, (set, frozenset)):
        return sorted((_normalise(v) for v in obj), key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return repr(obj)


def canonical_json(obj: Any) -> str:
    """``obj`` as canonical JSON: sorted keys, no whitespace, ``1.0`` written as ``1``, tuples as lists."""
    return json.dumps(_normalise(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(text: str) -> str:
    """The 32-hex-character BLAKE2b digest of ``text`` (lone surrogates included, as they are)."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def request_key(req: ModelRequest, *, model: str | None = None, base_url: str | None = None) -> str:
    """The cache key of ``req`` sent to ``base_url``; ``model`` fills in when ``req.model`` is empty."""
    body = req.body()
    for name in _DELIVERY_ONLY:
        body.pop(name, None)
    body["model"] = body.get("model") or model or ""
    return digest(canonical_json({"v": KEY_VERSION, "base_url": (base_url or "").rstrip("/"), "body": body}))


def tool_key(tool: str, arguments: Mapping[str, Any]) -> str:
    """The cache key of one call of ``tool`` with ``arguments`` (canonical, so argument order is irrelevant)."""
    return digest(canonical_json({"v": KEY_VERSION, "tool": tool, "args": arguments}))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(str(p.get("text", f"<{p.get('type', 'part')}>")) if isinstance(p, dict) else str(p)
                        for p in content)
    return "" if content is None else str(content)


def describe_request(req: ModelRequest, *, model: str | None = None, width: int = 60) -> str:
    """A one-line description for humans: the model and the last message (role and the start of its text)."""
    name = req.model or model or "?"
    if not req.messages:
        return f"{name}: no messages"
    last = req.messages[-1]
    role = str(last.get("role", "?")) if isinstance(last, dict) else "?"
    text = _content_text(last.get("content")) if isinstance(last, dict) else str(last)
    calls = last.get("tool_calls") if isinstance(last, dict) else None
    if not text and calls:
        names = [str((c.get("function") or {}).get("name", "?")) for c in calls if isinstance(c, dict)]
        text = "calls " + ", ".join(names)
    text = " ".join(text.split())
    if len(text) > width:
        text = text[: width - 1] + "\u2026"
    return encodable(f"{name}: {role} message {text!r} ({len(req.messages)} messages)")
