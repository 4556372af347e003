"""Settings: defaults < TOML config file < environment < per-call arguments.

The config file is ``$NBAGENT_CONFIG`` or ``<home>/config.toml``; ``home`` is ``$NBAGENT_HOME`` or
``~/.local/share/nbagent`` (``$XDG_DATA_HOME`` respected). Example::

    profile = "local"                 # the default profile

    [profiles.local]
    base_url = "http://127.0.0.1:8080/v1"
    model = "smollm2"
    context_window = 8192

    [profiles.openai]
    base_url = "https://api.openai.com/v1"
    model = "gpt-4o-mini"             # api_key comes from OPENAI_API_KEY

    [http]                            # pool sizes and timeouts
    max_connections = 1000
    concurrency = "adaptive"          # or a fixed number of requests in flight per endpoint
    read_timeout = 120

    [retry]
    max_attempts = 5

    [limits]
    max_steps = 20
    max_cost = 0.50

    [prices."my-model"]              # USD per million tokens
    input = 1.0
    output = 2.0

    [sandbox]
    backend = "auto"

Environment: ``NBAGENT_PROFILE``, ``NBAGENT_MODEL``, ``NBAGENT_BASE_URL`` (else ``OPENAI_BASE_URL``),
``NBAGENT_API_KEY`` (else ``OPENAI_API_KEY``), ``NBAGENT_EMBEDDED=0`` (never fall back to the embedded
local model), and ``NBAGENT_<SECTION>__<FIELD>`` for any field of a
section, e.g. ``NBAGENT_LIMITS__MAX_STEPS=5`` or ``NBAGENT_HTTP__READ_TIMEOUT=30``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, EndpointNotConfigured

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Endpoint",
    "HTTPSettings",
    "LimitSettings",
    "Price",
    "Profile",
    "RetrySettings",
    "Settings",
    "user_dir",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"


def user_dir(env: Mapping[str, str] | None = None) -> Path:
    """nbagent's data directory (cache, run store, config): ``$NBAGENT_HOME`` or the XDG data dir."""
    env = os.environ if env is None else env
    if env.get("NBAGENT_HOME"):
        return Path(env["NBAGENT_HOME"]).expanduser()
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "nbagent"


@dataclass
class HTTPSettings:
    """Connection pool and timeouts (seconds) shared by every model endpoint."""

    transport: str = "aiohttp"  # "aiohttp" (scales to hundreds of connections) or "httpx"
    max_connections: int = 1000
    max_keepalive_connections: int = 1000
    keepalive_expiry: float = 30.0
    connect_timeout: float = 5.0
    read_timeout: float = 120.0
    write_timeout: float = 30.0
    pool_timeout: float = 60.0
    request_timeout: float = 600.0  # the whole request, retries not included
    ttft_timeout: float = 120.0  # streams: time to the first token
    idle_timeout: float = 60.0  # streams: longest gap between two chunks
    concurrency: str = "adaptive"  # requests in flight per endpoint: "adaptive" or a fixed number
    concurrency_initial: int = 32  # where an adaptive limit starts
    concurrency_max: int = 1000  # an adaptive limit never exceeds this (nor max_connections)
    concurrency_tolerance: float = 1.5  # latency over this x the baseline counts as queueing


@dataclass
class RetrySettings:
    """Our retry policy (the SDK's own retries are off)."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After gives up instead of sleeping
    budget_ratio: float = 0.2  # each request earns this many retries...
    budget_min: float = 10.0  # ...on top of this reserve; a retry spends one


@dataclass
class LimitSettings:
    """Per-run usage limits (None = unlimited) and loop behaviour."""

    max_steps: int = 20
    max_requests: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_cost: float | None = None
    max_wall_time: float | None = None
    max_tool_output_chars: int = 20_000
    tool_concurrency: int = 8
    stuck_repeats: int = 3  # the same tool call with the same arguments this many times ends the run
    reserve_output_tokens: int = 256  # pre-flight: room kept for the answer when max_tokens is not set


@dataclass
class Price:
    """USD per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None  # defaults to ``input``


@dataclass
class Profile:
    """A named endpoint + model."""

    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    context_window: int | None = None


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: where to send requests, with which key and model."""

    base_url: str
    api_key: str
    model: str
    context_window: int | None = None


DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.5, 10.0, 1.25),
    "gpt-4o-mini": Price(0.15, 0.60, 0.075),
    "gpt-4.1": Price(2.0, 8.0, 0.5),
    "gpt-4.1-mini": Price(0.4, 1.6, 0.1),
    "gpt-4.1-nano": Price(0.1, 0.4, 0.025),
    "o3-mini": Price(1.1, 4.4, 0.55),
}

DEFAULT_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "o3-mini": 200_000,
    "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385,
}

_SECTIONS = {"http": HTTPSettings, "retry": RetrySettings, "limits": LimitSettings}


@dataclass
class Settings:
    """Everything configurable. Build with :meth:`Settings.load`; derive with :meth:`replace`."""

    profile: str | None = None
    profiles: dict[str, Profile] = field(default_factory=dict)
    model: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    context_window: int | None = None
    stream: bool = False
    count_tokens: bool = True
    embedded: bool = True  # with no endpoint configured, fall back to the embedded local model
    http: HTTPSettings = field(default_factory=HTTPSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    context_windows: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CONTEXT_WINDOWS))
    sandbox: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)  # [policy] table: see nbagent.policy.Policy.from_settings
    home: Path = field(default_factory=user_dir)
    config_path: Path | None = None

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, config_path: str | Path | None = None, *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then the TOML file, then the environment, then ``overrides`` (per-call arguments)."""
        env = os.environ if env is None else env
        s = cls(home=user_dir(env))
        path = Path(config_path) if config_path else Path(env["NBAGENT_CONFIG"]) if env.get("NBAGENT_CONFIG") else None
        if path is None and (s.home / "config.toml").is_file():
            path = s.home / "config.toml"
        if path is not None:
            s._apply_file(path)
        s._apply_env(env)
        return s.replace(**overrides) if overrides else s

    def _apply_file(self, path: Path) -> None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        self.config_path = path
        for key, value in data.items():
            if key in _SECTIONS:
                _update_dataclass(getattr(self, key), value, f"[{key}]")
            elif key == "profiles":
                for name, prof in _table(value, "[profiles]").items():
                    p = Profile()
                    _update_dataclass(p, prof, f"[profiles.{name}]")
                    self.profiles[name] = p
            elif key == "prices":
                for model, price in _table(value, "[prices]").items():
                    pr = Price()
                    _update_dataclass(pr, price, f'[prices."{model}"]')
                    self.prices[model] = pr
            elif key == "context_windows":
                self.context_windows.update({k: int(v) for k, v in _table(value, "[context_windows]").items()})
            elif key == "sandbox":
                self.sandbox.update(_table(value, "[sandbox]"))
            elif key == "policy":
                self.policy.update(_table(value, "[policy]"))
            elif key in {"profile", "model", "base_url", "api_key", "context_window", "stream", "count_tokens",
                         "embedded"}:
                setattr(self, key, _coerce(value, type(getattr(self, key)) if getattr(self, key) is not None
                                           else type(value), key))
            else:
                raise ConfigError(f"{path}: unknown setting {key!r}")

    def _apply_env(self, env: Mapping[str, str]) -> None:
        for var, attr in (("NBAGENT_PROFILE", "profile"), ("NBAGENT_MODEL", "model")):
            if env.get(var):
                setattr(self, attr, env[var])
        base_url = env.get("NBAGENT_BASE_URL") or env.get("OPENAI_BASE_URL")
        if base_url:
            self.base_url = base_url
        api_key = env.get("NBAGENT_API_KEY") or env.get("OPENAI_API_KEY")
        if api_key:
            self.api_key = api_key
        for var, attr in (("NBAGENT_STREAM", "stream"), ("NBAGENT_EMBEDDED", "embedded")):
            if env.get(var):
                setattr(self, attr, _coerce(env[var], bool, var))
        for var, value in env.items():
            if not var.startswith("NBAGENT_") or "__" not in var:
                continue
            section, _, fname = var[len("NBAGENT_"):].lower().partition("__")
            if section == "sandbox":
                self.sandbox[fname] = value
            elif section in _SECTIONS:
                _update_dataclass(getattr(self, section), {fname: value}, var)
            else:
                raise ConfigError(f"unknown settings section in {var}")

    def replace(self, **overrides: Any) -> Settings:
        """A copy with top-level fields or ``section__field`` keys replaced (None values are ignored)."""
        new = dataclasses.replace(
            self,
            http=dataclasses.replace(self.http),
            retry=dataclasses.replace(self.retry),
            limits=dataclasses.replace(self.limits),
            profiles=dict(self.profiles),
            prices=dict(self.prices),
            sandbox=dict(self.sandbox),
            policy=dict(self.policy),
        )
        for key, value in overrides.items():
            if value is None:
                continue
            if "__" in key:
                section, _, fname = key.partition("__")
                if section not in _SECTIONS:
                    raise ConfigError(f"unknown settings section {section!r}")
                _update_dataclass(getattr(new, section), {fname: value}, key)
            elif key in _SECTIONS and isinstance(value, Mapping):
                _update_dataclass(getattr(new, key), value, key)
            elif hasattr(new, key):
                setattr(new, key, value)
            else:
                raise ConfigError(f"unknown setting {key!r}")
        return new

    # --- resolving ------------------------------------------------------------------------------

    def endpoint(self, model: str | None = None, base_url: str | None = None, api_key: str | None = None) -> Endpoint:
        """Resolve where requests go: arguments > top-level settings (env) > the profile."""
        prof = Profile()
        if self.profile is not None:
            if self.profile not in self.profiles:
                known = ", ".join(sorted(self.profiles)) or "none defined"
                raise ConfigError(f"unknown profile {self.profile!r} (profiles: {known})")
            prof = self.profiles[self.profile]
        url = base_url or self.base_url or prof.base_url
        key = api_key or self.api_key or prof.api_key
        from .store.redact import add_secret  # no configured key may reach the run store, caches or logs

        for secret in (key, self.api_key, *(p.api_key for p in self.profiles.values())):
            add_secret(secret)
        name = model or self.model or prof.model
        if url is None:
            if key is None:
                raise EndpointNotConfigured(
                    "no model endpoint configured: set OPENAI_BASE_URL or NBAGENT_BASE_URL (or OPENAI_API_KEY "
                    "for OpenAI), pass base_url=..., or add a profile to the config file"
                )
            url = OPENAI_BASE_URL
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"base URL must start with http:// or https://, got {url!r}")
        if key is None:
            if "api.openai.com" in url:
                raise ConfigError("missing API key for api.openai.com: set OPENAI_API_KEY or NBAGENT_API_KEY")
            key = "sk-no-key-required"  # local servers (llama.cpp, vLLM, Ollama) accept any key
        if not name:
            raise ConfigError("no model name: pass model=..., set NBAGENT_MODEL, or set it in a profile")
        window = self.context_window or prof.context_window or self.context_window_for(name)
        return Endpoint(base_url=url.rstrip("/"), api_key=key, model=name, context_window=window)

    def context_window_for(self, model: str) -> int | None:
        if model in self.context_windows:
            return self.context_windows[model]
        # dated snapshots such as gpt-4o-2024-08-06 share their family's window
        best = max((k for k in self.context_windows if model.startswith(k + "-")), key=len, default=None)
        return self.context_windows[best] if best else None

    def price_for(self, model: str) -> Price | None:
        if model in self.prices:
            return self.prices[model]
        best = max((k for k in self.prices if model.startswith(k + "-")), key=len, default=None)
        return self.prices[best] if best else None


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _coerce(value: Any, tp: type, where: str) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"1", "true", "yes", "on"}:
            return True
        if str(value).lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None


def _update_dataclass(obj: Any, values: Mapping[str, Any], where: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in _table(dict(values), where).items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(fields)})")
        current = getattr(obj, key)
        if value is None or (isinstance(value, str) and value.lower() in {"none", ""} and current is None):
            setattr(obj, key, None)
            continue
        ann = str(fields[key].type)
        tp = bool if "bool" in ann else float if "float" in ann else int if "int" in ann else str
        setattr(obj, key, _coerce(value, tp, f"{where} {key}"))
