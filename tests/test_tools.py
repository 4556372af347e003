import asyncio
import enum
import threading
from typing import Annotated, Literal, TypedDict

import pytest

from nbagent.agent.tools import RunContext, Tool, tool, tools_by_name
from nbagent.events import EventBus


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(TypedDict):
    x: int
    y: int


def test_schema_from_hints_and_docstring():
    @tool
    def search(query: str, limit: int = 5, exact: bool = False, color: Color = Color.RED,
               tags: list[str] | None = None, mode: Literal["a", "b"] = "a",
               where: Annotated[str, "a city"] = "Paris", point: Point | None = None) -> str:
        """Search the catalogue.

        More text that is not the description.

        Args:
            query: what to look for
            limit: at most this many
                results (continued line)
        """
        return query

    fn = search.schema["function"]
    assert fn["name"] == "search"
    assert fn["description"] == "Search the catalogue."
    params = fn["parameters"]
    assert params["required"] == ["query"]
    props = params["properties"]
    assert props["query"] == {"type": "string", "description": "what to look for"}
    assert props["limit"]["type"] == "integer" and props["limit"]["default"] == 5
    assert "results (continued line)" in props["limit"]["description"]
    assert props["exact"]["type"] == "boolean"
    assert props["color"]["enum"] == ["red", "blue"]
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["mode"]["enum"] == ["a", "b"]
    assert props["where"]["description"] == "a city"
    assert props["point"]["properties"] == {"x": {"type": "integer"}, "y": {"type": "integer"}}


def test_context_parameter_is_injected_not_described():
    @tool(name="ctx_tool", description="uses the context")
    async def f(ctx: RunContext, n: int) -> str:
        return f"{ctx.run_id}:{n}"

    assert f.takes_context
    assert list(f.parameters["properties"]) == ["n"]
    ctx = RunContext(run_id="r1", bus=EventBus())
    assert asyncio.run(f.call(ctx, {"n": 3})) == "r1:3"


def test_parse_arguments_errors_are_clear():
    @tool
    def f(a: int, b: str = "x") -> str:
        return b * a

    assert f.parse_arguments('{"a": 2}') == {"a": 2}
    with pytest.raises(ValueError, match="missing required"):
        f.parse_arguments("")  # empty arguments mean no arguments
    with pytest.raises(ValueError, match="not valid JSON"):
        f.parse_arguments('{"a": 1')
    with pytest.raises(ValueError, match="missing required"):
        f.parse_arguments("{}")
    with pytest.raises(ValueError, match="unknown argument"):
        f.parse_arguments('{"a": 1, "zzz": 2}')
    with pytest.raises(ValueError, match="JSON object"):
        f.parse_arguments("[1, 2]")


def test_sync_tools_run_in_a_worker_thread():
    main = threading.get_ident()

    @tool
    def where() -> int:
        return threading.get_ident()

    assert asyncio.run(where.call(None, {})) != main


def test_unsupported_types_and_names_are_rejected():
    with pytest.raises(TypeError, match="cannot describe"):
        Tool(lambda x: x, name="ok")  # untyped is Any: allowed
        tool(_complex_arg)
    with pytest.raises(ValueError, match="tool name"):
        Tool(lambda: 1, name="bad name!")
    with pytest.raises(ValueError, match="two tools"):
        tools_by_name([Tool(lambda: 1, name="a"), Tool(lambda: 2, name="a")])


def _complex_arg(x: complex) -> None:
    pass


def test_run_context_resource_is_entered_once_and_closed():
    log: list[str] = []

    class Res:
        async def __aenter__(self):
            log.append("enter")
            return self

        async def __aexit__(self, *exc):
            log.append("exit")

    async def main():
        ctx = RunContext(run_id="r", bus=EventBus())
        a, b = await asyncio.gather(ctx.resource("k", Res), ctx.resource("k", Res))
        assert a is b
        await ctx.aclose()

    asyncio.run(main())
    assert log == ["enter", "exit"]


async def test_tool_threads_are_reused_and_a_stuck_call_keeps_its_own() -> None:
    from nbagent.agent.threads import ToolThreads

    pool = ToolThreads(size=4)
    names = [await pool.run(lambda: threading.current_thread().ident) for _ in range(5)]
    assert len(set(names)) == 1 and pool.stats()["threads"] == 1  # one thread served the five calls in turn
    release = threading.Event()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(pool.run(release.wait), 0.05)
    assert pool.stats()["stuck"] == 1
    assert await pool.run(lambda: 7) == 7  # served by another thread while the stuck one waits
    assert pool.stats()["threads"] == 2
    release.set()
    for _ in range(500):
        if pool.stats()["idle"] == 2:
            break
        await asyncio.sleep(0.01)
    assert pool.stats()["idle"] == 2 and pool.stats()["stuck"] == 0  # the stuck thread ended its call: idle
    pool.close()


async def test_a_tool_raising_stopiteration_fails_alone_and_strands_no_other_answer() -> None:
    from nbagent.agent.threads import ToolThreads

    pool = ToolThreads(size=8)

    def stop() -> None:
        next(iter(()))  # StopIteration: a future cannot carry it

    def echo(x: int) -> int:
        return x

    results = await asyncio.wait_for(
        asyncio.gather(*(pool.run(echo, i) for i in range(6)), pool.run(stop), *(pool.run(echo, i) for i in range(6)),
                       return_exceptions=True), 10)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError) and "StopIteration" in str(errors[0])
    assert sorted(r for r in results if not isinstance(r, BaseException)) == sorted([*range(6), *range(6)])
    pool.close()
