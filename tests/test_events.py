import asyncio

from nbagent.events import EventBus, LLMResponse, RunStarted, ToolStarted


def test_taps_run_inline_and_a_broken_tap_never_breaks_emit():
    bus = EventBus()
    seen = []
    bus.tap(seen.append)

    def broken(ev):
        raise RuntimeError("boom")

    remove = bus.tap(broken)
    bus.emit(RunStarted(run_id="r", name="n"))
    assert [e.kind for e in seen] == ["run_started"] and bus.tap_errors == 1
    remove()
    bus.emit(RunStarted(run_id="r"))
    assert bus.tap_errors == 1 and len(seen) == 2


def test_events_are_frozen_and_serialisable():
    ev = LLMResponse(run_id="r", latency=0.5, input_tokens=3)
    d = ev.to_dict()
    assert d["kind"] == "llm_response" and d["latency"] == 0.5 and d["run_id"] == "r" and d["ts"] > 0
    try:
        ev.latency = 1.0  # type: ignore[misc]
    except AttributeError:
        pass
    else:
        raise AssertionError("events must be immutable")


async def test_slow_subscriber_drops_and_counts_instead_of_blocking():
    bus = EventBus()
    sub = bus.subscribe(maxsize=10)
    for i in range(25):
        bus.emit(ToolStarted(run_id="r", call_id=str(i)))  # never blocks, although nobody reads
    assert sub.qsize() == 10 and sub.dropped == 15 and bus.dropped == 15
    got = []

    async def reader():
        async for ev in sub:
            got.append(ev.call_id)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0)
    sub.close()
    await asyncio.wait_for(task, 5)
    assert got == [str(i) for i in range(10)]
    bus.emit(RunStarted(run_id="r"))  # a closed subscription receives nothing more
    assert sub.qsize() == 0


async def test_predicate_filters_and_close_ends_iteration():
    bus = EventBus()
    sub = bus.subscribe(predicate=lambda e: e.run_id == "mine")
    bus.emit(RunStarted(run_id="other"))
    bus.emit(RunStarted(run_id="mine"))
    assert sub.get_nowait().run_id == "mine" and sub.get_nowait() is None
    bus.close()
    assert [e async for e in sub] == []
