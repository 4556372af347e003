"""Settings: defaults < TOML config file < environment < per-call arguments.

The config file is ``$NBAGENT_CONFIG``, else ``$XDG_CONFIG_HOME/nbagent/config.toml`` (default
``~/.config/nbagent/config.toml``). A ``config.toml`` in the data directory (``$NBAGENT_HOME``, else
``$XDG_DATA_HOME/nbagent``, default ``~/.local/share/nbagent``), where older versions kept it, is still read
when the config directory has none, with a one-time warning. Every setting is in docs/configuration.md::

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

    [limits]                          # also [prices."model"], [sandbox], [policy], [cache], [otel], [mcp]
    max_steps = 20

    [mcp.servers.time]               # MCP servers whose tools runs may use (docs/mcp.md)
    command = "uvx"
    args = ["mcp-server-time"]

Environment: ``NBAGENT_PROFILE``, ``NBAGENT_MODEL``, ``NBAGENT_BASE_URL`` (else ``OPENAI_BASE_URL``),
``NBAGENT_API_KEY`` (else ``OPENAI_API_KEY``), ``NBAGENT_EMBEDDED=0`` (never fall back to the embedded
local model), and ``NBAGENT_<SECTION>__<FIELD>`` for any field of a section, e.g.
``NBAGENT_LIMITS__MAX_STEPS=5`` or ``NBAGENT_HTTP__READ_TIMEOUT=30``.

Every value is checked when it is loaded (types, ranges, choices, finite numbers; see
:mod:`nbagent.config_rules`): a bad one is an :class:`~nbagent.errors.InvalidSetting` naming the key, where it
came from and what is allowed. API keys show as ``[REDACTED]`` in ``repr()``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .config_paths import config_dir, find_config_file, user_dir
from .config_rules import (
    CheckedFields,
    SettingRule,
    choice,
    coerce,
    flag,
    masked_repr,
    number,
    rule_of,
    text,
    update_section,
    whole,
)
from .errors import ConfigError, EndpointNotConfigured

__all__ = [
    "Endpoint",
    "HTTPSettings",
    "LimitSettings",
    "Price",
    "Profile",
    "RetrySettings",
    "Settings",
    "config_dir",
    "user_dir",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(repr=False)
class HTTPSettings(CheckedFields):
    """Connection pool and timeouts (seconds) shared by every model endpoint."""

    _prefix: ClassVar[str] = "http."

    # "direct" (one aiohttp session, no SDK), "sdk" (the openai SDK over aiohttp; "aiohttp" is its older
    # name) or "httpx" (the SDK over httpx)
    transport: str = field(default="direct", metadata=choice("direct", "sdk", "aiohttp", "httpx"))
    max_connections: int = field(default=1000, metadata=whole(1))
    max_keepalive_connections: int = field(default=1000, metadata=whole(0))
    keepalive_expiry: float = field(default=30.0, metadata=number(0))
    connect_timeout: float = field(default=5.0, metadata=number(0, above=True))
    read_timeout: float = field(default=120.0, metadata=number(0, above=True))
    write_timeout: float = field(default=30.0, metadata=number(0, above=True))
    pool_timeout: float = field(default=60.0, metadata=number(0, above=True))
    # the whole request, retries not included
    request_timeout: float = field(default=600.0, metadata=number(0, above=True))
    ttft_timeout: float = field(default=120.0, metadata=number(0, above=True))  # streams: time to the first token
    idle_timeout: float = field(default=60.0, metadata=number(0, above=True))  # streams: longest gap between chunks
    # requests in flight per endpoint: "adaptive" or a fixed number
    concurrency: str = field(default="adaptive", metadata=text(numbers=True))
    concurrency_initial: int = field(default=32, metadata=whole(1))  # where an adaptive limit starts
    concurrency_max: int = field(default=1000, metadata=whole(1))  # an adaptive limit never exceeds this
    # latency over this x the baseline counts as queueing
    concurrency_tolerance: float = field(default=1.5, metadata=number(1, above=True))


@dataclass(repr=False)
class RetrySettings(CheckedFields):
    """Our retry policy (the SDK's own retries are off)."""

    _prefix: ClassVar[str] = "retry."

    max_attempts: int = field(default=5, metadata=whole(1))
    base_delay: float = field(default=0.5, metadata=number(0))
    max_delay: float = field(default=30.0, metadata=number(0))
    # a longer Retry-After gives up instead of sleeping
    max_retry_after: float = field(default=120.0, metadata=number(0))
    budget_ratio: float = field(default=0.2, metadata=number(0))  # each request earns this many retries...
    budget_min: float = field(default=10.0, metadata=number(0))  # ...on top of this reserve; a retry spends one


@dataclass(repr=False)
class LimitSettings(CheckedFields):
    """Per-run usage limits (None = unlimited) and loop behaviour."""

    _prefix: ClassVar[str] = "limits."

    max_steps: int = field(default=20, metadata=whole(1))
    max_requests: int | None = field(default=None, metadata=whole(1, optional=True))
    max_input_tokens: int | None = field(default=None, metadata=whole(1, optional=True))
    max_output_tokens: int | None = field(default=None, metadata=whole(1, optional=True))
    max_cost: float | None = field(default=None, metadata=number(0, optional=True))
    max_wall_time: float | None = field(default=None, metadata=number(0, above=True, optional=True))
    max_tool_output_chars: int = field(default=20_000, metadata=whole(1))
    tool_concurrency: int = field(default=8, metadata=whole(1))
    # seconds a tool call may take unless the tool sets its own timeout
    tool_timeout: float | None = field(default=300.0, metadata=number(0, above=True, optional=True))
    # sync tools running at once (each in a daemon thread; stuck ones are counted)
    tool_threads: int = field(default=16, metadata=whole(1))
    # the same tool call with the same arguments this many times ends the run (0: never)
    stuck_repeats: int = field(default=3, metadata=whole(0))
    # pre-flight: room kept for the answer when max_tokens is not set
    reserve_output_tokens: int = field(default=256, metadata=whole(0))


@dataclass(repr=False)
class Price(CheckedFields):
    """USD per million tokens."""

    _prefix: ClassVar[str] = "price."

    input: float = field(default=0.0, metadata=number(0))
    output: float = field(default=0.0, metadata=number(0))
    cached_input: float | None = field(default=None, metadata=number(0, optional=True))  # defaults to ``input``


@dataclass(repr=False)
class Profile(CheckedFields):
    """A named endpoint + model."""

    _prefix: ClassVar[str] = "profile."

    base_url: str | None = field(default=None, metadata=text(url=True))
    api_key: str | None = field(default=None, metadata=text(secret=True))
    model: str | None = field(default=None, metadata=text())
    context_window: int | None = field(default=None, metadata=whole(1, optional=True))


@dataclass(frozen=True, repr=False)
class Endpoint:
    """A resolved endpoint: where to send requests, with which key and model (``repr`` hides the key)."""

    base_url: str
    api_key: str = field(metadata=text(secret=True))
    model: str
    context_window: int | None = None

    def __repr__(self) -> str:
        return masked_repr(self)


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
_WINDOW = SettingRule(int, low=1)


@dataclass(repr=False)
class Settings(CheckedFields):
    """Everything configurable. Build with :meth:`Settings.load`; derive with :meth:`replace`."""

    profile: str | None = field(default=None, metadata=text())
    profiles: dict[str, Profile] = field(default_factory=dict)
    model: str | None = field(default=None, metadata=text())
    base_url: str | None = field(default=None, metadata=text(url=True))
    api_key: str | None = field(default=None, metadata=text(secret=True))
    context_window: int | None = field(default=None, metadata=whole(1, optional=True))
    stream: bool = field(default=False, metadata=flag())
    count_tokens: bool = field(default=True, metadata=flag())
    # with no endpoint configured, fall back to the embedded local model
    embedded: bool = field(default=True, metadata=flag())
    http: HTTPSettings = field(default_factory=HTTPSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    context_windows: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CONTEXT_WINDOWS))
    sandbox: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)  # [policy] table: see nbagent.policy.Policy.from_settings
    cache: dict[str, Any] = field(default_factory=dict)  # [cache] table: tiers, tier_options (nbagent.cache)
    otel: dict[str, Any] = field(default_factory=dict)  # [otel] table: see nbagent.exporters.otel_config
    mcp: dict[str, Any] = field(default_factory=dict)  # [mcp.servers.NAME] tables: see nbagent.mcp.MCPServer
    home: Path = field(default_factory=user_dir)
    config_path: Path | None = None

    # --- building -------------------------------------------------------------------------------

    @classmethod
    def load(
        cls, config_path: str | Path | None = None, *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Defaults, then the TOML file, then the environment, then ``overrides`` (per-call arguments).

        The file is ``config_path``, else ``$NBAGENT_CONFIG``, else ``config.toml`` in :func:`config_dir`, else
        (with a one-time warning) in :func:`user_dir`, where older versions kept it.
        """
        env = os.environ if env is None else env
        s = _defaults(cls)._copy()
        object.__setattr__(s, "home", user_dir(env))
        path = Path(config_path).expanduser() if config_path else find_config_file(env, s.home)
        if path is not None:
            s._apply_file(path)
        s._apply_env(env)
        return s.replace(**overrides) if overrides else s

    def _apply_file(self, path: Path) -> None:
        if sys.version_info >= (3, 11):  # imported here: most sessions have no config file
            import tomllib
        else:  # pragma: no cover
            import tomli as tomllib
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        self.config_path = path
        source = f"in {path}"
        for key, value in data.items():
            if key in _SECTIONS:
                update_section(getattr(self, key), value, key, source)
            elif key == "profiles":
                for name, prof in _table(value, "profiles", source).items():
                    p = Profile()
                    update_section(p, prof, f"profiles.{name}", source)
                    self.profiles[name] = p
            elif key == "prices":
                for model, price in _table(value, "prices", source).items():
                    pr = Price()
                    update_section(pr, price, f'prices."{model}"', source)
                    self.prices[model] = pr
            elif key == "context_windows":
                self.context_windows.update({k: coerce(v, _WINDOW, f'context_windows."{k}"', source)
                                             for k, v in _table(value, "context_windows", source).items()})
            elif key == "sandbox":
                self.sandbox.update(_table(value, "sandbox", source))
            elif key == "policy":
                self.policy.update(_table(value, "policy", source))
            elif key == "cache":
                self.cache.update(_table(value, "cache", source))
            elif key == "otel":
                self.otel.update(_table(value, "otel", source))
            elif key == "mcp":
                self.mcp.update(_table(value, "mcp", source))
            elif (rule := _top_rule(key)) is not None:
                object.__setattr__(self, key, coerce(value, rule, key, source))
            else:
                raise ConfigError(f"{path}: unknown setting {key!r}")

    def _apply_env(self, env: Mapping[str, str]) -> None:
        for var, attr in (("NBAGENT_PROFILE", "profile"), ("NBAGENT_MODEL", "model"), ("NBAGENT_BASE_URL", "base_url"),
                          ("OPENAI_BASE_URL", "base_url"), ("NBAGENT_API_KEY", "api_key"),
                          ("OPENAI_API_KEY", "api_key"), ("NBAGENT_STREAM", "stream"),
                          ("NBAGENT_EMBEDDED", "embedded")):
            if env.get(var) and not (var.startswith("OPENAI_") and env.get("NBAGENT_" + var[len("OPENAI_"):])):
                rule = _top_rule(attr)
                assert rule is not None
                object.__setattr__(self, attr, coerce(env[var], rule, attr, f"from environment variable {var}"))
        for var, value in env.items():
            if not var.startswith("NBAGENT_") or "__" not in var:
                continue
            section, _, fname = var[len("NBAGENT_"):].lower().partition("__")
            if section == "sandbox":
                self.sandbox[fname] = value
            elif section == "otel":
                self.otel[fname] = value
            elif section in _SECTIONS:
                update_section(getattr(self, section), {fname: value}, section, f"from environment variable {var}")
            else:
                raise ConfigError(f"unknown settings section {section!r} in environment variable {var} "
                                  f"(sections: {', '.join([*_SECTIONS, 'sandbox'])})")

    def replace(self, **overrides: Any) -> Settings:
        """A copy with top-level fields or ``section__field`` keys replaced (None values are ignored)."""
        new = self._copy()
        for key, value in overrides.items():
            if value is None:
                continue
            source = f"from argument {key}"
            if "__" in key:
                section, _, fname = key.partition("__")
                if section not in _SECTIONS:
                    raise ConfigError(f"unknown settings section {section!r} in argument {key} "
                                      f"(sections: {', '.join(_SECTIONS)})")
                update_section(getattr(new, section), {fname: value}, section, source)
            elif key in _SECTIONS and isinstance(value, Mapping):
                update_section(getattr(new, key), value, key, source)
            elif (rule := _top_rule(key)) is not None:
                object.__setattr__(new, key, coerce(value, rule, key, source))
            elif hasattr(new, key):
                setattr(new, key, value)
            else:
                raise ConfigError(f"unknown setting {key!r}")
        return new

    def _copy(self) -> Settings:
        """A copy that shares nothing mutable; its values, already checked, are not checked again."""
        new = _shallow_copy(self)
        for name in _SECTIONS:
            object.__setattr__(new, name, _shallow_copy(getattr(self, name)))
        for name in ("profiles", "prices", "context_windows", "sandbox", "policy", "cache", "otel", "mcp"):
            object.__setattr__(new, name, dict(getattr(self, name)))
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
        """The price of ``model``: its own entry, else the longest entry it extends (``gpt-4o`` for
        ``gpt-4o-2024-08-06``); None when it has none."""
        prices = self.prices
        price = prices.get(model)
        if price is not None:
            return price
        # which entry a model name extends is remembered per prices table (a walk of every entry per call)
        memo = _PRICE_PREFIX.get(model)
        if memo is not None and memo[0] is prices and memo[1] == len(prices):
            best = memo[2]
        else:
            best = max((k for k in prices if model.startswith(k + "-")), key=len, default=None)
            if len(_PRICE_PREFIX) >= 1024:
                _PRICE_PREFIX.clear()
            _PRICE_PREFIX[model] = (prices, len(prices), best)
        return prices.get(best) if best else None


_PRICE_PREFIX: dict[str, tuple[dict[str, Price], int, str | None]] = {}


def _table(value: Any, where: str, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} ({source}): must be a table, got {type(value).__name__}")
    return value


def _shallow_copy(obj: Any) -> Any:
    """A new instance with the same field values, set without going through the checks again."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


_default_settings: dict[type, Settings] = {}


def _defaults(cls: type[Settings]) -> Settings:
    """The built-in defaults (built once per class and copied by :meth:`Settings.load`)."""
    if cls not in _default_settings:
        _default_settings[cls] = cls()
    return _default_settings[cls]


def _top_rule(key: str) -> SettingRule | None:
    """The rule of a top-level field of :class:`Settings` (None for tables and unknown names)."""
    f = Settings.__dataclass_fields__.get(key)
    return None if f is None else rule_of(f)
