"""What a run widget shows, folded from the run's events: plain data, no widget and no run logic.

:class:`RunState` takes events one by one (:meth:`RunState.apply`) and the final
:class:`~nbagent.agent.RunResult` (:meth:`RunState.finish`); views read it and render. ``version`` grows
with every change so a view can skip redraws when nothing changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..events import Event

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
    """Everything a run view displays."""

    name: str
    run_id: str = ""
    prompt: str = ""
    model: str = ""
    status: str = "starting"
    stop_reason: str = ""
    error: str | None = None
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    streamed_chars: int = 0  # of the request in flight: a live estimate until its usage arrives
    requests: int = 0
    tool_calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    cost: float = 0.0
    cards: list[StepCard] = field(default_factory=list)
    dropped_cards: int = 0
    warnings: list[str] = field(default_factory=list)
    profile_text: str = ""  # the profile's breakdown and call tree, for runs started with --profile
    pending_approval: str = ""  # the tool call a policy is asking about, while it waits for an answer
    version: int = 0
    _tools: dict[str, StepItem] = field(default_factory=dict, repr=False)
    _fresh_text: bool = field(default=False, repr=False)

    # --- reading ----------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.status in FINAL

    def elapsed(self, now: float | None = None) -> float:
        end = self.ended if self.ended is not None else (time.monotonic() if now is None else now)
        return max(end - self.started, 0.0)

    @property
    def live_output_tokens(self) -> int:
        """Output tokens so far, with ~4 characters per token for the answer still streaming."""
        return self.output_tokens + self.streamed_chars // 4

    # --- folding events -----------------------------------------------------------------------------

    def _card(self) -> StepCard:
        if not self.cards:
            self._new_card(max(self.requests, 1))
        return self.cards[-1]

    def _new_card(self, step: int) -> None:
        self.cards.append(StepCard(step))
        if len(self.cards) > MAX_CARDS:
            del self.cards[0]
            self.dropped_cards += 1

    def _add(self, item: StepItem) -> None:
        card = self._card()
        card.items.append(item)
        card.version += 1

    def apply(self, ev: Event) -> None:
        """Fold one event of this run into the state."""
        handler = _HANDLERS.get(ev.kind)
        if handler is not None:
            handler(self, ev)
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
        """Take the authoritative figures from the run's result."""
        u = result.usage
        self.status, self.stop_reason = result.status, result.stop_reason
        self.run_id = self.run_id or result.run_id
        self.error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        if result.status == "error" and self.error is None:
            self.error = result.stop_reason
        self.input_tokens, self.output_tokens = u.tokens.input_tokens, u.tokens.output_tokens
        self.cached_tokens, self.cost = u.tokens.cached_tokens, u.cost
        self.requests, self.tool_calls, self.cache_hits = u.requests, u.tool_calls, u.cache_hits
        self.streamed_chars = 0
        self.pending_approval = ""
        profile = getattr(result, "profile", None)
        if profile is not None:
            self.profile_text = f"{profile.breakdown_table()}\n\n{profile.text[:20_000]}"
        if result.output:
            self.text = result.output[:MAX_TEXT]
        if self.ended is None:
            self.ended = self.started + result.timings.get("total", self.elapsed())
        for item in self._tools.values():
            item.done = True
        self.version += 1


def _monotonic(ts: float) -> float:
    """An event's wall-clock ``ts`` on the monotonic clock."""
    return time.monotonic() - max(time.time() - ts, 0.0)


def _on_run_started(s: RunState, e: Any) -> None:
    s.status, s.run_id, s.model = "running", e.run_id or s.run_id, e.model or s.model
    s.started = _monotonic(e.ts)
    s.prompt = s.prompt or e.prompt


def _on_step(s: RunState, e: Any) -> None:
    s._new_card(e.step)


def _on_llm_request(s: RunState, e: Any) -> None:
    s.streamed_chars = 0
    s._fresh_text = True  # the next streamed text starts a new answer
    if e.attempt == 1:
        s._add(StepItem("llm", "model call", "waiting…"))


def _on_first_token(s: RunState, e: Any) -> None:
    item = _last(s, "llm")
    if item is not None:
        item.detail = f"first token {e.ttft:.2f} s, streaming…"
        s._card().version += 1


def _on_delta(s: RunState, e: Any) -> None:
    if s._fresh_text:
        s.text, s._fresh_text = "", False
    s.streamed_chars += len(e.text)
    if len(s.text) < MAX_TEXT:
        s.text += e.text


def _on_llm_response(s: RunState, e: Any) -> None:
    s.requests += 1
    s.input_tokens += e.input_tokens
    s.output_tokens += e.output_tokens
    s.cached_tokens += e.cached_tokens
    s.cost += e.cost
    s.streamed_chars = 0
    ttft = f", ttft {e.ttft:.2f} s" if e.ttft is not None else ""
    retries = f", {e.attempts - 1} retries" if e.attempts > 1 else ""
    tools = f" → {e.tool_calls} tool call{'s' if e.tool_calls != 1 else ''}" if e.tool_calls else ""
    detail = (f"{e.input_tokens:,} in / {e.output_tokens:,} out"
              + (f" / {e.cached_tokens:,} cached" if e.cached_tokens else "")
              + f" tok · {e.latency:.2f} s{ttft}{retries}{tools}")
    item = _last(s, "llm")
    label = "model call (cache hit)" if e.cached else "model call"
    if item is None or item.done:
        s._add(StepItem("llm", label, detail, done=True, seconds=e.latency))
    else:
        item.label, item.detail, item.done, item.seconds = label, detail, True, e.latency
        s._card().version += 1


def _on_retry(s: RunState, e: Any) -> None:
    s.retries += 1
    s._add(StepItem("retry", f"retry after attempt {e.attempt}", f"{e.reason}, waiting {e.wait:.2f} s", ok=False,
                    done=True))


def _on_failed(s: RunState, e: Any) -> None:
    s._add(StepItem("error", "model call failed", shorten(f"{e.error_type}: {e.message}", 200), ok=False, done=True))


def _on_tool_started(s: RunState, e: Any) -> None:
    item = StepItem("tool", e.name, shorten(e.arguments or "{}", 120))
    s._tools[e.call_id] = item
    s._add(item)


def _on_tool_finished(s: RunState, e: Any) -> None:
    s.tool_calls += 1
    item = s._tools.pop(e.call_id, None)
    args = item.detail if item is not None else ""
    out = shorten(e.error or e.output_preview or "", 120)
    cut = f" (truncated, {e.output_chars:,} chars)" if e.truncated else ""
    detail = f"({args}) {e.duration:.2f} s → {out}{cut}"
    if item is None:
        s._add(StepItem("tool", e.name, detail, ok=e.ok, done=True, seconds=e.duration))
        return
    item.detail, item.ok, item.done, item.seconds = detail, e.ok, True, e.duration
    for card in reversed(s.cards):
        if item in card.items:
            card.version += 1
            break


def _on_cache_hit(s: RunState, e: Any) -> None:
    s.cache_hits += 1
    saved = f", {e.tokens_saved:,} tokens saved" if e.tokens_saved else ""
    s._add(StepItem("cache", f"{e.cache} cache hit", f"{e.tier}{saved}", done=True))


def _on_limit(s: RunState, e: Any) -> None:
    s.warn(f"limit {e.limit} reached ({e.value:g} of {e.maximum:g})")


def _on_run_finished(s: RunState, e: Any) -> None:
    s.status, s.stop_reason, s.error = e.status, e.stop_reason, e.error
    s.ended = s.ended or _monotonic(e.ts)


def _on_sandbox_leased(s: RunState, e: Any) -> None:
    s._add(StepItem("sandbox", f"sandbox {e.backend}", f"leased after {e.wait:.2f} s", done=True))


def _on_sandbox_exec(s: RunState, e: Any) -> None:
    code = "timed out" if getattr(e, "timed_out", False) else f"exit {e.exit_code}"
    s._add(StepItem("sandbox", f"exec ({e.lang})", f"{e.seconds:.2f} s, {code}", ok=bool(e.ok), done=True))


def _on_policy(s: RunState, e: Any) -> None:
    if e.action == "allow" and e.decided_by in ("rule", "default"):
        return  # an allowed call shows as the tool call itself
    label = f"{e.tool}: {'approved' if e.action == 'allow' else 'denied'}"
    s._add(StepItem("policy", label, f"{e.decided_by}, {shorten(e.reason, 100)} ({e.seconds:.2f} s)",
                    ok=e.action == "allow", done=True, seconds=e.seconds))


def _last(s: RunState, kind: str) -> StepItem | None:
    if not s.cards:
        return None
    for item in reversed(s.cards[-1].items):
        if item.kind == kind:
            return item
    return None


_HANDLERS: dict[str, Any] = {
    "run_started": _on_run_started,
    "step_started": _on_step,
    "llm_request": _on_llm_request,
    "llm_first_token": _on_first_token,
    "llm_text_delta": _on_delta,
    "llm_response": _on_llm_response,
    "llm_retry": _on_retry,
    "llm_failed": _on_failed,
    "tool_started": _on_tool_started,
    "tool_finished": _on_tool_finished,
    "cache_hit": _on_cache_hit,
    "limit_hit": _on_limit,
    "run_finished": _on_run_finished,
    "sandbox_leased": _on_sandbox_leased,
    "sandbox_exec": _on_sandbox_exec,
    "policy_decided": _on_policy,
}
