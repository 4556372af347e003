"""Values SQLite cannot take, made writable; errors, made fit for a log line.

SQLite stores text as UTF-8, which cannot encode lone surrogates (what ``os.fsdecode`` makes of bytes that are
not UTF-8, such as a file name). The writer escapes such characters with a backslash (``\\udcff``) when a batch
fails on them, so the text is kept, readable, and read back as the escaped text.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_error", "escape_text", "escaped"]


def escape_text(text: str) -> str:
    """``text`` with every character UTF-8 cannot encode (lone surrogates) backslash-escaped."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One short, printable line for a log: never the data that failed (a ``UnicodeEncodeError``'s repr holds
    the whole text it could not encode)."""
    if isinstance(exc, UnicodeError):
        reason = getattr(exc, "reason", "")
        start = getattr(exc, "start", None)
        text = f"{type(exc).__name__}: {reason}" + (f" at position {start}" if start is not None else "")
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = escape_text(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def escaped(value: Any) -> Any:
    """A copy of a record's value with every text escaped by :func:`escape_text` (other types kept, unknown
    types as the ``str`` JSON would store)."""
    if isinstance(value, str):
        return escape_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {escaped(k): escaped(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escaped(v) for v in value]
    return escape_text(str(value))
