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
