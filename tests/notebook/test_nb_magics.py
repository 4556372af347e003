"""%%agent and %agent in a real IPython InteractiveShell, against the simulated server over real HTTP."""

from __future__ import annotations

import asyncio
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from shells import Notebook, make_notebook, usage_error

from nbagent.agent import RunHandle, RunResult
from nbagent.notebook import unregister
from nbagent.notebook.magics import AgentMagics
from nbagent.testing import SimServer

# --- running ------------------------------------------------------------------------------------------


async def test_cell_returns_at_once_and_the_run_finishes_in_the_background(nb: Notebook, sim: SimServer) -> None:
    sim.configure(latency=0.2)
    t0 = time.perf_counter()
    result = await nb.run("%%agent -n bg -o res\nwhat is up?")
    assert result.success and time.perf_counter() - t0 < 5.0
    assert isinstance(nb.ns("res"), RunHandle) and not nb.ns("res").done()
    done = await nb.until_done("bg")
    assert done.ok and done.output == "Answer to: what is up?"
    assert isinstance(nb.ns("res"), RunResult) and nb.ns("res") is done
    entry = nb.registry.get("bg")
    assert entry is not None and entry.state.status == "ok" and entry.state.input_tokens > 0


async def test_flags_reach_the_request(nb: Notebook, sim: SimServer) -> None:
    await nb.run('%%agent -n f -m other-model -s "Be brief." --no-stream\nhello')
    await nb.until_done("f")
    body = sim.history[-1]
    assert body["model"] == "other-model"
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert not body.get("stream")
    await nb.run("%%agent -n g --stream\nhello")
    await nb.until_done("g")
    assert sim.history[-1].get("stream") is True


async def test_tools_from_the_notebook_and_max_steps(nb: Notebook, sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=5)
    await nb.run("from nbagent import tool\n@tool\ndef lookup(key: str) -> str:\n    'Look a key up.'\n"
                 "    return 'v-' + key\ndef plain(n: int) -> int:\n    'Double.'\n    return 2 * n")
    await nb.run("%%agent -n t -t lookup --max-steps 2 -o r\nfind x")
    r = await nb.until_done("t")
    assert r.status == "limit" and r.stop_reason == "max_steps"
    assert [t["function"]["name"] for t in sim.history[-1]["tools"]] == ["lookup"]
    await nb.run("%%agent -n star -t '*' -t plain\nfind y")
    await nb.until_done("star")
    assert sorted(t["function"]["name"] for t in sim.history[-1]["tools"]) == ["lookup", "plain"]


async def test_timeout_flag_ends_the_run(nb: Notebook, sim: SimServer) -> None:
    sim.configure(latency=2.0)
    await nb.run("%%agent -n slow --timeout 0.2\nslow please")
    r = await nb.until_done("slow")
    assert r.status == "limit" and r.stop_reason == "max_wall_time"


async def test_prompt_interpolation(nb: Notebook, sim: SimServer) -> None:
    await nb.run("city = 'Paris'\ninfo = {'n': 3}")
    await nb.run("%%agent -n i\nWeather in {city} for {info[n]} days, as {{json}}")
    await nb.until_done("i")
    assert sim.history[-1]["messages"][-1]["content"] == "Weather in Paris for 3 days, as {json}"
    await nb.run("%%agent -n raw --raw\nkeep {city} as is")
    await nb.until_done("raw")
    assert sim.history[-1]["messages"][-1]["content"] == "keep {city} as is"


async def test_config_traits_are_defaults(nb: Notebook, sim: SimServer) -> None:
    await nb.run("%config AgentMagics.system = 'From config.'")
    await nb.run("%config AgentMagics.model = 'configured'")
    await nb.run("%%agent -n c\nhi")
    await nb.until_done("c")
    assert sim.history[-1]["model"] == "configured"
    assert sim.history[-1]["messages"][0]["content"] == "From config."


async def test_cache_flag_answers_a_repeated_prompt_from_the_cache(nb: Notebook, sim: SimServer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    await nb.run("%%agent -n c1 --cache read-write\nthe same question")
    assert (await nb.until_done("c1")).ok
    before = sim.requests
    await nb.run("%%agent -n c2 --cache read-write -o r\nthe same question")
    r = await nb.until_done("c2")
    assert r.ok and r.usage.cache_hits == 1 and sim.requests == before
    await nb.run("%agent cache")
    out = capsys.readouterr().out
    assert "response hit rate: 50.0%" in out and "cache file (read-write) entries, size: " in out


async def test_sandbox_flag_offers_the_sandbox_tools(nb: Notebook, sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=0)  # the model answers at once: the tools are offered, not called
    await nb.run("%%agent -n sb --sandbox local\nhi")
    await nb.until_done("sb")
    assert {t["function"]["name"] for t in sim.history[-1]["tools"]} == {"python", "shell", "read_file", "write_file"}
    await nb.run("%%agent -n sb2 --sandbox local -t shell\nhi")
    await nb.until_done("sb2")
    assert [t["function"]["name"] for t in sim.history[-1]["tools"]] == ["shell"]


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("%%agent --max-steps many\nhi", "invalid int value"),
        ("%%agent --bogus\nhi", "unrecognized arguments"),
        ("%%agent --cache sometimes\nhi", "invalid choice"),
        ("%%agent --max-steps 0\nhi", "at least 1"),
        ("%%agent --timeout -1\nhi", "> 0"),
        ("%%agent -o 1x\nhi", "not a valid variable name"),
        ("%%agent -n 'a b'\nhi", "run name"),
        ("%%agent\n   ", "the cell is empty"),
        ("%%agent\nhi {undefined_name}", "'undefined_name' in the prompt is not defined"),
        ("%%agent\nhi {0}", "positional field"),
        ("%%agent -t nosuchtool\nhi", "unknown tool 'nosuchtool'"),
        ("%agent frobnicate", "unknown subcommand 'frobnicate'"),
        ("%agent cancel", "usage: %agent cancel"),
        ("%agent cancel ghost", "no run named 'ghost'"),
        ("%agent stats ghost", "no run named 'ghost'"),
        ("%agent wait ghost", "no run named 'ghost'"),
    ],
)
async def test_bad_input_is_a_one_line_usage_error(nb: Notebook, cell: str, expected: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    result = await nb.run(cell)
    assert expected in usage_error(result)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "UsageError" in err
    assert not nb.registry.entries


async def test_a_second_run_with_a_running_name_is_refused(nb: Notebook, sim: SimServer) -> None:
    sim.configure(latency=1.0)
    await nb.run("%%agent -n same\none")
    assert "still running" in usage_error(await nb.run("%%agent -n same\ntwo"))
    nb.registry.cancel("same")
    await nb.until_done("same")
    assert (await nb.run("%%agent -n same\nthree")).success  # a finished name can be reused
    await nb.until_done("same")


async def test_failed_run_is_shown_in_its_state_and_result(nb: Notebook) -> None:
    result = await nb.run("%%agent -n down -o r --base-url http://127.0.0.1:9/v1\nhi")
    assert result.success
    r = await nb.until_done("down")
    assert r.status == "error" and r.error is not None and nb.ns("r") is r
    entry = nb.registry.get("down")
    assert entry is not None and entry.state.status == "error" and entry.state.error
    assert "error" in entry.state.error.lower() or "connect" in entry.state.error.lower()


async def test_bad_settings_become_a_failed_run(nb: Notebook) -> None:
    await nb.run("%config AgentMagics.base_url = 'ftp://nowhere'")
    result = await nb.run("%%agent -n cfg -o r\nhi")
    assert result.success
    entry = nb.registry.get("cfg")
    assert entry is not None and entry.done and entry.result is not None
    assert entry.result.status == "error" and "http://" in entry.result.stop_reason
    assert nb.ns("r") is entry.result


# --- the registry: list, cancel, stop, history --------------------------------------------------------


async def test_cancel_by_name_and_all(nb: Notebook, sim: SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    sim.configure(latency=5.0)
    for name in ("a", "b", "c"):
        await nb.run(f"%%agent -n {name}\nslow {name}")
    await asyncio.sleep(0.05)
    await nb.run("%agent list")
    assert "3 running" in capsys.readouterr().out
    await nb.run("%agent cancel a")
    assert (await nb.until_done("a")).status == "cancelled"
    await nb.run("%agent cancel all")
    assert (await nb.until_done("b")).status == "cancelled"
    assert (await nb.until_done("c")).status == "cancelled"
    out = capsys.readouterr().out
    assert "cancelled: a" in out and "cancelled: b, c" in out
    await nb.run("%agent cancel all")
    assert "nothing to cancel" in capsys.readouterr().out
    await nb.run("%agent history")
    assert [e.name for e in nb.registry.history] == ["a", "b", "c"]


async def test_stop_button_cancels_the_run(nb: Notebook, sim: SimServer) -> None:
    sim.configure(latency=5.0)
    await nb.run("%%agent -n long\nwait for it")
    await asyncio.sleep(0.1)
    entry = nb.registry.get("long")
    assert entry is not None and entry.view is not None and entry.handle is not None
    widget = entry.view.widget  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    widget.stop.click()
    result = await nb.until_done("long")
    assert result.status == "cancelled"
    assert time.perf_counter() - t0 < 2.0  # generous; the cancel itself is immediate
    nb.registry.flush()
    assert widget.stop.disabled and "cancelled" in widget.header.value


async def test_widget_and_static_summary_show_the_tokens(nb: Notebook, sim: SimServer) -> None:
    sim.configure(tool_calls_per_run=1)
    await nb.run("from nbagent import tool\n@tool\ndef lookup(key: str) -> str:\n    'Look up.'\n    return 'v'")
    await nb.run("%%agent -n w -t lookup\nhello")
    await nb.until_done("w")
    nb.registry.flush()
    entry = nb.registry.get("w")
    assert entry is not None and entry.published
    widget = entry.view.widget  # type: ignore[union-attr]
    assert f'data-input-tokens="{entry.state.input_tokens}"' in widget.header.value
    assert entry.state.input_tokens > 0 and entry.state.output_tokens > 0
    assert widget.steps.value.count('class="nbagent-step"') == 2 and "lookup" in widget.steps.value
    assert "Answer to: hello" in widget.answer.value


async def test_subcommands_show_figures(nb: Notebook, sim: SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    await nb.run("%%agent -n s\nhi")
    await nb.until_done("s")
    for line in ("stats", "stats s", "list", "history", "config", "cache", "sandboxes", "help", ""):
        result = await nb.run(f"%agent {line}")
        assert result.success, (line, result.error_in_exec)
    out = capsys.readouterr().out
    assert "llm.latency" in out and "AgentMagics.refresh_hz" in out and "response hit rate" in out
    assert "list, cancel NAME|all" in out or "cancel NAME|all" in out


async def test_wait_with_nothing_running_returns_at_once(nb: Notebook, capsys: pytest.CaptureFixture[str]) -> None:
    assert (await nb.run("%agent wait")).success
    assert "no runs to wait for" in capsys.readouterr().out


def test_without_a_running_loop_the_cell_runs_to_the_end(shell: InteractiveShell, sim: SimServer) -> None:
    notebook = make_notebook(shell, sim)
    try:
        result = shell.run_cell("%%agent -n sync -o r\nno loop here")
        assert result.success
        r = shell.user_ns["r"]
        assert isinstance(r, RunResult) and r.ok and r.output == "Answer to: no loop here"
        entry = notebook.registry.get("sync")
        assert entry is not None and entry.published
    finally:
        unregister(shell)
        notebook.registry.close()


def test_nothing_patched_asyncio_in_this_process() -> None:
    # nest-asyncio2 is applied only where a call must block inside a running kernel loop
    assert not hasattr(asyncio, "_nest_patched")


def test_load_and_unload_the_extension(shell: InteractiveShell, sim: SimServer,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBAGENT_BASE_URL", sim.url)
    monkeypatch.setenv("NBAGENT_MODEL", "sim")
    shell.run_line_magic("load_ext", "nbagent")
    try:
        assert "agent" in shell.magics_manager.magics["cell"] and "agent" in shell.magics_manager.magics["line"]
        assert any(type(c).__name__ == "AgentMagics" for c in shell.configurables)
        result = shell.run_cell("%%agent -n ext -o r\nfrom the extension")
        assert result.success and shell.user_ns["r"].ok
    finally:
        shell.run_line_magic("unload_ext", "nbagent")
    assert not any(type(c).__name__ == "AgentMagics" for c in shell.configurables)


def test_help_documents_the_flags() -> None:
    doc = AgentMagics.agent.__doc__ or ""
    for flag in ("--model", "--base-url", "--system", "--tools", "--max-steps", "--timeout", "--sandbox", "--cache",
                 "--stream", "--out", "--wait", "--name", "list", "cancel", "dashboard"):
        assert flag in doc, flag



# --- first tool, profile, history, bench -------------------------------------------------------------


async def test_first_tool_flag(nb: Notebook, sim: SimServer) -> None:
    await nb.run("from nbagent import tool\n@tool\ndef lookup(key: str) -> str:\n    '''Look up.'''\n    return key")
    msg = usage_error(await nb.run("%%agent -t lookup --first-tool nope\nq"))
    assert "--first-tool 'nope'" in msg
    await nb.run("%%agent -n ft -t lookup --first-tool lookup\nq")
    result = await nb.until_done("ft")
    assert result.ok
    assert sim.history[0]["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}


async def test_profile_flag_attaches_a_profile_to_the_result(nb: Notebook) -> None:
    await nb.run("%%agent -n prof --profile -o pr\nprofile me")
    result = await nb.until_done("prof")
    assert result.ok and result.profile is not None
    assert set(result.profile.breakdown) >= {"model_wait", "client_overhead"}
    entry = nb.registry.get("prof")
    assert entry is not None and "model_wait" in entry.state.profile_text and "awaited" in entry.state.profile_text


async def test_history_reads_the_run_store(nb: Notebook, tmp_path, monkeypatch) -> None:
    from nbagent import store

    monkeypatch.setenv("NBAGENT_STORE_PATH", str(tmp_path / "runs.db"))
    kept = nb.registry.runtime.enable_store(path=tmp_path / "runs.db")
    assert kept is not None
    try:
        await nb.run("%%agent -n kept\nremember me")
        await nb.until_done("kept")
        kept.flush()
        frame = store.history(path=tmp_path / "runs.db")
        assert "kept" in set(frame["name"])
        result = await nb.run("%agent history 5")
        assert result.error_in_exec is None
        assert "expected a number of runs" in usage_error(await nb.run("%agent history three"))
    finally:
        nb.registry.runtime.disable_store()


async def test_bench_subcommand_errors_are_one_line(nb: Notebook) -> None:
    assert "expected RUNS" in usage_error(await nb.run("%agent bench many"))
    assert "must be >= 1" in usage_error(await nb.run("%agent bench 0 1"))


async def test_bench_subcommand_runs_a_small_load_test(nb: Notebook, capsys) -> None:
    result = await nb.run("%agent bench 6 3 0")
    assert result.error_in_exec is None, result.error_in_exec
