"""``%%agent`` (run the cell as a prompt) and ``%agent`` (list, cancel, stats, ... the runs of the notebook).

Each magic parses its arguments, calls the registry and displays; the runs, their state and their views
live in :mod:`nbagent.notebook.session`, :mod:`~nbagent.notebook.state` and :mod:`~nbagent.notebook.widgets`.
"""

from __future__ import annotations

import logging
import math
import re
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, Enum, Float, Integer, List, TraitError, Unicode, observe, validate

from ..config_rules import SettingRule, coerce
from ..errors import InvalidSetting
from ..runtime import CACHE_MODES
from .subcommands import SUBCOMMANDS, Subcommands

if TYPE_CHECKING:  # pragma: no cover
    from .session import RunEntry, RunRegistry
    from .spec import CellSpec
    from .widgets import RunOutput

# ``%load_ext nbagent`` imports this module, so it imports only what registering the magics needs: the runs'
# registry, the agent and its client, ipywidgets and the renderings are imported by the magic that uses them
# (and ahead of it while the kernel is idle: see nbagent.notebook).

__all__ = ["AgentMagics", "shutdown"]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# what the numeric traits may be: finite, in range (the settings' own rules)
_TRAIT_RULES = {
    "max_steps": SettingRule(int, optional=True, low=1),
    "timeout": SettingRule(float, optional=True, low=0, above=True),
    "refresh_hz": SettingRule(float, low=0, above=True),
    "lag_threshold": SettingRule(float, low=0, above=True),
}
log = logging.getLogger(__name__)


@magics_class
class AgentMagics(Subcommands, Magics):
    """nbagent's magics. Defaults for every ``%%agent`` cell are settable with ``%config AgentMagics.<name>``."""

    model = Unicode(None, allow_none=True, help="Model name (default: NBAGENT_MODEL or the profile's).").tag(
        config=True)
    base_url = Unicode(None, allow_none=True, help="OpenAI-compatible base URL (default: NBAGENT_BASE_URL).").tag(
        config=True)
    system = Unicode(None, allow_none=True, help="System prompt of every run.").tag(config=True)
    tools = List(Unicode(), help="Tools every run gets, by name (notebook @tool functions or registered).").tag(
        config=True)
    max_steps = Integer(None, allow_none=True, help="Model calls per run (default: settings limits).").tag(config=True)
    timeout = Float(None, allow_none=True, help="Wall-time limit of a run in seconds.").tag(config=True)
    sandbox = Unicode(None, allow_none=True,
                      help="Sandbox backend of the sandbox tools: auto or a registered backend.").tag(config=True)
    cache = Enum(CACHE_MODES, "off", help="Response cache mode.").tag(config=True)
    stream = Bool(True, help="Stream answers (live text in the widget).").tag(config=True)
    wait = Bool(False, help="Block every %%agent cell until its run ends.").tag(config=True)
    policy = Unicode(None, allow_none=True,
                     help="Notebook variable holding the Policy of every run (default: the [policy] settings).").tag(
        config=True)
    widgets = Bool(True, help="Show the live run widget (off: only the static summary).").tag(config=True)
    refresh_hz = Float(4.0, help="Most redraws per second of the run widgets and the dashboard.").tag(config=True)
    lag_threshold = Float(0.1, help="Event-loop lag (seconds) reported as a block.").tag(config=True)

    def __init__(self, shell: Any = None, registry: RunRegistry | None = None, **kwargs: Any) -> None:
        _forget_refused_config(shell)
        super().__init__(shell=shell, **kwargs)
        self._registry = registry
        if registry is not None:
            self._apply_rates()

    @property
    def registry(self) -> RunRegistry:
        """The runs of the notebook (the default runtime's registry), made on first use."""
        if self._registry is None:
            from .session import current

            self._registry = current()
            self._apply_rates()
        return self._registry

    def registry_if_started(self) -> RunRegistry | None:
        """The registry if the magics or anything else (the dashboard) has made it, without making it."""
        if self._registry is None:
            from ..runtime import runtime

            self._registry = runtime().part_if_started("notebook")
            if self._registry is not None:
                self._apply_rates()
        return self._registry

    @validate("sandbox")
    def _check_sandbox(self, proposal: Any) -> Any:
        """``%config AgentMagics.sandbox = "nope"`` is refused (the backends registered now are accepted)."""
        from .integrations import sandbox_backends

        value = proposal["value"]
        if value is not None and value not in sandbox_backends():
            raise TraitError(f"AgentMagics.sandbox: unknown backend {value!r}; registered: "
                             f"{', '.join(sandbox_backends())}; the old value is kept")
        return value

    @validate(*_TRAIT_RULES)
    def _check_number(self, proposal: Any) -> Any:
        """``%config AgentMagics.refresh_hz = -1`` is refused in one line and the old value kept."""
        name = proposal["trait"].name
        try:
            return coerce(proposal["value"], _TRAIT_RULES[name], f"AgentMagics.{name}", "from %config")
        except InvalidSetting as exc:
            raise TraitError(f"{exc}; the old value is kept") from None

    @observe("refresh_hz", "lag_threshold")
    def _rates_changed(self, _change: Any) -> None:
        if self._registry is not None:  # else applied when it is made
            self._apply_rates()

    def _apply_rates(self) -> None:
        assert self._registry is not None
        self._registry.refresh_hz = self.refresh_hz
        self._registry.monitor.threshold = self.lag_threshold

    # --- %%agent ------------------------------------------------------------------------------------

    @magic_arguments()
    @argument("-n", "--name", help="Name of the run (default run-N); %%agent list / cancel use it.")
    @argument("-m", "--model", help="Model name.")
    @argument("--base-url", help="OpenAI-compatible base URL.")
    @argument("-s", "--system", help="System prompt.")
    @argument("-t", "--tools", action="append", default=[], metavar="NAMES",
              help="Tools by name, comma-separated or repeated; '*' for every @tool in the notebook; "
                   "mcp:NAME for every tool of an MCP server, mcp:NAME/TOOL for one.")
    @argument("--max-steps", type=int, help="Most model calls in the run.")
    @argument("--timeout", type=float, help="Wall-time limit in seconds.")
    @argument("--sandbox", metavar="BACKEND",
              help="One of the registered backends (auto, docker, local, or one a package registers). "
                   "Sandbox backend of the sandbox tools (python, shell, read_file, write_file); alone, adds them.")
    @argument("--cache", choices=CACHE_MODES, help="Response cache mode.")
    @argument("--stream", dest="stream", action="store_true", default=None, help="Stream the answer.")
    @argument("--no-stream", dest="stream", action="store_false", help="Do not stream.")
    @argument("-o", "--out", metavar="NAME", help="Variable for the result: the RunHandle, then the RunResult.")
    @argument("-w", "--wait", action="store_true", default=None, help="Block the cell until the run ends.")
    @argument("--raw", action="store_true", help="Send the cell as it is ({name} is not filled in).")
    @argument("--first-tool", metavar="NAME", help="The first model call must call this tool (small models).")
    @argument("--profile", action="store_true", help="Profile the run (pyinstrument) and show where time went.")
    @argument("--policy", metavar="NAME",
              help="Tool policy: a notebook variable holding a nbagent.policy.Policy, or 'off'. Calls it asks "
                   "about wait for Approve / Deny in the run widget.")
    @argument("--tag", action="append", default=[], metavar="TAG",
              help="Tag the run (repeatable); %agent compare tag:TAG and the store's history use it.")
    @line_cell_magic
    def agent(self, line: str, cell: str | None = None) -> None:
        """Run the cell as an agent prompt in the background; ``{name}`` takes notebook variables.

        The cell returns at once and the run shows its progress in a widget (Stop cancels it). As a line
        magic, ``%agent`` manages the runs: ``list``, ``cancel NAME|all``, ``wait [NAME...]``,
        ``stats [NAME]``, ``show NAME``, ``history [N] [--hosts]``, ``compare A B [C...]``, ``config``,
        ``cache``, ``sandboxes``, ``mcp``, ``dashboard [--by model|tag]``, ``bench [RUNS [CONCURRENCY
        [LATENCY]]]``, ``help``.
        Defaults of the flags below: ``%config AgentMagics``.
        """
        if cell is None:
            return self._subcommand(line)
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%%agent: {exc}") from None
        args = self.agent.parser.parse_args(argv)  # type: ignore[attr-defined]  # UsageError when bad
        spec = self._spec(args, cell)
        self._run(spec)
        return None

    def _spec(self, args: Any, cell: str) -> CellSpec:
        from .spec import CellSpec, interpolate, resolve_policy

        if not cell.strip():
            raise UsageError("the cell is empty: write the prompt in the cell body")
        if args.name is not None and not _NAME.fullmatch(args.name):
            raise UsageError(f"run name {args.name!r}: use letters, digits, '_', '-' or '.'")
        if args.out is not None and not args.out.isidentifier():
            raise UsageError(f"-o {args.out!r} is not a valid variable name")
        if args.max_steps is not None and args.max_steps < 1:
            raise UsageError("--max-steps must be at least 1")
        if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
            raise UsageError(f"--timeout must be a finite number of seconds > 0, got {args.timeout}")
        ns = self.shell.user_ns if self.shell is not None else {}
        prompt = cell.strip() if args.raw else interpolate(cell.strip(), ns)
        policy = resolve_policy(args.policy if args.policy is not None else self.policy, ns)
        pick: Callable[[Any, Any], Any] = lambda flag, trait: trait if flag is None else flag  # noqa: E731
        return CellSpec(prompt=prompt, name=args.name, model=pick(args.model, self.model),
                       base_url=pick(args.base_url, self.base_url), system=pick(args.system, self.system),
                       tools=list(self.tools) + args.tools, max_steps=pick(args.max_steps, self.max_steps),
                       timeout=pick(args.timeout, self.timeout), sandbox=pick(args.sandbox, self.sandbox),
                       cache=pick(args.cache, self.cache), stream=pick(args.stream, self.stream), out=args.out,
                       wait=bool(pick(args.wait, self.wait)), first_tool=args.first_tool, profile=args.profile,
                       policy=policy, tags=_tags(args.tag))

    def _run(self, spec: CellSpec) -> RunEntry:
        from .integrations import sandbox_backends, sandbox_tools
        from .spec import agent_factory, resolve_tools
        from .widgets import RunOutput

        ns = self.shell.user_ns if self.shell is not None else {}
        if spec.sandbox and spec.sandbox not in sandbox_backends():
            raise UsageError(f"--sandbox: unknown backend {spec.sandbox!r}; registered: "
                             f"{', '.join(sandbox_backends())}")
        builtin = sandbox_tools(spec.sandbox) if spec.sandbox or spec.tools else {}
        names, mcp = _mcp_tools(spec.tools, self.registry.runtime)
        tools = resolve_tools(names, ns, {**builtin, **self.registry.tools}) + mcp
        if spec.first_tool is not None and spec.first_tool not in {t.name for t in tools} | set(builtin):
            raise UsageError(f"--first-tool {spec.first_tool!r} is not one of the run's tools")
        if spec.sandbox and not any(t.name in builtin for t in tools):
            if not builtin:
                raise UsageError("--sandbox: sandboxes are not available in this installation")
            tools += list(builtin.values())  # --sandbox alone: every sandbox tool, on that backend
        name = spec.name or self.registry.new_name()
        try:
            self.registry.check_name(name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None

        def view(entry: RunEntry) -> RunOutput:
            return RunOutput(entry.name, self.shell, on_stop=lambda: self._stop(entry.name), live=self.widgets,
                             blocking=spec.wait).show()

        _import_http_stack()
        entry = self.registry.submit(agent_factory(spec, self.registry, tools), spec.prompt, name=name,
                                     out=spec.out, namespace=ns, view_factory=view, profile=spec.profile)
        if spec.wait and not entry.done:
            try:
                self.registry.wait([name])
            except KeyboardInterrupt:  # the kernel's interrupt: stop the run, end the cell cleanly
                self.registry.cancel(name)
                self.registry.wait([name])
                print(f"{name}: cancelled by the interrupt")
        return entry

    def _stop(self, name: str) -> None:
        try:
            self.registry.cancel(name)
        except KeyError:
            pass

    # --- %agent <subcommand> ------------------------------------------------------------------------

    def _subcommand(self, line: str) -> None:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%agent: {exc}") from None
        sub, rest = (words[0], words[1:]) if words else ("help", [])
        handler = getattr(self, f"_cmd_{sub}", None) if sub.isidentifier() else None
        if handler is None:
            raise UsageError(f"%agent: unknown subcommand {sub!r}; use one of: {', '.join(SUBCOMMANDS)}")
        handler(rest)

    def pre_run_cell(self, info: Any = None) -> None:
        """Before each cell: publish the summaries of runs that ended since, under this cell's request."""
        registry = self.registry_if_started()
        if registry is not None:
            registry.republish()




def _import_http_stack() -> None:
    """Import the HTTP stack before a run starts (the idle warm-up has usually done it): imported by the run
    when it opens its first connection, it would pause the loop while the run is in flight, and the loop
    monitor would report that pause as a block of the run."""
    from ..llm.http import import_http_stack

    import_http_stack()


def _tags(values: list[str]) -> list[str]:
    """``--tag a --tag b,c``: the tags, each checked like a run name."""
    tags = [t.strip() for v in values for t in v.split(",") if t.strip()]
    for tag in tags:
        if not _NAME.fullmatch(tag):
            raise UsageError(f"--tag {tag!r}: use letters, digits, '_', '-' or '.'")
    return tags


def _forget_refused_config(shell: Any) -> None:
    """Drop values the magics refused from the shell's config (``%config`` stores them there too), with a
    warning, so that loading the extension again starts from the defaults instead of failing."""
    config = getattr(shell, "config", None)
    if config is None or "AgentMagics" not in config:
        return
    section = config["AgentMagics"]
    for name, rule in _TRAIT_RULES.items():
        if name in section:
            try:
                coerce(section[name], rule, f"AgentMagics.{name}", "from %config")
            except InvalidSetting as exc:
                log.warning("nbagent: %s; the default is used", exc)
                del section[name]


def _mcp_tools(names: list[str], runtime: Any) -> tuple[list[str], list[Any]]:
    """``-t mcp:NAME`` / ``mcp:NAME/TOOL``: the other names, and the MCP tools (the server starts if needed)."""
    if not any("mcp:" in n for n in names):
        return names, []
    from ..errors import ToolError
    from ..mcp.names import split_mcp_names

    try:
        return split_mcp_names(names, runtime)
    except (ImportError, ValueError, RuntimeError, ToolError) as exc:  # unknown server or tool; no mcp SDK
        raise UsageError(f"-t: {exc}") from None


def shutdown() -> None:
    """Cancel the notebook's runs and release what they hold (unloading the extension calls it)."""
    from .session import shutdown as close_registry

    close_registry()
