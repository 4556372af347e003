"""Canonical request keys: stable under dict order and number spelling, sensitive to anything that matters."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nbagent.cache.keys import canonical_json, describe_request, request_key, tool_key
from nbagent.llm.types import ModelRequest

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=20),
                         st.floats(allow_nan=False, allow_infinity=False, width=32))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                           "content": st.text(max_size=40)}), min_size=1, max_size=5)
params = st.dictionaries(st.sampled_from(["temperature", "top_p", "max_tokens", "seed", "stop", "user", "n"]),
                         json_scalars, max_size=5)
tools = st.lists(st.fixed_dictionaries({
    "type": st.just("function"),
    "function": st.fixed_dictionaries({"name": st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                                       "description": st.text(max_size=20),
                                       "parameters": st.dictionaries(st.text(max_size=6), json_values, max_size=3)}),
}), max_size=3)

PROPS = settings(max_examples=150, deadline=None, database=None)


def shuffled(obj: Any, rng: random.Random) -> Any:
    """The same JSON value with every dict's entries in a random order."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: shuffled(v, rng) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rng) for v in obj]
    return obj


def key(msgs: Any, tls: Any = None, prm: Any = None, **kw: Any) -> str:
    req = ModelRequest(model=kw.pop("model", "m"), messages=msgs, tools=tls, tool_choice=kw.pop("tool_choice", None),
                       params=prm or {}, stream=kw.pop("stream", False))
    return request_key(req, base_url=kw.pop("base_url", "http://h/v1"), **kw)


@PROPS
@given(messages, tools, params, st.randoms(use_true_random=False))
def test_dict_order_never_changes_the_key(msgs: Any, tls: Any, prm: Any, rng: random.Random) -> None:
    assert key(msgs, tls, prm) == key(shuffled(msgs, rng), shuffled(tls, rng), shuffled(prm, rng))


@PROPS
@given(json_values, st.randoms(use_true_random=False))
def test_canonical_json_is_order_free(value: Any, rng: random.Random) -> None:
    assert canonical_json(value) == canonical_json(shuffled(value, rng))


@PROPS
@given(messages, st.data())
def test_changing_any_message_text_changes_the_key(msgs: Any, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(msgs) - 1))
    new = data.draw(st.text(max_size=40).filter(lambda t: t != msgs[i]["content"]))
    changed = [dict(m) for m in msgs]
    changed[i]["content"] = new
    assert key(msgs) != key(changed)


@PROPS
@given(messages, params, st.sampled_from(["temperature", "top_p", "max_tokens", "seed", "stop", "user"]),
       json_scalars)
def test_changing_any_param_changes_the_key(msgs: Any, prm: Any, name: str, value: Any) -> None:
    other = dict(prm)
    other[name] = value
    same = name in prm and canonical_json(prm[name]) == canonical_json(value)
    assert (key(msgs, prm=prm) == key(msgs, prm=other)) == same


@PROPS
@given(messages, tools.filter(bool), st.data())
def test_changing_any_tool_changes_the_key(msgs: Any, tls: Any, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(tls) - 1))
    changed = [dict(t, function=dict(t["function"])) for t in tls]
    field = data.draw(st.sampled_from(["name", "description"]))
    changed[i]["function"][field] = changed[i]["function"][field] + "x"
    assert key(msgs, tls) != key(msgs, changed)
    assert key(msgs, tls) != key(msgs, None)


@PROPS
@given(st.integers(-10**9, 10**9))
def test_integral_floats_equal_ints(n: int) -> None:
    msgs = [{"role": "user", "content": "q"}]
    assert key(msgs, prm={"temperature": n}) == key(msgs, prm={"temperature": float(n)})
    assert canonical_json({"a": [n, float(n)]}) == canonical_json({"a": [n, n]})


def test_booleans_are_not_numbers_and_floats_keep_their_value() -> None:
    msgs = [{"role": "user", "content": "q"}]
    assert key(msgs, prm={"logprobs": True}) != key(msgs, prm={"logprobs": 1})
    assert key(msgs, prm={"temperature": 0.7}) != key(msgs, prm={"temperature": 0.70001})
    assert canonical_json({"b": -0.0, "a": (1, 2.5)}) == '{"a":[1,2.5],"b":0}'


def test_model_base_url_and_tool_choice_are_part_of_the_key() -> None:
    msgs = [{"role": "user", "content": "q"}]
    tls = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    base = key(msgs, tls)
    assert key(msgs, tls, model="other") != base
    assert key(msgs, tls, base_url="http://elsewhere/v1") != base
    assert key(msgs, tls, base_url="http://h/v1/") == base  # a trailing slash is the same endpoint
    assert key(msgs, tls, tool_choice="none") != base
    # without tools, tool_choice is not sent, so it cannot change the answer
    assert key(msgs, None, tool_choice="none") == key(msgs, None)
    # the endpoint's model fills an empty request model
    req = ModelRequest(model="", messages=msgs)
    assert request_key(req, model="m", base_url="http://h/v1") == key(msgs, model="m")


def test_stream_flag_is_not_part_of_the_key() -> None:
    msgs = [{"role": "user", "content": "q"}]
    assert key(msgs, stream=True) == key(msgs, stream=False)
    assert key(msgs, prm={"stream_options": {"include_usage": True}}) == key(msgs)


def test_key_shape_and_tool_keys() -> None:
    k = key([{"role": "user", "content": "q"}])
    assert len(k) == 32 and int(k, 16) >= 0
    assert tool_key("t", {"a": 1, "b": [1.0, 2]}) == tool_key("t", {"b": [1, 2], "a": 1.0})
    assert tool_key("t", {"a": 1}) != tool_key("u", {"a": 1}) != tool_key("t", {"a": 2})


def test_describe_request_names_the_model_and_last_message() -> None:
    req = ModelRequest(model="gpt", messages=[{"role": "system", "content": "s"},
                                              {"role": "user", "content": "What is   the answer " + "x" * 100}])
    text = describe_request(req)
    assert text.startswith("gpt: user message 'What is the answer") and "(2 messages)" in text and len(text) < 120
    calls = ModelRequest(model="", messages=[{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]}])
    assert describe_request(calls, model="m") == "m: assistant message 'calls lookup' (1 messages)"
