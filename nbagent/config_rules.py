"""What each setting may be, and the one error that says so.

Every field of a settings dataclass (:mod:`nbagent.config`) carries a :class:`SettingRule` in its metadata,
made by :func:`whole`, :func:`number`, :func:`choice`, :func:`text` or :func:`flag`. :func:`coerce` turns a
value from a TOML file, an environment variable or an argument into the field's type, or raises
:class:`~nbagent.errors.InvalidSetting` naming the key, where the value came from and what is allowed::

    limits.max_steps = -1 (from environment variable NBAGENT_LIMITS__MAX_STEPS): must be a whole number >= 1

Numbers are finite: ``nan`` and ``inf`` are refused everywhere. Secret fields (API keys) are never echoed in
an error and show as ``[REDACTED]`` in ``repr()`` (:func:`masked_repr`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import ConfigError, InvalidSetting

__all__ = ["REDACTED", "CheckedFields", "SettingRule", "choice", "coerce", "flag", "masked_repr", "number",
           "rule_of", "text", "update_section", "whole"]

REDACTED = "[REDACTED]"  # the run store's marker too (nbagent.store.redact.REDACTED)
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NONE = frozenset({"", "none", "null"})


@dataclass(frozen=True)
class SettingRule:
    """The type of one setting and what it may be. ``low`` is a bound (``> low`` when ``above``, else ``>=``)."""

    kind: type
    optional: bool = False
    low: float | None = None
    above: bool = False
    choices: tuple[str, ...] = ()
    secret: bool = False
    url: bool = False
    numbers: bool = False  # a text setting that also takes a whole number (``[http] concurrency = 32``)

    def allowed(self) -> str:
        """What the rule accepts, in words: ``a whole number >= 1``, ``one of 'aiohttp', 'httpx'``..."""
        if self.choices:
            out = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind is bool:
            out = "true or false"
        elif self.kind in (int, float):
            out = "a whole number" if self.kind is int else "a finite number"
            if self.low is not None:
                out += f" {'>' if self.above else '>='} {self.low:g}"
        elif self.url:
            out = "a URL starting with http:// or https://"
        else:
            out = "text"
        return out + (", or none" if self.optional and self.kind is not str else "")


def _meta(rule: SettingRule) -> dict[str, Any]:
    return {"rule": rule}


def whole(low: int | None = None, *, optional: bool = False) -> dict[str, Any]:
    """Field metadata: an ``int`` of at least ``low``."""
    return _meta(SettingRule(int, optional=optional, low=low))


def number(low: float | None = None, *, above: bool = False, optional: bool = False) -> dict[str, Any]:
    """Field metadata: a finite ``float`` of at least ``low`` (more than ``low`` with ``above=True``)."""
    return _meta(SettingRule(float, optional=optional, low=low, above=above))


def choice(*options: str) -> dict[str, Any]:
    """Field metadata: one of ``options`` (matched without regard to case)."""
    return _meta(SettingRule(str, choices=options))


def text(*, secret: bool = False, url: bool = False, numbers: bool = False) -> dict[str, Any]:
    """Field metadata: an optional string; ``secret`` ones are masked, ``url`` ones must be http(s)."""
    return _meta(SettingRule(str, optional=True, secret=secret, url=url, numbers=numbers))


def flag() -> dict[str, Any]:
    """Field metadata: a boolean (``1/0``, ``true/false``, ``yes/no``, ``on/off`` from text)."""
    return _meta(SettingRule(bool))


def coerce(value: Any, rule: SettingRule, key: str, source: str) -> Any:
    """``value`` converted to the rule's type and checked, or :class:`InvalidSetting` naming ``key`` and
    ``source`` (``from environment variable NBAGENT_X``, ``in /path/config.toml``, ``from argument x``)."""
    if value is None or (rule.optional and rule.kind is not str and isinstance(value, str)
                         and value.strip().lower() in _NONE):
        if rule.optional:
            return None
        raise _invalid(value, rule, key, source)
    kind = rule.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
        raise _invalid(value, rule, key, source)
    if kind is str:
        if rule.numbers and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # e.g. [http] concurrency = 32 (a number or "adaptive")
        if not isinstance(value, str):
            raise _invalid(value, rule, key, source)
        if rule.choices:
            word = value.strip().lower()
            if word not in rule.choices:
                raise _invalid(value, rule, key, source)
            return word
        if rule.url and not value.startswith(("http://", "https://")):
            raise _invalid(value, rule, key, source)
        return value
    num = _number(value)
    if isinstance(num, float) and kind is int and num.is_integer():
        num = int(num)
    elif isinstance(num, int) and kind is float:
        num = float(num) if abs(num) < 2**1023 else None  # beyond that: infinite as a float
    if num is None or not isinstance(num, kind) or (isinstance(num, float) and not math.isfinite(num)):
        raise _invalid(value, rule, key, source)
    if rule.low is not None and (num <= rule.low if rule.above else num < rule.low):
        raise _invalid(value, rule, key, source)
    return num


def _number(value: Any) -> int | float | None:
    """An int or float from a number or its text (ints stay exact); None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value.strip())
            except ValueError:
                pass
    return None


def _invalid(value: Any, rule: SettingRule, key: str, source: str) -> InvalidSetting:
    shown = REDACTED if rule.secret else repr(value)
    if len(shown) > 60:
        shown = shown[:50] + "..." + shown[-5:]
    allowed = rule.allowed()
    return InvalidSetting(f"{key} = {shown} ({source}): must be {allowed}", key=key, source=source, allowed=allowed)


def rule_of(field: dataclasses.Field[Any]) -> SettingRule | None:
    """The rule in a dataclass field's metadata, if it has one."""
    return field.metadata.get("rule")


_CHECKS: dict[type, dict[str, tuple[SettingRule, Any]]] = {}


def _checks(cls: type) -> dict[str, tuple[SettingRule, Any]]:
    """The rule and default of each ruled field of a settings dataclass (computed once per class)."""
    checks = _CHECKS.get(cls)
    if checks is None:
        checks = _CHECKS[cls] = {f.name: (rule, f.default) for f in dataclasses.fields(cls)
                                 if (rule := rule_of(f)) is not None}
    return checks


class CheckedFields:
    """Base of the settings dataclasses: every assignment is checked against the field's rule, so
    ``agent.limits.max_steps = 0`` fails at once instead of inside a run; ``repr()`` is :func:`masked_repr`."""

    _prefix: ClassVar[str] = ""  # the section in messages: "limits." -> "limits.max_steps"

    def __setattr__(self, name: str, value: Any) -> None:
        check = _checks(type(self)).get(name)
        if check is not None and value is not check[1]:  # a field's own default needs no check
            value = coerce(value, check[0], self._prefix + name, "set in code")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return masked_repr(self)


def update_section(obj: Any, values: Mapping[str, Any], prefix: str, source: str) -> None:
    """Set fields of the settings dataclass ``obj`` from ``values``, each coerced by its rule.

    ``prefix`` names the section in messages (``limits``, ``profiles.local``); unknown names are refused
    with the list of known ones.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix} ({source}): must be a table, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in values.items():
        f = fields.get(name)
        if f is None:
            raise ConfigError(f"{prefix} ({source}): unknown setting {name!r} (known: {', '.join(fields)})")
        rule = rule_of(f)
        key = f"{prefix}.{name}"
        object.__setattr__(obj, name, value if rule is None else coerce(value, rule, key, source))


def masked_repr(obj: Any) -> str:
    """``Type(field=value, ...)`` like a dataclass's own repr, with secret fields shown as ``'[REDACTED]'``;
    text and tables go through :mod:`nbagent.store.redact` too, so ``Authorization`` or ``api_key`` entries of
    a table, bearer tokens, ``sk-...`` keys and the value of ``OPENAI_API_KEY`` never show either."""
    from .store.redact import redact_obj

    parts = []
    for f in dataclasses.fields(obj):
        if not f.repr:
            continue
        value = getattr(obj, f.name)
        rule = rule_of(f)
        if rule is not None and rule.secret and value is not None:
            value = REDACTED
        elif isinstance(value, (str, Mapping)):
            value = redact_obj(value)
        parts.append(f"{f.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"
