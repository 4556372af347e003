"""The pool's ordering and bookkeeping, over an in-memory backend (isolation is tested in integration/)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from nbagent.errors import LeaseTimeout, SandboxError
from nbagent.events import Event
from nbagent.metrics import MetricsRegistry
from nbagent.sandbox import (
    SandboxChecked,
    SandboxCreated,
    SandboxDestroyed,
    SandboxExec,
    SandboxLeased,
    SandboxLeaseTimedOut,
    SandboxManager,
    SandboxRecord,
    SandboxSpec,
)
from nbagent.sandbox.backend import SandboxLabels

from .fakes import FakeBackend

Make = Callable[..., SandboxManager]


async def until(predicate: Callable[[], bool], limit: int = 10_000) -> None:
    """Let the loop run until ``predicate`` holds (no wall-clock waiting)."""
    for _ in range(limit):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


@pytest.mark.asyncio
async def test_lease_exec_release_and_warm_reuse(make_manager: Make, backend: FakeBackend, events: list[Event]) -> None:
    m = make_manager()
    async with m.lease(run_id="run-1") as sb:
        result = await sb.exec("echo hi")
        assert result.stdout == "/bin/sh -c echo hi"
        assert sb.reuse_count == 0
        first = sb.id
    await m.settle()
    assert m.stats().idle == 1
    async with m.lease() as sb:
        assert sb.id == first
        assert sb.reuse_count == 1
    await m.settle()
    leased = [e for e in events if isinstance(e, SandboxLeased)]
    assert [e.warm for e in leased] == [False, True]
    assert leased[0].run_id == "run-1"
    assert [e.reuse_count for e in leased] == [0, 1]
    execs = [e for e in events if isinstance(e, SandboxExec)]
    assert len(execs) == 1 and execs[0].run_id == "run-1" and execs[0].ok
    assert len(backend.created) == 1


@pytest.mark.asyncio
async def test_sandbox_is_unusable_after_its_lease(make_manager: Make) -> None:
    m = make_manager()
    async with m.lease() as sb:
        pass
    with pytest.raises(SandboxError, match="lease has ended"):
        await sb.exec("true")
    with pytest.raises(SandboxError):
        await sb.put_file("x", b"1")


@pytest.mark.asyncio
async def test_python_and_argv_commands(make_manager: Make) -> None:
    m = make_manager()
    async with m.lease() as sb:
        assert (await sb.exec("print(1)", lang="python")).stdout == "python3 -c print(1)"
        assert (await sb.exec(["ls", "-l"])).stdout == "ls -l"
        big = "x = 1\n" * 50_000  # too long for argv: sent on stdin
        assert (await sb.exec(big, lang="python")).stdout == "python3 -"
        with pytest.raises(ValueError, match="stdin"):
            await sb.exec(big, lang="python", stdin="data")
        with pytest.raises(ValueError):
            await sb.exec("x", lang="ruby")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await sb.exec([])
        with pytest.raises(ValueError):
            await sb.exec("true", timeout=0)


@pytest.mark.asyncio
async def test_creations_run_in_parallel_outside_any_lock(make_manager: Make, backend: FakeBackend) -> None:
    backend.create_gate = asyncio.Event()
    m = make_manager(max_total=4)
    holders = [asyncio.create_task(_hold(m, asyncio.Event())) for _ in range(6)]
    await until(lambda: backend.in_flight == 4)
    assert m.stats().creating == 4 and m.stats().waiting == 6
    backend.create_gate.set()
    await until(lambda: m.stats().active == 4)
    assert backend.max_in_flight == 4  # never more than max_total
    for t in holders:
        t.cancel()
    await asyncio.gather(*holders, return_exceptions=True)


async def _hold(m: SandboxManager, release: asyncio.Event, out: list[str] | None = None, tag: str = "") -> None:
    async with m.lease():
        if out is not None:
            out.append(tag)
        await release.wait()


@pytest.mark.asyncio
async def test_waiters_are_served_first_come_first_served(make_manager: Make) -> None:
    m = make_manager(max_total=1)
    order: list[str] = []
    gates = {f"w{i}": asyncio.Event() for i in range(8)}
    first = asyncio.Event()
    holder = asyncio.create_task(_hold(m, first))
    await until(lambda: m.stats().active == 1)
    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(_hold(m, gates[f"w{i}"], order, f"w{i}")))
        await until(lambda n=i: m.stats().waiting == n + 1)
    first.set()
    for i in range(8):
        await until(lambda n=i: len(order) == n + 1)
        gates[f"w{i}"].set()
    await asyncio.gather(holder, *tasks)
    assert order == [f"w{i}" for i in range(8)]
    assert m.stats().total == 1


@pytest.mark.asyncio
async def test_requests_keep_their_order_while_the_manager_starts(
    make_manager: Make, backend: FakeBackend
) -> None:
    backend.records = []  # start-up prunes orphans, which takes a few loop turns
    m = make_manager(max_total=1)
    m.prune_on_start = True
    order: list[int] = []

    async def user(i: int) -> None:
        async with m.lease():
            order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(user(i)))
        await asyncio.sleep(0)  # some arrive during start-up, some after it
    await asyncio.gather(*tasks)
    assert order == list(range(6))


@pytest.mark.asyncio
async def test_lease_timeout_leaves_nothing_behind(make_manager: Make, events: list[Event]) -> None:
    m = make_manager(max_total=1)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(m, release))
    await until(lambda: m.stats().active == 1)
    with pytest.raises(LeaseTimeout, match="max_total=1"):
        async with m.lease(timeout=0.01):
            pass
    stats = m.stats()
    assert stats.waiting == 0 and stats.lease_timeouts == 1
    assert any(isinstance(e, SandboxLeaseTimedOut) for e in events)
    release.set()
    await holder
    await m.settle()
    assert m.stats().idle == 1  # the held sandbox came back; nothing leaked


@pytest.mark.asyncio
async def test_a_waiter_cancelled_as_it_is_served_gives_the_sandbox_back(
    make_manager: Make, bus: object, backend: FakeBackend
) -> None:
    m = make_manager(max_total=1)
    release = asyncio.Event()
    holder = asyncio.create_task(_hold(m, release))
    await until(lambda: m.stats().active == 1)
    waiter = asyncio.create_task(_hold(m, asyncio.Event()))
    await until(lambda: m.stats().waiting == 1)

    def cancel_on_check(event: Event) -> None:
        # fires just before the checked sandbox is handed to the waiter: the hand-over races the cancel
        if isinstance(event, SandboxChecked):
            waiter.cancel()

    m.bus.tap(cancel_on_check)
    release.set()
    await holder
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await m.settle()
    stats = m.stats()
    assert (stats.active, stats.idle, stats.waiting, stats.total) == (0, 1, 0, 1)
    async with m.lease(timeout=1) as sb:
        assert sb.id == backend.created[0].id


@pytest.mark.asyncio
async def test_churn_with_cancellations_never_leaks(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager(max_total=3)

    async def user(i: int) -> None:
        async with m.lease() as sb:
            await sb.exec(f"echo {i}")
            for _ in range(i % 4):
                await asyncio.sleep(0)

    tasks = [asyncio.create_task(user(i)) for i in range(60)]
    for i, t in enumerate(tasks):
        if i % 5 == 0:
            await asyncio.sleep(0)
            t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await m.settle()
    stats = m.stats()
    assert stats.active == 0 and stats.waiting == 0 and stats.creating == 0
    assert stats.total == stats.idle <= 3
    assert len(backend.created) - len(backend.destroyed) == stats.total


@pytest.mark.asyncio
async def test_failed_creation_reaches_the_oldest_waiter(make_manager: Make, backend: FakeBackend) -> None:
    backend.fail_creates = 1
    m = make_manager()
    with pytest.raises(SandboxError, match="engine said no"):
        async with m.lease():
            pass
    assert m.stats().total == 0 and m.stats().create_failures == 1
    async with m.lease() as sb:  # the next one works
        assert (await sb.exec("true")).ok


@pytest.mark.asyncio
async def test_a_broken_sandbox_is_destroyed_and_replaced(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager(max_total=1)
    async with m.lease() as sb:
        backend.created[0].fail_exec = True
        with pytest.raises(SandboxError):
            await sb.exec("true")
    await m.settle()
    assert backend.destroyed == [backend.created[0]]
    async with m.lease() as sb:
        assert sb.id == backend.created[1].id
    assert m.stats().destroyed == {"broken": 1}
    assert m.stats().exec_errors == 1


@pytest.mark.asyncio
async def test_a_dirty_sandbox_fails_its_check_and_is_never_leased_again(
    make_manager: Make, backend: FakeBackend, events: list[Event]
) -> None:
    m = make_manager(max_total=1)
    async with m.lease() as sb:
        await sb.put_file("notes.txt", b"secret")
        backend.created[0].problem = "dirty: /etc changed"
        dirty = sb.id
    await m.settle()
    async with m.lease() as sb:
        assert sb.id != dirty
        with pytest.raises(FileNotFoundError):
            await sb.get_file("notes.txt")
    checked = [e for e in events if isinstance(e, SandboxChecked)]
    assert checked[0].problem == "dirty: /etc changed"
    destroyed = [e for e in events if isinstance(e, SandboxDestroyed)]
    assert [(e.sandbox_id, e.reason) for e in destroyed] == [(dirty, "unhealthy")]


@pytest.mark.asyncio
async def test_workspace_is_fresh_on_every_lease(make_manager: Make) -> None:
    m = make_manager(max_total=1)
    async with m.lease() as sb:
        await sb.put_file("a.txt", "one")
        assert await sb.get_file("a.txt") == b"one"
    await m.settle()
    async with m.lease() as sb:
        assert sb.reuse_count == 1
        with pytest.raises(FileNotFoundError):
            await sb.get_file("a.txt")


@pytest.mark.asyncio
async def test_reaper_destroys_only_expired_idle_sandboxes(make_manager: Make, clock: Callable[[], float]) -> None:
    m = make_manager(clock=clock, max_total=4, idle_ttl=10.0, min_idle=1)
    release = asyncio.Event()
    long_lease = asyncio.create_task(_hold(m, release))
    await until(lambda: m.stats().active == 1)
    sandboxes = []
    for _ in range(2):
        cm = m.lease()
        sandboxes.append((cm, await cm.__aenter__()))
    for cm, _ in sandboxes:
        await cm.__aexit__(None, None, None)
    await m.settle()
    assert (m.stats().active, m.stats().idle) == (1, 2)
    clock.now += 5  # type: ignore[attr-defined]
    assert m.reap() == 0
    clock.now += 1000  # type: ignore[attr-defined]
    assert m.reap() == 1  # one idle kept warm (min_idle=1); the leased one is untouchable
    await m.settle()
    assert (m.stats().active, m.stats().idle) == (1, 1)
    assert m.stats().destroyed == {"idle": 1}
    release.set()
    await long_lease


@pytest.mark.asyncio
async def test_reaper_task_never_reaps_a_long_lease(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager(idle_ttl=0.001, reap_interval=0.001, min_idle=0)
    async with m.lease() as sb:
        for _ in range(30):
            await asyncio.sleep(0.002)  # many reaper passes while leased
            assert (await sb.exec("true")).ok
        assert backend.destroyed == []
    await until(lambda: len(backend.destroyed) == 1, limit=1_000_000)  # reaped once idle


@pytest.mark.asyncio
async def test_warm_pool_is_filled_on_start_and_after_a_lease(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager(min_idle=2)
    await m.start()
    await m.settle()
    assert m.stats().idle == 2
    async with m.lease():
        await m.settle()
        assert (m.stats().active, m.stats().idle) == (1, 2)
    await m.settle()
    assert m.stats().idle == 3  # returned sandboxes above min_idle stay until idle_ttl


@pytest.mark.asyncio
async def test_another_spec_evicts_an_idle_sandbox_when_the_pool_is_full(make_manager: Make) -> None:
    m = make_manager(max_total=1)
    async with m.lease() as sb:
        a = sb.id
    await m.settle()
    other = SandboxSpec(backend="docker", memory="1g")
    async with m.lease(other) as sb:
        assert sb.id != a and sb.spec == other
    await m.settle()
    assert m.stats().destroyed == {"evicted": 1}
    assert m.stats().total == 1


@pytest.mark.asyncio
async def test_sandboxes_retire_after_max_leases(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager(max_leases=2)
    ids = []
    for _ in range(3):
        async with m.lease() as sb:
            ids.append(sb.id)
        await m.settle()
    assert ids[0] == ids[1] != ids[2]
    assert m.stats().destroyed == {"retired": 1}


@pytest.mark.asyncio
async def test_aclose_fails_waiters_and_destroys_everything(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager(max_total=1)
    cm = m.lease()
    sb = await cm.__aenter__()
    waiter = asyncio.create_task(_hold(m, asyncio.Event()))
    await until(lambda: m.stats().waiting == 1)
    await m.aclose(grace=0.01)
    with pytest.raises(SandboxError, match="closed"):
        await waiter
    with pytest.raises(SandboxError, match="destroyed"):
        await sb.exec("true")
    await cm.__aexit__(None, None, None)
    assert all(d.destroyed for d in backend.created)
    assert m.stats().total == 0 and backend.closed
    with pytest.raises(SandboxError, match="closed"):
        async with m.lease():
            pass


@pytest.mark.asyncio
async def test_aclose_waits_for_a_lease_within_grace(make_manager: Make, backend: FakeBackend) -> None:
    m = make_manager()
    finished = []
    go = asyncio.Event()

    async def user() -> None:
        async with m.lease() as sb:
            await go.wait()
            await sb.exec("true")  # still usable during the grace period
            finished.append(sb.id)

    task = asyncio.create_task(user())
    await until(lambda: m.stats().active == 1)
    closing = asyncio.create_task(m.aclose(grace=60))
    await until(lambda: m.closed)
    go.set()
    await asyncio.gather(closing, task)
    assert finished and m.stats().destroyed == {"shutdown": 1}


@pytest.mark.asyncio
async def test_stats_and_events(make_manager: Make, events: list[Event]) -> None:
    m = make_manager()
    for _ in range(3):
        async with m.lease() as sb:
            await sb.exec("true")
        await m.settle()
    s = m.stats()
    assert (s.leases, s.warm_leases, s.created, s.execs) == (3, 2, 1, 3)
    assert s.lease_wait_p50 is not None and s.lease_wait_p95 is not None
    assert s.exec_p50 == pytest.approx(0.001, rel=0.02)
    assert s.to_dict()["max_total"] == 4
    # the manager's percentiles and the metrics of the same events are one fold: they agree exactly
    reg = MetricsRegistry()
    for e in events:
        reg.observe(e)
    assert s.lease_wait_p50 == reg.histogram("sandbox.lease_wait").p50
    assert s.exec_p95 == reg.histogram("sandbox.exec").p95 and s.create_p50 == reg.histogram("sandbox.create").p50
    kinds = {e.kind for e in events}
    assert {"sandbox_created", "sandbox_leased", "sandbox_exec", "sandbox_released", "sandbox_checked"} <= kinds
    created = [e for e in events if isinstance(e, SandboxCreated)]
    assert created[0].ok and created[0].image == "nbagent-sandbox:bookworm"


@pytest.mark.asyncio
async def test_exit_cleanup_removes_the_managers_own_sandboxes(make_manager: Make, backend: FakeBackend) -> None:
    other = SandboxRecord(id="someone-else", backend="docker", status="running",
                          labels=SandboxLabels.for_this_process("another-manager").as_dict())
    backend.records.append(other)
    m = make_manager()
    async with m.lease() as sb:
        mine = sb.id
    await m.settle()
    # the exit hook runs where no event loop runs: on a private loop, outside this test's
    await asyncio.to_thread(m.cleanup_sync)
    assert backend.removed == [mine] and backend.records == [other]


@pytest.mark.asyncio
async def test_auto_backend_falls_back_to_local_when_docker_is_unreachable(bus: object) -> None:
    docker, local = FakeBackend("docker"), FakeBackend("local")
    docker.reachable = False
    m = SandboxManager(SandboxSpec(backend="auto"), bus=bus, backends={"docker": docker, "local": local})  # type: ignore[arg-type]
    try:
        async with m.lease() as sb:
            assert sb.spec.backend == "local"
        assert local.created and not docker.created
    finally:
        await m.aclose()
