"""Tool policy: allow, deny or ask before a tool call runs, with cached decisions.

Rules are checked in order; the first whose tool pattern and argument conditions match decides. A rule's
``when`` maps argument names to regular expressions (all must match, ``re.search``); ``check`` is any
Python predicate on the arguments. With no matching rule, ``default`` decides.

>>> policy = Policy([Rule("shell", "deny", when={"command": r"\\brm\\s+-rf\\b"}, reason="no recursive deletes"),
...                  Rule("shell", "ask"), Rule("*", "allow")])

``ask`` calls the ``ask`` callback (in a notebook, the run widget's Approve / Deny buttons); with no
callback, or when it does not answer within ``ask_timeout``, the call is denied. A callback may answer
``"always"`` to allow the same tool for the rest of the run.

Decisions made by rules are cached (TTL + size bound) under the agent, the tool and the normalised values of
just the arguments the matching rules read, so checking a policy on every tool call costs a dict lookup;
any change to the policy clears the cache. Every decision is one event (``PolicyDecided``, with ``cached``
and ``seconds``) kept with the run; the metrics registry counts it as a ``cache.policy`` hit or miss and
times it (``policy.decision``), so the dashboard shows the decision-cache hit rate beside the response cache's.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import posixpath
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from .errors import ConfigError
from .events import Event, EventBus, _frozen, default_bus
from .metrics.registry import MetricsRegistry, register_handler

__all__ = ["AskCallback", "Decision", "Policy", "PolicyDecided", "Rule", "outside"]

ACTIONS = ("allow", "deny", "ask")
AskCallback = Callable[[str, dict[str, Any], str | None], Awaitable[bool | str]]


@dataclass(**_frozen)  # type: ignore[call-overload]
class PolicyDecided(Event):
    kind: ClassVar[str] = "policy_decided"
    tool: str = ""
    action: str = "allow"  # allow | deny
    decided_by: str = "rule"  # rule | default | callback | timeout | no-callback | run-memo
    reason: str = ""
    seconds: float = 0.0
    cached: bool = False


@dataclass(frozen=True)
class Rule:
    """``tool`` is an fnmatch pattern; ``action`` is allow, deny or ask.

    ``when`` maps argument names to regular expressions; ``check`` is a predicate on the arguments;
    ``facts`` maps facts about the tool (``Tool.facts``: sandbox tools have ``sandbox``, ``network`` and
    ``backend``) to the values they must equal, e.g. ``Rule("*", "ask", facts={"network": True})``.
    """

    tool: str = "*"
    action: str = "allow"
    when: Mapping[str, str] | None = None
    check: Callable[[dict[str, Any]], bool] | None = None
    reason: str = ""
    facts: Mapping[str, Any] | None = None
    _patterns: tuple[tuple[str, re.Pattern[str]], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ConfigError(f"policy rule for {self.tool!r}: action must be one of {ACTIONS}, not {self.action!r}")
        try:
            pats = tuple((k, re.compile(v)) for k, v in (self.when or {}).items())
        except re.error as exc:
            raise ConfigError(f"policy rule for {self.tool!r}: bad pattern: {exc}") from None
        object.__setattr__(self, "_patterns", pats)

    def applies_to(self, tool: str) -> bool:
        return fnmatch.fnmatchcase(tool, self.tool)

    def matches(self, args: Mapping[str, Any], facts: Mapping[str, Any] | None = None) -> bool:
        if self.facts:
            known = facts or {}
            if any(known.get(k) != v for k, v in self.facts.items()):
                return False
        for name, pat in self._patterns:
            value = args.get(name)
            if value is None or not pat.search(value if isinstance(value, str) else json.dumps(value)):
                return False
        return self.check is None or bool(self.check(dict(args)))


class Decision(NamedTuple):
    """What :meth:`Policy.decide` answered (a named tuple: built on every tool call, it must cost little)."""

    action: str  # allow | deny
    decided_by: str
    reason: str = ""
    seconds: float = 0.0
    cached: bool = False

    @property
    def allowed(self) -> bool:
        return self.action == "allow"


def outside(root: str = "/workspace", arg: str = "path") -> Callable[[dict[str, Any]], bool]:
    """A ``check`` for :class:`Rule`: the path in argument ``arg`` resolves outside ``root``.

    Relative paths are taken from ``root`` (the sandbox tools' working directory); ``..`` is resolved, so
    ``Rule("write_file", "deny", check=outside())`` refuses ``../../etc/passwd`` as well as ``/etc/passwd``.
    """
    base = posixpath.normpath(root)

    def check(args: dict[str, Any]) -> bool:
        value = args.get(arg)
        if not isinstance(value, str):
            return False
        path = posixpath.normpath(posixpath.join(base, value))
        return not (path == base or path.startswith(base.rstrip("/") + "/"))

    return check


def _norm(value: Any) -> Any:
    """A hashable, canonical form of one argument value (strings as they are: the common case is cheap)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return (type(value).__name__, value)
    return json.dumps(value, sort_keys=True, default=str)


def _count_decision(reg: MetricsRegistry, ev: Event) -> None:
    assert isinstance(ev, PolicyDecided)
    reg.counter("cache.policy.hits" if ev.cached else "cache.policy.misses").inc()
    reg.counter(f"policy.{ev.action}").inc()
    reg.histogram("policy.decision").record(ev.seconds)


register_handler(PolicyDecided, _count_decision)


class Policy:
    """An ordered list of rules, a default, an ``ask`` callback and a decision cache."""

    def __init__(self, rules: Iterable[Rule] = (), default: str = "allow", *, ask: AskCallback | None = None,
                 ask_timeout: float = 120.0, cache_size: int = 4096, cache_ttl: float = 300.0,
                 bus: EventBus | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        if default not in ACTIONS:
            raise ConfigError(f"policy default must be one of {ACTIONS}, not {default!r}")
        self._rules = list(rules)
        self.default = default
        self.ask = ask
        self.ask_timeout = ask_timeout
        self.bus = bus
        # key -> (expires at, decision); a plain dict because a lookup must cost well under a microsecond
        # (cachetools' TTLCache.get costs several); the oldest entries go first when it is full
        self._cache: dict[tuple[Any, ...], tuple[float, tuple[str, str, str]]] = {}
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self._clock = clock
        # tool -> (its rules, the arguments they read or None for all, the facts they read)
        self._by_tool: dict[str, tuple[list[Rule], tuple[str, ...] | None, tuple[str, ...]]] = {}
        self._always: set[tuple[str | None, str]] = set()  # (run_id, tool) approved "always for this run"
        self.version = 0
        self.hits = self.misses = 0

    # --- changing the policy --------------------------------------------------------------------

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(self._rules)

    def set_rules(self, rules: Iterable[Rule], default: str | None = None) -> None:
        """Replace the rules (and default); the decision cache is cleared."""
        self._rules = list(rules)
        if default is not None:
            self.default = default
        self._changed()

    def add(self, rule: Rule, index: int | None = None) -> None:
        self._rules.insert(len(self._rules) if index is None else index, rule)
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._cache.clear()
        self._by_tool.clear()

    @classmethod
    def from_settings(cls, section: Mapping[str, Any], **kwargs: Any) -> Policy:
        """From the config file's ``[policy]`` table: ``default``, ``ask_timeout``, ``cache_size``, ``cache_ttl``
        and ``[[policy.rules]]`` entries."""
        unknown = set(section) - {"default", "rules", "ask_timeout", "cache_size", "cache_ttl"}
        if unknown:
            raise ConfigError(f"[policy]: unknown key(s) {sorted(unknown)}")
        for key, kind in (("ask_timeout", float), ("cache_size", int), ("cache_ttl", float)):
            if key in section:
                try:
                    kwargs.setdefault(key, kind(section[key]))
                except (TypeError, ValueError):
                    raise ConfigError(f"[policy] {key} must be a number, not {section[key]!r}") from None
        rules = []
        for i, raw in enumerate(section.get("rules", [])):
            if not isinstance(raw, Mapping):
                raise ConfigError(f"[[policy.rules]] #{i + 1} must be a table")
            unknown = set(raw) - {"tool", "action", "when", "reason", "facts"}
            if unknown:
                raise ConfigError(f"[[policy.rules]] #{i + 1}: unknown key(s) {sorted(unknown)}")
            rules.append(Rule(str(raw.get("tool", "*")), str(raw.get("action", "allow")), raw.get("when"),
                              reason=str(raw.get("reason", "")), facts=raw.get("facts")))
        return cls(rules, str(section.get("default", "allow")), **kwargs)

    # --- deciding -------------------------------------------------------------------------------

    def _candidates(self, tool: str) -> tuple[list[Rule], tuple[str, ...] | None, tuple[str, ...]]:
        got = self._by_tool.get(tool)
        if got is None:
            rules = [r for r in self._rules if r.applies_to(tool)]
            reads: set[str] = set()
            facts: set[str] = set()
            whole = False
            for r in rules:
                reads.update(name for name, _ in r._patterns)
                facts.update(r.facts or ())
                whole = whole or r.check is not None
            got = self._by_tool[tool] = (rules, None if whole else tuple(sorted(reads)), tuple(sorted(facts)))
        return got

    def _key(self, agent: str, tool: str, args: Mapping[str, Any], reads: tuple[str, ...] | None,
             fact_names: tuple[str, ...], facts: Mapping[str, Any] | None) -> tuple[Any, ...]:
        known = tuple(_norm((facts or {}).get(n)) for n in fact_names) if fact_names else ()
        if reads is None:  # a Python check may read anything
            return (agent, tool, *known, json.dumps(args, sort_keys=True, default=str))
        return (agent, tool, *known, *(_norm(args.get(n)) for n in reads))

    def _rule_decision(self, tool: str, args: Mapping[str, Any], rules: list[Rule],
                       facts: Mapping[str, Any] | None) -> tuple[str, str, str]:
        for rule in rules:
            if rule.matches(args, facts):
                return rule.action, "rule", rule.reason or f"rule {rule.tool!r} -> {rule.action}"
        return self.default, "default", f"no rule matched; default {self.default}"

    async def decide(self, tool: str, args: Mapping[str, Any], *, run_id: str | None = None,
                     agent: str = "", facts: Mapping[str, Any] | None = None,
                     bus: EventBus | None = None) -> Decision:
        """Whether ``tool(**args)`` may run now (``facts``: what is known of the tool, ``Tool.facts``).

        Emits ``PolicyDecided`` on ``bus`` (the run's; default the policy's own, else the default runtime's)."""
        t0 = self._clock()
        bus = bus or self.bus or default_bus()
        rules, reads, fact_names = self._candidates(tool)
        key = self._key(agent, tool, args, reads, fact_names, facts)
        entry = self._cache.get(key)
        cached = entry[1] if entry is not None and entry[0] > t0 else None
        if cached is not None:
            self.hits += 1
            action, by, reason = cached
        else:
            self.misses += 1
            action, by, reason = self._rule_decision(tool, args, rules, facts)
            cache = self._cache
            cache.pop(key, None)
            if len(cache) >= self.cache_size:
                del cache[next(iter(cache))]
            cache[key] = (t0 + self.cache_ttl, (action, by, reason))
        if action == "ask":
            action, by, reason = await self._ask(tool, dict(args), run_id)
        decision = Decision(action, by, reason, self._clock() - t0, cached is not None)
        bus.emit(PolicyDecided(run_id=run_id, tool=tool, action=decision.action, decided_by=decision.decided_by,
                               reason=decision.reason[:500], seconds=decision.seconds, cached=decision.cached))
        return decision

    async def _ask(self, tool: str, args: dict[str, Any], run_id: str | None) -> tuple[str, str, str]:
        if (run_id, tool) in self._always:
            return "allow", "run-memo", "approved for the rest of this run"
        if self.ask is None:
            return "deny", "no-callback", "the policy asks for approval and nobody can be asked here"
        try:
            answer = await asyncio.wait_for(self.ask(tool, args, run_id), self.ask_timeout)
        except TimeoutError:
            return "deny", "timeout", f"no approval within {self.ask_timeout:g} s"
        if answer == "always":
            self._always.add((run_id, tool))
            return "allow", "callback", "approved for the rest of this run"
        if answer is True or answer == "allow":
            return "allow", "callback", "approved"
        return "deny", "callback", "denied by the person asked" if answer is False else f"denied: {answer}"

    def forget_run(self, run_id: str | None) -> None:
        """Drop the run's "always" approvals (the agent calls it when a run ends)."""
        self._always = {k for k in self._always if k[0] != run_id}
