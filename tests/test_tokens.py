import base64
import struct

import pytest

from nbagent.errors import ContextWindowExceeded
from nbagent.llm.tokens import TokenCounter, check_fits, encoding, image_tokens


def test_real_tiktoken_encoding_is_loaded_offline():
    enc = encoding()
    assert enc.name.startswith("cl100k_base")
    assert enc.encode_ordinary("hello world") == [15339, 1917]


def test_message_counts_follow_openai_rule():
    c = TokenCounter()
    msgs = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi!"}]
    enc = encoding()
    # 3 per message + role + content, plus 3 to prime the reply
    expected = 3 + sum(3 + len(enc.encode(m["role"])) + len(enc.encode(m["content"])) for m in msgs)
    assert len(enc.encode("Hi!")) == 2
    assert c.count_messages(msgs) == expected


def test_growing_conversation_is_not_re_encoded():
    c = TokenCounter()
    msgs = [{"role": "user", "content": f"message {i}"} for i in range(50)]
    c.count_messages(msgs)
    assert c.encoded == 50
    msgs.append({"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]})
    c.count_messages(msgs)
    assert c.encoded == 51


def test_tools_counted_as_sent_json():
    c = TokenCounter()
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    n = c.count_tools(tools)
    assert n > 9
    assert c.count_request([{"role": "user", "content": "x"}], tools) == c.count_messages(
        [{"role": "user", "content": "x"}]) + n


def _png(w: int, h: int) -> str:
    data = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + struct.pack(">II", w, h) + b"\x08\x02\x00\x00\x00"
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_image_tile_rule():
    assert image_tokens(_png(4000, 4000), "low") == 85
    # 1024x1024 -> 768x768 -> 4 tiles
    assert image_tokens(_png(1024, 1024)) == 170 * 4 + 85
    # 2048x4096 -> 1024x2048 -> 768x1536 -> 2x3 tiles
    assert image_tokens(_png(2048, 4096), "high") == 170 * 6 + 85
    # small image: one tile
    assert image_tokens(_png(200, 100)) == 170 + 85
    # remote URL: unknown size counted as 1024x1024
    assert image_tokens("https://example.com/cat.png") == 765
    c = TokenCounter()
    msg = {"role": "user", "content": [{"type": "text", "text": "what?"},
                                       {"type": "image_url", "image_url": {"url": _png(200, 100)}}]}
    assert c.count_message(msg) == 3 + 1 + 2 + 255


def test_preflight_raises_before_sending():
    check_fits(100, 1000, 100)
    check_fits(100, None, 10**9)
    with pytest.raises(ContextWindowExceeded, match="context window is 1,000") as e:
        check_fits(950, 1000, 100, "m")
    assert e.value.prompt_tokens == 950


def test_counts_are_cached_by_content_and_keep_no_message_alive():
    import gc
    import weakref

    c = TokenCounter()

    class Msg(dict):  # a dict that can be weakly referenced, to see whether the counter keeps it
        pass

    msg = Msg(role="user", content="the same words")
    ref = weakref.ref(msg)
    n = c.count_message(msg)
    del msg
    gc.collect()
    assert ref() is None  # the cache holds the message's strings, not the message
    # an equal message (another run's copy) is a hit; a different one is encoded
    assert c.count_message({"role": "user", "content": "the same words"}) == n and c.encoded == 1
    assert c.count_message({"role": "user", "content": "other words"}) != 0 and c.encoded == 2
    # a tool call's arguments are part of the key
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}
    longer = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"a": 1, "b": [1, 2, 3]}'}}]}
    assert c.count_message(longer) > c.count_message(call) and c.encoded == 4


def test_messages_with_parts_are_cached_by_identity_and_the_cache_is_bounded():
    c = TokenCounter(max_cached=3)
    parts = {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": _png(200, 100)}}]}
    n = c.count_message(parts)
    assert n == c.count_message(parts) and c.encoded == 1  # cached by identity
    for i in range(10):  # the cache stays bounded
        c.count_message({"role": "user", "content": f"m{i}"})
    assert len(c._cache) <= 3
