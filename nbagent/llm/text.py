"""Text that UTF-8 cannot carry: lone surrogates, as ``os.fsdecode`` makes of undecodable file names.

A tool that returns ``os.fsdecode(b"name-\\xff")`` puts ``"name-\\udcff"`` into the conversation; JSON
encoders and SQLite refuse to encode it. :func:`encodable` escapes such text where it leaves the process
(the HTTP body, the cache file) and costs nothing for text that encodes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["encodable", "escape_unencodable", "json_encodable"]


def encodable(text: str) -> str:
    """``text`` itself when UTF-8 can encode it, else a copy with each lone surrogate written as an escape.

    Surrogates that stand for undecodable bytes (``os.fsdecode(b"\\xff")`` is ``"\\udcff"``) become ``\\xff``,
    other lone surrogates ``\\udXXX``. The common case costs one ``isascii`` (or one encode) and no copy.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # surrogates that stand for no byte
            return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def escape_unencodable(value: Any) -> Any:
    """A copy of a JSON-like value with every string (keys too) passed through :func:`encodable`."""
    if isinstance(value, str):
        return encodable(value)
    if isinstance(value, dict):
        return {escape_unencodable(k): escape_unencodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_unencodable(v) for v in value]
    return value


def json_encodable(json_text: str) -> str:
    """JSON text with each lone surrogate written as its JSON escape (``\\udcff``): it decodes to the very same
    value, and UTF-8 can encode it. JSON text without one is returned as it is.
    """
    if json_text.isascii():
        return json_text
    try:
        json_text.encode("utf-8")
    except UnicodeEncodeError:
        return json_text.encode("utf-8", "backslashreplace").decode("utf-8")
    return json_text
