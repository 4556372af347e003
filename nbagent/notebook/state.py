"""What a run widget shows: a view over the run's :class:`~nbagent.record.RunRecord`; no widget, no run logic.

:class:`RunState` reads the record that the runtime folds (or folds one itself when given events one by one,
:meth:`RunState.apply`) and the final :class:`~nbagent.agent.RunResult` (:meth:`RunState.finish`); views read
it and render. ``version`` grows with every change so a view can skip redraws when nothing changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import Event
from ..record import RunRecord, Span

if TYPE_CHECKING:
    from ..agent import RunResult

__all__ = ["RunState", "StepCard", "StepItem", "shorten"]

#: Statuses of a run that has ended.
FINAL = frozenset({"ok", "error", "cancelled", "limit", "stuck"})
MAX_TEXT = 20_000
MAX_CARDS = 200


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


@dataclass
class StepItem:
    """One line of a step card: ``kind`` is llm, tool, retry, cache, sandbox, policy or error."""

    kind: str
    label: str
    detail: str = ""
    ok: bool = True
    done: bool = False
    seconds: float = 0.0


@dataclass
class StepCard:
    """One step of the run: its model call and the tool calls it made."""

    step: int
    items: list[StepItem] = field(default_factory=list)
    version: int = 0


@dataclass
class RunState:
    """What a run view displays: a view over the run's :class:`~nbagent.record.RunRecord` (the one fold of its
    events) plus what only a view needs (the streaming text, warnings, the approval being asked)."""

    name: str
    run_id: str = ""
    prompt: str = ""
    text: str = ""
    streamed_chars: int = 0  # of the request in flight: a live estimate until its usage arrives
    dropped_cards: int = 0
    warnings: list[str] = field(default_factory=list)
    profile_text: str = ""  # the profile's breakdown and call tree, for runs started with --profile
    pending_approval: str = ""  # the tool call a policy is asking about, while it waits for an answer
    version: int = 0
    record: RunRecord = field(default_factory=lambda: RunRecord(""), repr=False)
    _shared: bool = field(default=False, repr=False)  # the record is folded by the runtime, not here
    _final: tuple[str, str, str | None] | None = field(default=None, repr=False)
    _created: float = field(default_factory=time.time, repr=False)
    _fresh_text: bool = field(default=False, repr=False)

    # --- reading ----------------------------------------------------------------------------------

    def use_record(self, record: RunRecord) -> None:
        """Show ``record``, which the runtime folds (this state then folds nothing itself)."""
        self.record, self._shared = record, True
        self.version += 1

    @property
    def status(self) -> str:
        if self._final is not None:
            return self._final[0]
        r = self.record
        return "starting" if r.started is None else r.status

    @property
    def stop_reason(self) -> str:
        return self._final[1] if self._final is not None else self.record.stop_reason

    @property
    def error(self) -> str | None:
        return self._final[2] if self._final is not None else self.record.error

    @property
    def model(self) -> str:
        return self.record.model

    @property
    def done(self) -> bool:
        return self.status in FINAL

    @property
    def started(self) -> float:
        """When the run started (seconds since the epoch; when the view was made, before that)."""
        return self.record.started if self.record.started is not None else self._created

    @property
    def ended(self) -> float | None:
        if self.record.ended is not None:
            return self.record.ended
        return time.time() if self._final is not None else None

    def elapsed(self, now: float | None = None) -> float:
        """Seconds from the start to the end (or to now while running). ``now`` is seconds since the epoch."""
        end = self.ended if self.ended is not None else (time.time() if now is None else now)
        return max(end - self.started, 0.0)

    input_tokens = property(lambda self: self.record.input_tokens)
    output_tokens = property(lambda self: self.record.output_tokens)
    cached_tokens = property(lambda self: self.record.cached_tokens)
    requests = property(lambda self: self.record.llm_calls + self.record.cached_calls)
    tool_calls = property(lambda self: self.record.tool_calls)
    retries = property(lambda self: self.record.retries)
    cost = property(lambda self: self.record.cost)

    @property
    def cache_hits(self) -> int:
        return self.record.cached_calls

    @property
    def live_output_tokens(self) -> int:
        """Output tokens so far, with ~4 characters per token for the answer still streaming."""
        return self.output_tokens + self.streamed_chars // 4

    @property
    def cards(self) -> list[StepCard]:
        """One card per step, built from the record's spans (the newest :data:`MAX_CARDS`)."""
        steps = [s for s in self.record.root.children if s.kind == "step"]
        loose = [s for s in self.record.root.children if s.kind != "step"]
        cards = [StepCard(i + 1, _items(loose)) for i in range(1 if loose else 0)]
        for span in steps:
            cards.append(StepCard(int(span.name.split()[-1]) if span.name[-1:].isdigit() else len(cards) + 1,
                                  _items(span.children)))
        self.dropped_cards = max(len(cards) - MAX_CARDS, 0)
        cards = cards[-MAX_CARDS:]
        if self.done:  # a run that ended without closing a call (cancelled from outside): nothing still waits
            for card in cards:
                for item in card.items:
                    if not item.done:
                        _close(item, self.status)
        return cards

    # --- folding events -----------------------------------------------------------------------------

    def apply(self, ev: Event) -> None:
        """Take one event of this run: the record folds it (unless the runtime does), the view keeps the text."""
        if not self._shared:
            if not self.record.run_id and ev.run_id:
                self.record.run_id = ev.run_id
            self.record.apply(ev)
        kind = ev.kind
        if kind == "llm_text_delta":
            if self._fresh_text or getattr(ev, "restart", False):  # a new answer, or a retried one restarting
                self.text, self._fresh_text = "", False
            text = ev.text  # type: ignore[attr-defined]
            self.streamed_chars += len(text)
            if len(self.text) < MAX_TEXT:
                self.text += text
        elif kind == "llm_request":
            self.streamed_chars = 0
            self._fresh_text = True  # the next streamed text starts a new answer
        elif kind == "llm_response":
            self.streamed_chars = 0
        elif kind == "run_started":
            self.run_id = ev.run_id or self.run_id
            self.prompt = self.prompt or ev.prompt  # type: ignore[attr-defined]
        elif kind == "limit_hit":
            self.warn(f"limit {ev.limit} reached ({ev.value:g} of {ev.maximum:g})")  # type: ignore[attr-defined]
        self.version += 1

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            del self.warnings[:-5]
            self.version += 1

    def set_pending(self, what: str) -> None:
        """The tool call waiting for approval ("" when none)."""
        if what != self.pending_approval:
            self.pending_approval = what
            self.version += 1

    def finish(self, result: RunResult) -> None:
        """Take the run's result: its record (when it has one), status, output and profile."""
        if result.record is not None and result.record is not self.record:
            self.record, self._shared = result.record, True
        self.run_id = self.run_id or result.run_id
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        if result.status == "error" and error is None:
            error = result.stop_reason
        self._final = (result.status, result.stop_reason, error or self.record.error)
        self.streamed_chars = 0
        self.pending_approval = ""
        profile = getattr(result, "profile", None)
        if profile is not None:
            awaited = getattr(profile, "awaited", "")
            self.profile_text = (f"{profile.breakdown_table()}\n\n" + (f"{awaited}\n\n" if awaited else "")
                                 + profile.text[:20_000])
        if result.output:
            self.text = result.output[:MAX_TEXT]
        self.version += 1


def _items(spans: list[Span]) -> list[StepItem]:
    """The lines of a step card, from the spans of one step."""
    items: list[StepItem] = []
    for sp in spans:
        maker = _ITEM.get(sp.kind)
        if maker is not None:
            items.extend(maker(sp))
    return items


def _close(item: StepItem, status: str) -> None:
    """Mark a line of a call the run never finished: it says how the run ended instead of "waiting…"."""
    how = "cancelled" if status == "cancelled" else f"not finished (the run ended: {status})"
    item.detail = how if item.kind == "llm" else f"({item.detail}) {how}"
    item.ok, item.done = False, True


def _secs(sp: Span) -> float:
    return sp.duration or 0.0


def _model_items(sp: Span) -> list[StepItem]:
    a = sp.attrs
    out: list[StepItem] = []
    if sp.end is None:
        attempt = next((c for c in reversed(sp.children) if c.kind == "attempt"), None)
        ttft = attempt.attrs.get("ttft") if attempt is not None else None
        detail = "waiting…" if ttft is None else f"first token {ttft:.2f} s, streaming…"
        out.append(StepItem("llm", "model call", detail))
    elif sp.status == "error":
        out.append(StepItem("error", "model call failed", shorten(a.get("error") or "", 200), ok=False, done=True,
                            seconds=_secs(sp)))
    elif sp.status == "cancelled":
        out.append(StepItem("llm", "model call", "cancelled", ok=False, done=True, seconds=_secs(sp)))
    else:
        ttft = f", ttft {a['ttft']:.2f} s" if a.get("ttft") is not None else ""
        retries = f", {a['attempts'] - 1} retries" if (a.get("attempts") or 1) > 1 else ""
        n = a.get("tool_calls") or 0
        tools = f" → {n} tool call{'s' if n != 1 else ''}" if n else ""
        latency = a.get("latency", _secs(sp))
        detail = (f"{a.get('input_tokens', 0):,} in / {a.get('output_tokens', 0):,} out"
                  + (f" / {a['cached_tokens']:,} cached" if a.get("cached_tokens") else "")
                  + f" tok · {latency:.2f} s{ttft}{retries}{tools}")
        label = "model call (cache hit)" if a.get("cached") else "model call"
        out.append(StepItem("llm", label, detail, done=True, seconds=latency))
    for c in sp.children:
        if c.kind == "backoff":
            out.append(StepItem("retry", "retry", f"{c.attrs.get('reason', '')}, waiting {_secs(c):.2f} s",
                                ok=False, done=True, seconds=_secs(c)))
    return out


def _tool_items(sp: Span) -> list[StepItem]:
    a = sp.attrs
    args = shorten(a.get("arguments") or "{}", 120)
    out = [*_items(sp.children)]
    if sp.end is None:
        return [StepItem("tool", sp.name, args), *out]
    if sp.status == "cancelled":
        return [StepItem("tool", sp.name, f"({args}) cancelled", ok=False, done=True, seconds=_secs(sp)), *out]
    preview = shorten(a.get("error") or a.get("output_preview") or "", 120)
    cut = f" (truncated, {a['output_chars']:,} chars)" if a.get("truncated") else ""
    return [StepItem("tool", sp.name, f"({args}) {_secs(sp):.2f} s → {preview}{cut}", ok=sp.status == "ok",
                     done=True, seconds=_secs(sp)), *out]


def _policy_items(sp: Span) -> list[StepItem]:
    a = sp.attrs
    if a.get("action") == "allow" and a.get("decided_by") in ("rule", "default"):
        return []  # an allowed call shows as the tool call itself
    label = f"{a.get('tool') or 'call'}: {'approved' if a.get('action') == 'allow' else 'denied'}"
    return [StepItem("policy", label, f"{a.get('decided_by')}, {shorten(a.get('reason') or '', 100)} "
                     f"({_secs(sp):.2f} s)", ok=a.get("action") == "allow", done=True, seconds=_secs(sp))]


_ITEM: dict[str, Any] = {
    "model": _model_items,
    "tool": _tool_items,
    "policy": _policy_items,
    "approval": _policy_items,
    "cache": lambda sp: [StepItem("cache", sp.name, str(sp.attrs.get("tier") or ""), done=True)],
    "lease": lambda sp: [StepItem("sandbox", sp.name.replace("lease", "sandbox"), f"leased after {_secs(sp):.2f} s",
                                  done=True)],
    "exec": lambda sp: [StepItem("sandbox", f"exec ({sp.name.split()[0]})",
                                 f"{_secs(sp):.2f} s, "
                                 + ("timed out" if sp.attrs.get("timed_out") else f"exit {sp.attrs.get('exit_code')}"),
                                 ok=sp.status == "ok", done=True)],
}
