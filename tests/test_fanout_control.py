"""Live control of a batch: pause stops new model calls, resume continues, concurrency and limits change while
it runs; the bench obeys the same control. Against the simulated server over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from nbagent import Agent, Settings, tool
from nbagent.bench import bench
from nbagent.control import BatchControl, Gate, before_model_call
from nbagent.events import EventBus
from nbagent.fanout import Batch
from nbagent.fanout import map as nb_map
from nbagent.runtime import Runtime
from nbagent.testing import SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def make_agent(url: str) -> Agent:
    settings = Settings.load(env={"NBAGENT_BASE_URL": url, "NBAGENT_MODEL": "sim"})
    return Agent("sim", [lookup], runtime=Runtime(settings, bus=EventBus()))


async def until(cond: Callable[[], bool], what: str, limit: float = 20.0) -> None:
    """Wait (polling) until ``cond()``; fail with ``what`` after ``limit`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not cond():
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting until {what}")
        await asyncio.sleep(0.01)


async def test_pause_holds_new_model_calls_and_resume_continues() -> None:
    async with SimServer(latency=0.1, record_history=False) as srv:  # 2 model calls per run
        agent = make_agent(srv.url)
        batch = nb_map([f"q{i}" for i in range(12)], agent=agent, concurrency=3, progress=False)
        assert isinstance(batch, Batch)
        await until(lambda: srv.requests >= 2, "the batch has started")
        batch.pause()
        assert batch.paused
        control = batch.control
        assert control is not None
        # every worker parks at the gate: runs in flight before their next model call, the others before a run
        await until(lambda: control.gate.waiting == 3, "all three workers wait at the gate")
        await until(lambda: srv.stats()["in_flight"] == 0, "the calls in flight have finished")
        held = srv.requests
        await asyncio.sleep(0.5)  # a bounded wait: a call would have started by now if the gate let it
        assert srv.requests == held and not batch.done()
        batch.resume()
        result = await batch
        assert result.ok == 12 and srv.requests == 24 and held < 24


async def test_set_concurrency_changes_the_calls_in_flight() -> None:
    async with SimServer(latency=0.3, tool_calls_per_run=0, record_history=False) as srv:  # 1 call per run
        agent = make_agent(srv.url)
        batch = nb_map([f"q{i}" for i in range(60)], agent=agent, concurrency=2, progress=False)
        await until(lambda: srv.requests >= 2, "the batch has started")
        assert srv.stats()["max_in_flight"] <= 2
        batch.set_concurrency(6)
        await until(lambda: srv.stats()["in_flight"] == 6, "six calls are in flight")
        batch.set_concurrency(1)
        await until(lambda: srv.stats()["in_flight"] <= 1, "at most one call is in flight")
        srv.reset()  # max_in_flight starts again from what is in flight now
        await until(lambda: srv.requests >= 3, "three more calls")
        assert srv.stats()["max_in_flight"] <= 1 and batch.stats()["concurrency"] == 1
        batch.set_concurrency(20)
        result = await batch
        assert result.ok == 60
        with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
            batch.set_concurrency(0)


async def test_set_limits_applies_to_the_runs_of_the_batch() -> None:
    async with SimServer(record_history=False) as srv:  # each run needs 2 steps (a tool call, then the answer)
        agent = make_agent(srv.url)
        batch = nb_map([f"q{i}" for i in range(4)], agent=agent, concurrency=2, progress=False)
        batch.pause()
        batch.set_limits(max_steps=1)
        with pytest.raises(TypeError, match="unknown limit"):
            batch.set_limits(max_stepz=1)
        batch.resume()
        result = await batch
        assert [r.status for r in result] == ["limit"] * 4
        assert agent.limits.max_steps == 1


async def test_the_bench_obeys_the_same_control() -> None:
    async with SimServer(latency=0.1, record_history=False) as srv:
        control = BatchControl(4)
        settings = Settings.load()
        task = asyncio.ensure_future(bench(16, 4, base_url=srv.url, model="sim", settings=settings,
                                           progress=False, control=control))
        await until(lambda: srv.requests >= 2, "the bench has started")
        control.pause()
        await until(lambda: control.gate.waiting == 4, "all four workers wait at the gate")
        await until(lambda: srv.stats()["in_flight"] == 0, "the calls in flight have finished")
        held = srv.requests
        await asyncio.sleep(0.5)  # a bounded wait: a call would have started by now if the gate let it
        assert srv.requests == held and not task.done()
        control.resume()
        result = await task
        assert result.completed == 16 and result.ok == 16


async def test_the_gate_holds_only_the_tasks_of_its_batch() -> None:
    gate = Gate()
    gate.close()
    passed: list[str] = []

    async def inside() -> None:
        gate.enter()
        await before_model_call()
        passed.append("inside")

    async def outside() -> None:
        await before_model_call()
        passed.append("outside")

    held = asyncio.ensure_future(inside())
    await asyncio.gather(outside())
    await until(lambda: gate.waiting == 1, "the batch's task waits at the gate")
    assert passed == ["outside"]
    gate.open()
    await held
    assert passed == ["outside", "inside"]


def test_control_needs_the_local_executor() -> None:
    batch = Batch.__new__(Batch)
    batch.control = None
    with pytest.raises(RuntimeError, match="executor='local'"):
        batch.pause()



def test_limits_typed_in_the_controls_are_parsed_or_refused() -> None:
    from nbagent.notebook.batch_controls import parse_limit

    assert parse_limit("", int) is None and parse_limit(" none ", float) is None
    assert parse_limit("5", int) == 5 and parse_limit("2.5", float) == 2.5
    for bad, kind in (("abc", int), ("5.5", int), ("-1", int), ("inf", float), ("nan", float)):
        with pytest.raises(ValueError):
            parse_limit(bad, kind)


async def test_the_notebook_controls_drive_a_running_batch_and_follow_changes_from_code() -> None:
    from nbagent.notebook.batch_controls import BatchControls

    async with SimServer(latency=0.05, record_history=False) as srv:
        agent = make_agent(srv.url)
        batch = nb_map([f"q{i}" for i in range(10)], agent=agent, concurrency=2, progress=False)
        assert batch.control is not None and batch.widget is None  # not in a kernel: nothing shown
        box = BatchControls(batch.control)
        await until(lambda: srv.requests >= 1, "the batch has started")
        box.pause.value = True  # as a click in the browser sets it
        assert batch.paused and box.pause.description == "Resume" and "paused" in box.status.value
        batch.resume()  # from code: drawn back in the controls
        assert box.pause.value is False and box.pause.description == "Pause"
        box.concurrency.value = 4
        assert batch.control.concurrency == 4
        box.limits["max_steps"].value = "9"
        box.limits["max_cost"].value = "0.5"
        assert agent.limits.max_steps == 9 and agent.limits.max_cost == 0.5
        box.limits["max_cost"].value = "-2"
        assert agent.limits.max_cost == 0.5 and "max_cost" in box.status.value
        box.limits["max_cost"].value = ""
        assert agent.limits.max_cost is None
        batch.set_concurrency(3)
        assert box.concurrency.value == 3
        result = await batch
        box.finish()
        assert result.ok == 10 and box.pause.disabled and box.concurrency.disabled and "finished" in box.status.value
        batch.set_concurrency(5)  # after finish() the controls no longer follow the control
        assert box.concurrency.value == 3
        bundle = box._repr_mimebundle_()
        assert bundle["text/plain"] == "nbagent batch controls (live in a running notebook)"


async def test_call_in_loop_hands_a_change_from_another_thread_to_the_loop_and_wakes_it() -> None:
    """JupyterLab delivers widget events on a kernel subshell's thread: a change made there must reach the
    batch's loop, and wake it while it sleeps with nothing else to do."""
    from nbagent.control import call_in_loop

    loop = asyncio.get_running_loop()
    gate = Gate()
    gate.close()
    where: list[bool] = []

    def resume() -> None:
        where.append(asyncio.get_running_loop() is loop)
        gate.open()

    waiter = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0.05)
    await loop.run_in_executor(None, call_in_loop, loop, resume)  # from a thread of the executor
    await asyncio.wait_for(waiter, 10)  # the loop woke: it had no other reason to
    assert where == [True]
    call_in_loop(loop, where.append, False)  # on the loop's own thread: called at once
    assert where == [True, False]


async def test_the_controls_hand_changes_made_on_another_thread_to_the_batch_loop() -> None:
    from nbagent.notebook.batch_controls import BatchControls

    control = BatchControl(2)
    box = BatchControls(control)
    seen: list[bool] = []
    control.on_change(lambda: seen.append(asyncio.get_running_loop() is box.loop))
    await asyncio.to_thread(setattr, box.pause, "value", True)
    await until(lambda: control.paused, "the pause reached the loop")
    await asyncio.to_thread(setattr, box.concurrency, "value", 7)
    await until(lambda: control.concurrency == 7, "the concurrency reached the loop")
    assert seen and all(seen)  # every change was made on the batch's loop
