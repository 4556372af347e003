"""``%agent <subcommand>``: list, cancel, wait, stats, show, history, compare, config, cache, sandboxes, mcp,
dashboard, bench and help; mixed into :class:`~nbagent.notebook.magics.AgentMagics`, which parses the line and
dispatches here. Each subcommand reads the runtime or the run store and displays HTML with a text twin.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.display import display

if TYPE_CHECKING:  # pragma: no cover
    from .session import RunRegistry

__all__ = ["SUBCOMMANDS", "Subcommands"]

SUBCOMMANDS = ("list", "cancel", "wait", "stats", "show", "history", "compare", "config", "cache", "sandboxes",
               "mcp", "dashboard", "bench", "help")


class Subcommands:
    """The ``_cmd_NAME(rest)`` methods of ``%agent NAME ...`` (``rest``: the words after the name)."""

    if TYPE_CHECKING:  # provided by AgentMagics
        agent: Any
        base_url: str | None
        model: str | None
        refresh_hz: float

        @property
        def registry(self) -> RunRegistry: ...

        def trait_names(self, **metadata: Any) -> list[str]: ...

    def _cmd_help(self, rest: list[str]) -> None:
        print(self.agent.__doc__)

    def _cmd_list(self, rest: list[str]) -> None:
        from . import static
        from .tables import LIST_HEADER, list_rows

        self.registry.drain()
        rows = list_rows(self.registry.entries.values())
        caption = f"{len(self.registry.active())} running"
        _html(static.table_html(LIST_HEADER, rows, caption=caption),
              "\n".join([caption] + [f"{r[0]}: {r[1]} {r[2]} {r[7]}" for r in rows]))

    def _cmd_cancel(self, rest: list[str]) -> None:
        if len(rest) != 1:
            raise UsageError("usage: %agent cancel NAME|all")
        try:
            names = self.registry.cancel(rest[0])
        except KeyError:
            raise UsageError(f"no run named {rest[0]!r} (see %agent list)") from None
        print(f"cancelled: {', '.join(names)}" if names else "nothing to cancel")

    def _cmd_wait(self, rest: list[str]) -> None:
        names = None if not rest or rest == ["all"] else rest
        unknown = [n for n in names or () if n not in self.registry.entries]
        if unknown:
            raise UsageError(f"no run named {unknown[0]!r} (see %agent list)")
        entries = self.registry.wait(names)
        print(", ".join(f"{e.name}: {e.state.status}" for e in entries) or "no runs to wait for")

    def _cmd_stats(self, rest: list[str]) -> None:
        from . import static

        if len(rest) > 1:
            raise UsageError("usage: %agent stats [NAME]")
        if not rest:
            snap = self.registry.metrics.global_.snapshot()
            mon = self.registry.monitor.snapshot()
            lag = f"loop lag p99 {static.fmt_seconds(mon['lag_p99'])}, {mon['blocks']} blocks"  # type: ignore[arg-type]
            _html(static.metrics_table(snap, caption=f"all runs · {lag}"), str(snap))
            return
        entry = self.registry.get(rest[0])
        if entry is None:
            raise UsageError(f"no run named {rest[0]!r} (see %agent list)")
        reg = self.registry.metrics.for_run(entry.state.run_id)
        if reg is None and entry.result is not None:
            reg = entry.result.metrics()
        snap = reg.snapshot() if reg is not None else {}
        _html(static.metrics_table(snap, caption=static.text_summary(entry.state)), str(snap))

    def _cmd_history(self, rest: list[str]) -> None:
        """Runs kept in the run store (every kernel's, newest first); ``%agent history N`` shows N,
        ``--hosts`` adds the pid and host that ran each."""
        from . import static
        from .state import shorten
        from .tables import HISTORY_HEADER, history_rows

        hosts = "--hosts" in rest
        rest = [w for w in rest if w != "--hosts"]
        try:
            limit = int(rest[0]) if rest else 20
        except ValueError:
            raise UsageError(f"%agent history: expected a number of runs, got {rest[0]!r}") from None
        stored = _stored_runs(self.registry, limit)
        if stored:
            header = HISTORY_HEADER + (["pid", "host"] if hosts else [])
            rows = history_rows(stored, hosts=hosts)
            _html(static.table_html(header, rows, caption=f"{len(rows)} runs, newest first"),
                  "\n".join(f"{r[0]} {r[1]}: {r[2]} {r[4]} {r[8]}" for r in rows))
            return
        rows = [[e.name, e.state.status, e.state.stop_reason, static.fmt_seconds(e.state.elapsed()),
                 e.state.input_tokens, e.state.output_tokens, shorten(e.prompt, 60)]
                for e in reversed(self.registry.history)]
        _html(static.table_html(["name", "status", "reason", "duration", "in", "out", "prompt"], rows),
              "\n".join(f"{r[0]}: {r[1]}" for r in rows) or "no finished runs")

    def _cmd_compare(self, rest: list[str]) -> None:
        """``%agent compare A B [C...]``: runs side by side (names, globs, run ids or ``tag:NAME``)."""
        from ..compare import compare

        if len(rest) < 2:
            raise UsageError("usage: %agent compare A B [C...] (run names, globs like eval-*, or tag:NAME)")
        self.registry.drain()
        try:
            result = compare(*rest, runtime=self.registry.runtime)
        except ValueError as exc:
            raise UsageError(f"%agent compare: {exc}") from None
        _html(result._repr_html_(), str(result))

    def _cmd_show(self, rest: list[str]) -> None:
        """``%agent show NAME``: a run's waterfall and where its time went; NAME is a run of this kernel, or a
        run name or run id prefix in the run store (a run of an earlier kernel)."""
        from ..timeline import timeline

        if len(rest) != 1:
            raise UsageError("usage: %agent show NAME (a run name or a run id prefix)")
        record = self._find_record(rest[0])
        tl = timeline(record)
        _html(tl.to_html(), f"{record.name} [{record.run_id}]: {record.status}; {tl.describe()}")

    def _find_record(self, name: str) -> Any:
        entry = self.registry.get(name)
        if entry is not None and entry.state.record.started is not None:
            return entry.state.record
        from .. import store

        try:
            return store.load_run(name).record
        except KeyError:
            pass
        frame = store.history(name=name, limit=50)
        same = frame[frame["name"] == name] if not frame.empty else frame
        if same.empty:
            raise UsageError(f"no run named {name!r} in this kernel or the run store, and no run id starting "
                             f"with it (see %agent history)")
        return store.load_run(str(same.iloc[0]["run_id"])).record

    def _cmd_bench(self, rest: list[str]) -> None:
        """``%agent bench [RUNS [CONCURRENCY [LATENCY]]]``: a load test against the simulated server."""
        from ..bench import run_bench

        try:
            runs, concurrency = (int(rest[0]) if rest else 50), (int(rest[1]) if len(rest) > 1 else 10)
            latency = float(rest[2]) if len(rest) > 2 else 0.05
        except ValueError:
            raise UsageError("%agent bench: expected RUNS CONCURRENCY LATENCY, e.g. %agent bench 100 20 0.05") from None
        if runs < 1 or concurrency < 1 or not (math.isfinite(latency) and latency >= 0):
            raise UsageError("%agent bench: runs and concurrency must be >= 1 and latency a finite number >= 0")
        result = run_bench(runs=runs, concurrency=concurrency, latency=latency, progress=False)
        _html(result.to_html(), result.summary())
        display(result.figure())

    def _cmd_config(self, rest: list[str]) -> None:
        from . import static

        traits = {k: getattr(self, k) for k in sorted(self.trait_names(config=True))}
        rows: list[list[Any]] = [[f"AgentMagics.{k}", v] for k, v in traits.items()]
        try:
            ep = self.registry.settings.endpoint(self.model, self.base_url)
            rows += [["endpoint", ep.base_url], ["model", ep.model], ["context window", ep.context_window]]
        except Exception as exc:  # noqa: BLE001 - shown, not raised: config is how one finds the problem
            rows.append(["endpoint", f"not configured: {exc}"])
        rows.append(["home", self.registry.settings.home])
        _html(static.table_html(["setting", "value"], rows), "\n".join(f"{k} = {v}" for k, v in rows))

    def _cmd_cache(self, rest: list[str]) -> None:
        from . import static
        from .tables import CACHE_HEADER, cache_rows

        rows = cache_rows(self.registry.metrics.global_, self.registry.caches)
        _html(static.table_html(CACHE_HEADER, rows), "\n".join(f"{c} {k}: {v}" for c, k, v in rows))

    def _cmd_sandboxes(self, rest: list[str]) -> None:
        from . import static
        from .integrations import sandbox_stats

        stats = sandbox_stats(self.registry.runtime)
        if stats is None:
            print("sandboxes are not available in this installation")
            return
        _html(static.table_html(["sandboxes", "value"], list(stats.items())), str(stats))

    def _cmd_mcp(self, rest: list[str]) -> None:
        from ..mcp.names import health_rows
        from . import static

        try:
            header, rows = health_rows(self.registry.runtime)
        except ValueError as exc:  # a bad [mcp.servers.NAME] table
            raise UsageError(f"%agent mcp: {exc}") from None
        if not rows:
            print("no MCP servers: add a [mcp.servers.NAME] table to the config, or use mcp_tools(MCPServer(...))")
            return
        _html(static.table_html(header, rows, caption="MCP servers"),
              "\n".join(f"{r[0]} ({r[1]}): {r[2]}; tools: {r[3]}; calls {r[4]}, errors {r[5]}, restarts {r[7]}"
                        for r in rows))

    def _cmd_dashboard(self, rest: list[str]) -> None:
        """``%agent dashboard [--by model|tag]``: the histograms split by model or tag when asked."""
        from .dashboard import Dashboard

        split = rest[1] if len(rest) == 2 and rest[0] == "--by" else None
        if rest and split not in ("model", "tag"):
            raise UsageError("usage: %agent dashboard [--by model|tag]")
        Dashboard(self.registry, max_hz=self.refresh_hz, split=split).show()


def _html(html: str, text: str) -> None:
    display({"text/html": html, "text/plain": text}, raw=True)



def _stored_runs(registry: RunRegistry, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` runs of the runtime's store, else of the store at the default path (if any)."""
    st = registry.runtime.store
    if st is not None:
        return st.runs(limit=limit)
    from ..store import store_disabled
    from ..store.runs import RunStore, default_path

    if store_disabled() or not default_path().exists():
        return []
    st = RunStore()
    try:
        return st.runs(limit=limit)
    finally:
        st.close()
