"""Integration tests against the real llama.cpp server serving the real SmolLM2-135M model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nbagent import Agent, local_model, tool
from nbagent.events import EventBus
from nbagent.llm import LLMClient, ModelRequest
from nbagent.local_model import LocalModelServer, ensure_server, gguf_path
from nbagent.runtime import Runtime

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}


def client_for(server: LocalModelServer) -> LLMClient:
    from nbagent.config import Settings

    settings = Settings.load(env={"NBAGENT_BASE_URL": server.url, "NBAGENT_MODEL": server.alias})
    return LLMClient(settings, bus=EventBus())


def test_weights_come_from_the_wheel():
    path = gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "site-packages" in str(path) or "dist-packages" in str(path)


async def test_completion_with_server_usage(llama: LocalModelServer) -> None:
    c = client_for(llama)
    resp = await c.request(ModelRequest(model=llama.alias, messages=[
        {"role": "user", "content": "Say hello in one word."}], params={"max_tokens": 16, "temperature": 0}))
    assert resp.text.strip()
    assert resp.usage_source == "server" and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    await c.aclose()


async def test_streamed_completion(llama: LocalModelServer) -> None:
    c = client_for(llama)
    deltas: list[str] = []
    resp = await c.request(ModelRequest(model=llama.alias, messages=[
        {"role": "user", "content": "Count from one to five."}], params={"max_tokens": 24, "temperature": 0},
        stream=True), on_text=deltas.append)
    assert len(deltas) > 1 and "".join(deltas) == resp.text and resp.ttft is not None
    assert resp.usage.output_tokens > 0
    await c.aclose()


async def test_forced_tool_call(llama: LocalModelServer) -> None:
    c = client_for(llama)
    resp = await c.request(ModelRequest(
        model=llama.alias, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        params={"max_tokens": 64, "temperature": 0}))
    assert [tc.name for tc in resp.tool_calls] == ["get_weather"]
    assert resp.to_message()["content"] == ""  # never null: llama.cpp's server rejects null content
    await c.aclose()


async def test_streamed_tool_call(llama: LocalModelServer) -> None:
    c = client_for(llama)
    resp = await c.request(ModelRequest(
        model=llama.alias, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
        params={"max_tokens": 64, "temperature": 0}, stream=True))
    # llama.cpp repeats the function name in every chunk; it must not be concatenated
    assert [tc.name for tc in resp.tool_calls] == ["get_weather"]
    await c.aclose()


async def test_tool_call_round_trip_through_the_agent_loop(llama: LocalModelServer) -> None:
    calls: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        calls.append(city)
        return f"It is sunny in {city}."

    c = client_for(llama)
    agent = Agent(llama.alias, [get_weather], runtime=Runtime(c.settings, client=c), max_steps=4,
                  params={"max_tokens": 64, "temperature": 0,
                          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    result = await agent.run("What is the weather in Paris?")
    # the forced tool choice makes the tiny model call the tool every step: the loop runs the tool, sends
    # its result back, and ends honestly (stuck detection or the step limit), never by hanging
    assert calls, result.stop_reason
    assert result.status in {"stuck", "limit"} and result.usage.requests >= 2
    tool_msgs = [m for m in result.messages if m["role"] == "tool"]
    assert tool_msgs and tool_msgs[0]["content"].startswith("It is sunny in")
    assert result.usage.tokens.input_tokens > 0
    await c.aclose()


async def test_default_endpoint_falls_back_to_the_embedded_model(llama: LocalModelServer) -> None:
    from nbagent.config import Settings

    agent = Agent(runtime=Runtime(Settings.load(env={}), bus=EventBus()), params={"max_tokens": 12})
    result = await agent.run("Hi")
    assert result.ok, result.stop_reason
    assert agent.endpoint().base_url == llama.url
    await agent.client.aclose()


async def test_the_embedded_model_caps_each_answer(llama: LocalModelServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from nbagent.config import Settings

    assert local_model.default_max_tokens() == 256  # the default cap
    # a small cap, so the test waits for 16 tokens, not 256, on a busy machine
    monkeypatch.setenv("NBAGENT_EMBEDDED_MAX_TOKENS", "16")
    async with Runtime(Settings.load(env={})) as rt:
        agent = Agent(runtime=rt)  # no max_tokens of its own
        result = await agent.run("Write a very long story about a cat.")
    assert result.ok, result.stop_reason
    assert agent.params["max_tokens"] == 16
    assert 0 < result.usage.tokens.output_tokens <= 16
    assert llama.running  # a runtime that did not start the server leaves it running


def test_one_server_per_process(llama: LocalModelServer) -> None:
    assert ensure_server() is llama and llama.running


def test_stop_leaves_no_process() -> None:
    server = LocalModelServer().start()
    pid = server.process.pid
    server.stop()
    assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def test_server_dies_with_a_killed_parent(tmp_path) -> None:
    code = (
        "from nbagent.local_model import ensure_server; import sys, time\n"
        "s = ensure_server(); print(s.process.pid, flush=True); time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert os.path.exists(f"/proc/{child_pid}")
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(300):
        if not os.path.exists(f"/proc/{child_pid}") or _is_zombie(child_pid):
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child_pid}") or _is_zombie(child_pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")
    except OSError:
        return True


def test_llama_threads_leave_a_core_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fewer thread than this process's cores (at least one), or NBAGENT_LOCAL_THREADS; the command
    passes it to llama.cpp; a bad value is a clear error."""
    from nbagent.errors import ConfigError
    from nbagent.local_model import default_threads

    monkeypatch.delenv("NBAGENT_LOCAL_THREADS", raising=False)
    assert default_threads() == max(len(os.sched_getaffinity(0)) - 1, 1)
    monkeypatch.setenv("NBAGENT_LOCAL_THREADS", "3")
    server = LocalModelServer()
    assert server.n_threads == 3 and server.command()[-2:] == ["--n_threads", "3"]
    for bad in ("0", "two"):
        monkeypatch.setenv("NBAGENT_LOCAL_THREADS", bad)
        with pytest.raises(ConfigError, match="NBAGENT_LOCAL_THREADS"):
            default_threads()
