"""Request handling and state of the simulated OpenAI-compatible chat server."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .behavior import Behavior, Reply, default_behavior, estimate_prompt_tokens, first_tool_name
from .capacity import CapacityGate
from .config import SimConfig
from .faults import STATUS_FAULTS, Fault, error_body, format_retry_after
from .wire import (
    DONE_EVENT,
    GARBAGE_BODY,
    GARBAGE_EVENT,
    INVALID_JSON_ARGS,
    build_usage,
    completion_body,
    dumps,
    stream_events,
)

MODEL_IDS: tuple[str, ...] = ("sim-model",)
_JSON = "application/json"
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DELAY_KINDS = ("slow_first_token", "stall")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    resp = web.Response(body=dumps(payload), status=status, headers=headers)
    resp.content_type = _JSON
    return resp


def _error(
    status: int, message: str, err_type: str, code: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    return _json_response(error_body(message, err_type, code), status, headers)


def _drop(request: web.BaseRequest, resp: web.StreamResponse | None = None) -> web.StreamResponse:
    """Close the connection abruptly; whatever is returned is never (completely) sent."""
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp if resp is not None else web.Response(status=500)


class SimCore:
    """State and HTTP handler shared by the in-process and the subprocess server.

    All methods except :meth:`handle` may be called from any thread.
    """

    def __init__(self, config: SimConfig, behavior: Behavior | None = None) -> None:
        self.config = config
        self.behavior = behavior
        self._lock = threading.Lock()
        self._faults: deque[Fault] = deque()
        self._replies: deque[Reply] = deque()
        self._rng = random.Random(config.seed)
        self._history: list[dict[str, Any]] = []
        self._call_counter = 0
        self._resp_counter = 0
        self.requests = 0
        self.completed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._fault_counts: dict[str, int] = {}
        self._rejected: dict[str, int] = {"auth": 0, "context_length": 0, "bad_request": 0}
        self.capacity = CapacityGate(lambda: self.config.capacity)
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/chat/completions"): self._chat,
            ("GET", "/v1/models"): self._models,
            ("GET", "/models"): self._models,
            ("GET", "/health"): self._health,
            ("GET", "/_sim/stats"): self._stats_endpoint,
            ("GET", "/_sim/history"): self._history_endpoint,
            ("POST", "/_sim/config"): self._config_endpoint,
            ("POST", "/_sim/reset"): self._reset_endpoint,
            ("POST", "/_sim/inject"): self._inject_endpoint,
            ("POST", "/_sim/script"): self._script_endpoint,
        }

    # ----------------------------------------------------------------- control (thread-safe)

    def configure(self, **changes: Any) -> SimConfig:
        """Apply setting changes; a new ``seed`` re-seeds the fault random generator."""
        with self._lock:
            self.config = self.config.updated(**changes)
            if "seed" in changes:
                self._rng = random.Random(self.config.seed)
            return self.config

    def inject(self, *faults: Fault) -> None:
        """Queue faults consumed in order, one per chat-completion request."""
        with self._lock:
            self._faults.extend(faults)

    def script(self, *replies: Reply) -> None:
        """Queue replies consumed in order before the behaviour is asked."""
        with self._lock:
            self._replies.extend(replies)

    def reset(self) -> None:
        """Clear counters, history and queues and re-seed the fault generator (settings are kept)."""
        with self._lock:
            self._faults.clear()
            self._replies.clear()
            self._history.clear()
            self._rng = random.Random(self.config.seed)
            self._call_counter = self._resp_counter = 0
            self.requests = self.completed = self.max_in_flight = 0
            self.max_in_flight = self.in_flight
            self._fault_counts = {}
            self._rejected = {key: 0 for key in self._rejected}
            self.capacity.reset()

    def history(self) -> list[dict[str, Any]]:
        """Return a copy of the recorded request bodies."""
        with self._lock:
            return list(self._history)

    def stats(self) -> dict[str, Any]:
        """Return counters as a JSON-serialisable dict."""
        with self._lock:
            return {
                "requests": self.requests,
                "completed": self.completed,
                "faults": dict(self._fault_counts),
                "rejected": dict(self._rejected),
                "in_flight": self.in_flight,
                "max_in_flight": self.max_in_flight,
                "pending_faults": len(self._faults),
                "pending_replies": len(self._replies),
                "history": len(self._history),
                "capacity": self.capacity.stats(self.config.capacity, self.config.overload),
            }

    # ----------------------------------------------------------------- HTTP

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Entry point for the low-level aiohttp server."""
        route = self._routes.get((request.method, request.path))
        if route is None:
            if any(path == request.path for _, path in self._routes):
                return _error(405, f"Method {request.method} not allowed", "invalid_request_error", None)
            return _error(404, f"Unknown path {request.path}", "invalid_request_error", "not_found")
        return await route(request)

    def _authorized(self, request: web.BaseRequest, config: SimConfig) -> bool:
        return config.api_key is None or request.headers.get("Authorization") == "Bearer " + config.api_key

    async def _health(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json_response({"status": "ok"})

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        if not self._authorized(request, self.config):
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        data = [{"id": mid, "object": "model", "created": 0, "owned_by": "nbagent"} for mid in MODEL_IDS]
        return _json_response({"object": "list", "data": data})

    async def _stats_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json_response(self.stats())

    async def _history_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        return _json_response(self.history())

    async def _read_control(self, request: web.BaseRequest) -> Any:
        raw = await request.read()
        return json.loads(raw) if raw.strip() else {}

    async def _config_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            changes = await self._read_control(request)
            if not isinstance(changes, dict):
                raise TypeError("expected a JSON object")
            config = self.configure(**changes)
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        return _json_response(config.to_dict())

    async def _reset_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        self.reset()
        return _json_response({"ok": True})

    async def _inject_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            data = await self._read_control(request)
            self.inject(*(Fault.from_dict(item) for item in data.get("faults", [])))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        return _json_response({"ok": True})

    async def _script_endpoint(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            data = await self._read_control(request)
            self.script(*(Reply.from_dict(item) for item in data.get("replies", [])))
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            return _error(400, str(exc), "invalid_request_error", None)
        return _json_response({"ok": True})

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        config = self.config
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            if self.in_flight > self.max_in_flight:
                self.max_in_flight = self.in_flight
        try:
            if config.capacity is None:
                return await self._chat_inner(request, config)
            if not await self.capacity.admit(config.overload):
                headers = ({"Retry-After": format_retry_after(config.overload_retry_after)}
                           if config.overload_retry_after is not None else None)
                return _error(429, f"The server is at capacity ({config.capacity} requests); try again later "
                              "(simulated).", "rate_limit_error", "overloaded", headers)
            try:
                return await self._chat_inner(request, config)
            finally:
                self.capacity.leave()
        finally:
            with self._lock:
                self.in_flight -= 1

    def _take_fault(self, config: SimConfig) -> Fault | None:
        with self._lock:
            if self._faults:
                fault: Fault | None = self._faults.popleft()
            elif config.fault_rate > 0 and self._rng.random() < config.fault_rate:
                kind = self._rng.choice(config.fault_kinds)
                fault = Fault(kind, delay=config.fault_delay if kind in _DELAY_KINDS else 0.0)
            else:
                fault = None
            if fault is not None:
                self._fault_counts[fault.kind] = self._fault_counts.get(fault.kind, 0) + 1
            return fault

    async def _chat_inner(self, request: web.BaseRequest, config: SimConfig) -> web.StreamResponse:
        if not self._authorized(request, config):
            with self._lock:
                self._rejected["auth"] += 1
            return _error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict):
                raise ValueError("the request body must be a JSON object")
        except ValueError as exc:
            with self._lock:
                self._rejected["bad_request"] += 1
            return _error(400, f"Invalid JSON body: {exc}", "invalid_request_error", None)
        if config.record_history:
            with self._lock:
                self._history.append(body)

        fault = self._take_fault(config)
        kind = fault.kind if fault is not None else None
        stream = body.get("stream") is True
        if fault is not None:
            if kind in STATUS_FAULTS:
                return await self._status_fault(fault)
            if kind == "drop" or (kind == "drop_mid_stream" and not stream):
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                return _drop(request)

        prompt_tokens = estimate_prompt_tokens(body.get("messages"))
        if config.context_window is not None and prompt_tokens > config.context_window:
            with self._lock:
                self._rejected["context_length"] += 1
            return _error(
                400,
                f"This model's maximum context length is {config.context_window} tokens. However, your messages "
                f"resulted in {prompt_tokens} tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            )

        if kind == "garbage":
            assert fault is not None
            return await self._garbage(request, fault, config, stream)
        if kind == "raw":
            assert fault is not None
            if fault.delay:
                await asyncio.sleep(fault.delay)
            raw = web.Response(body=fault.body.encode(), status=fault.status or 200)
            raw.content_type = fault.content_type
            return raw

        scripted = False
        try:
            if kind == "invalid_json_args":
                reply = Reply(text="", tool_calls=[(first_tool_name(body) or "tool", INVALID_JSON_ARGS)])
            else:
                reply, scripted = self._next_reply(body, config, consume=kind != "drop_mid_stream")
        except Exception as exc:  # a user behaviour failed: report it to the client
            return _error(500, f"behavior raised {type(exc).__name__}: {exc}", "server_error", None)

        try:
            if stream:
                resp = await self._send_stream(request, body, reply, fault, config, prompt_tokens)
            else:
                resp = await self._send_completion(body, reply, fault, config, prompt_tokens)
        except (asyncio.CancelledError, ConnectionError):
            if scripted:  # the client went away before the reply was delivered: keep it for the next request
                with self._lock:
                    self._replies.appendleft(reply)
            raise
        if kind != "drop_mid_stream":
            with self._lock:
                self.completed += 1
        return resp

    def _next_reply(self, body: dict[str, Any], config: SimConfig, *, consume: bool) -> tuple[Reply, bool]:
        with self._lock:
            if self._replies:
                return (self._replies.popleft() if consume else self._replies[0]), consume
        if self.behavior is not None:
            reply = self.behavior(body)
            if not isinstance(reply, Reply):
                raise TypeError(f"behavior must return a Reply, not {type(reply).__name__}")
            return reply, False
        return default_behavior(body, config.tool_calls_per_run), False

    async def _status_fault(self, fault: Fault) -> web.StreamResponse:
        if fault.delay:
            await asyncio.sleep(fault.delay)
        status, err_type, code, message = STATUS_FAULTS[fault.kind]
        headers = {"Retry-After": format_retry_after(fault.retry_after)} if fault.retry_after is not None else None
        return _error(fault.status or status, message, err_type, code, headers)

    async def _garbage(
        self, request: web.BaseRequest, fault: Fault, config: SimConfig, stream: bool
    ) -> web.StreamResponse:
        wait = config.latency + fault.delay
        if wait:
            await asyncio.sleep(wait)
        if not stream:
            resp = web.Response(body=GARBAGE_BODY, status=fault.status or 200)
            resp.content_type = _JSON
            return resp
        sresp = web.StreamResponse(status=fault.status or 200, headers=_SSE_HEADERS)
        await sresp.prepare(request)
        await sresp.write(GARBAGE_EVENT + DONE_EVENT)
        await sresp.write_eof()
        return sresp

    def _ids(self, n_calls: int) -> tuple[str, list[str], int]:
        with self._lock:
            self._resp_counter += 1
            resp_id = f"chatcmpl-sim{self._resp_counter}"
            first = self._call_counter + 1
            self._call_counter += n_calls
        return resp_id, [f"call_{first + i}" for i in range(n_calls)], int(time.time())

    async def _send_completion(
        self, body: dict[str, Any], reply: Reply, fault: Fault | None, config: SimConfig, prompt_tokens: int
    ) -> web.StreamResponse:
        wait = config.latency + (fault.delay if fault is not None and fault.kind in _DELAY_KINDS else 0.0)
        if wait:
            await asyncio.sleep(wait)
        calls = reply.encoded_tool_calls()
        resp_id, call_ids, created = self._ids(len(calls))
        usage = build_usage(prompt_tokens, reply, calls) if config.report_usage else None
        payload = completion_body(
            reply=reply,
            tool_calls=calls,
            call_ids=call_ids,
            resp_id=resp_id,
            created=created,
            model=str(body.get("model") or MODEL_IDS[0]),
            usage=usage,
        )
        resp = web.Response(body=payload)
        resp.content_type = _JSON
        return resp

    async def _send_stream(
        self,
        request: web.BaseRequest,
        body: dict[str, Any],
        reply: Reply,
        fault: Fault | None,
        config: SimConfig,
        prompt_tokens: int,
    ) -> web.StreamResponse:
        kind = fault.kind if fault is not None else None
        calls = reply.encoded_tool_calls()
        resp_id, call_ids, created = self._ids(len(calls))
        options = body.get("stream_options")
        include_usage = config.report_usage and isinstance(options, dict) and options.get("include_usage") is True
        events = stream_events(
            reply=reply,
            tool_calls=calls,
            call_ids=call_ids,
            resp_id=resp_id,
            created=created,
            model=str(body.get("model") or MODEL_IDS[0]),
            usage=build_usage(prompt_tokens, reply, calls) if include_usage else None,
        )
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)

        first_wait = config.ttft if config.ttft is not None else config.latency
        if kind == "slow_first_token":
            assert fault is not None
            first_wait += fault.delay
        if first_wait:
            await asyncio.sleep(first_wait)

        if kind == "drop_mid_stream":
            # Send the opening events (role and some content) but never the finish event nor [DONE].
            cut = max(1, min(len(events) // 2, len(events) - 3))
            for i, ev in enumerate(events[:cut]):
                if i and config.chunk_delay:
                    await asyncio.sleep(config.chunk_delay)
                await resp.write(ev)
            return _drop(request, resp)

        delay = config.chunk_delay
        if kind == "stall":
            # the role chunk and the first content chunk, then silence: an idle gap after the first token
            assert fault is not None
            await resp.write(b"".join(events[:2]))
            await asyncio.sleep(fault.delay)
            events = events[2:]
            if delay:
                await asyncio.sleep(delay)
        if not delay:
            await resp.write(b"".join(events))
        else:
            for i, ev in enumerate(events):
                if i:
                    await asyncio.sleep(delay)
                await resp.write(ev)
        await resp.write_eof()
        return resp
