"""JSON in and out of the HTTP body: orjson when it is installed (``pip install nbagent[fast]``), else json.

:func:`dumps_body` never fails on text UTF-8 cannot carry: a body with a lone surrogate (a tool's undecodable
file name) is sent with it escaped (:func:`nbagent.llm.text.escape_unencodable`), and only then.
"""

from __future__ import annotations

import json
from typing import Any

from .text import escape_unencodable

__all__ = ["HAS_ORJSON", "dumps_body", "loads"]

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is optional
    _orjson = None  # type: ignore[assignment]

HAS_ORJSON = _orjson is not None


def _dumps_json(body: Any) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: escape it, once
        return json.dumps(escape_unencodable(body), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")


if _orjson is not None:
    _orjson_dumps = _orjson.dumps

    def dumps_body(body: Any) -> bytes:
        """``body`` as compact UTF-8 JSON bytes (lone surrogates escaped)."""
        try:
            return _orjson_dumps(body)
        except TypeError:  # a lone surrogate, or a value orjson does not take: the json module decides
            return _dumps_json(body)

    loads = _orjson.loads
else:  # pragma: no cover - orjson is optional
    dumps_body = _dumps_json
    loads = json.loads
