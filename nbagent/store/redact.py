"""Keep API keys and ``Authorization`` headers out of the run store, the logs and notebook output.

Three layers, cheapest first:

* exact secrets: the values of ``OPENAI_API_KEY`` / ``NBAGENT_API_KEY`` (read when a :class:`Redactor` is
  built) and anything passed to :func:`add_secret` (the API key of a configured endpoint, say);
* key/value shapes: ``Authorization: Bearer ...``, ``"api_key": "..."``, ``x-api-key=...``, ``password=...``;
* token shapes: ``sk-...`` (OpenAI and compatible), ``sk-ant-...``, ``hf_...``, ``ghp_...``, ``AKIA...``.

Each match is replaced by ``[REDACTED]``. :func:`redact` works on strings, :func:`redact_obj` on JSON-like
values (dict keys that name a secret have their whole value replaced), and :func:`install_log_redaction`
makes every log record of the loggers the client's stack uses (``nbagent``, ``openai``, ``httpx``/``httpx2``,
``httpcore``/``httpcore2``, ``aiohttp``, ``asyncio`` and the root logger's own) pass through :func:`redact`
before a handler writes it, with a :class:`RedactingFilter` on those loggers and on the handlers.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "REDACTED",
    "RedactingFilter",
    "Redactor",
    "add_secret",
    "default_redactor",
    "install_log_redaction",
    "redact",
    "redact_obj",
    "uninstall_log_redaction",
]

REDACTED = "[REDACTED]"

_SECRET_NAMES = r"(?:authorization|proxy-authorization|api[_-]?key|x-api-key|access[_-]?token|auth[_-]?token|" \
                r"secret(?:[_-]?key)?|client[_-]?secret|password|passwd)"

# name = value / name: value / "name": "value"; the value may be "Bearer xxx" (two words) or one token
_Q = r"(?:\\?[\"'])?"  # an optional quote, JSON-escaped or not
_KEY_VALUE = re.compile(
    r"(?i)(?P<name>" + _Q + _SECRET_NAMES + _Q + r"\s*[:=]\s*" + _Q + r")"
    r"(?P<value>(?:(?:bearer|basic|token)\s+)?[^\s\"'\\,;}\]]+)"
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}")
_TOKENS = re.compile(
    r"\b(?:sk-(?:ant-|proj-|svcacct-)?[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|"
    r"github_pat_[A-Za-z0-9_]{20,}|xox[abposr]-[A-Za-z0-9\-]{10,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_\-]{30,})"
)
_SECRET_KEY = re.compile(r"(?i)^" + _SECRET_NAMES + r"$")
# a cheap pre-check on the lower-cased text: what does not match this cannot match a pattern above
# (literal alternatives without re.IGNORECASE keep the scan several times faster)
_HINT = re.compile(r"sk-|hf_|gh[pousr]_|github_pat|xox[abposr]-|akia|aiza|bearer|authori|api[_-]?key|"
                   r"access[_-]?token|auth[_-]?token|secret|passw")
_MIN_SECRET = 6  # shorter exact secrets would redact ordinary words


class Redactor:
    """Replaces secrets in text. Thread-safe; :meth:`add_secret` may be called at any time."""

    def __init__(self, secrets: Iterable[str] = (), *, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()
        for value in (*secrets, env.get("OPENAI_API_KEY", ""), env.get("NBAGENT_API_KEY", "")):
            self.add_secret(value)

    def add_secret(self, value: str | None) -> None:
        """Redact this exact value from now on (values shorter than 6 characters are ignored)."""
        if not value or len(value) < _MIN_SECRET or value in self._secrets:
            return
        with self._lock:
            # longest first, so a secret that contains another is replaced whole
            self._secrets = tuple(sorted({*self._secrets, value}, key=len, reverse=True))

    @property
    def secrets(self) -> tuple[str, ...]:
        """The exact values redacted so far (a new tuple whenever one is added)."""
        return self._secrets

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``[REDACTED]``."""
        if not text:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if _HINT.search(text.lower()) is None:
            return text
        text = _KEY_VALUE.sub(_keep_name, text)
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        return _TOKENS.sub(REDACTED, text)

    def might_contain(self, text: str) -> bool:
        """False when ``text`` surely holds no secret (a quick test before a full :meth:`redact_obj`)."""
        return _HINT.search(text.lower()) is not None or any(s in text for s in self._secrets)

    def redact_obj(self, value: Any) -> Any:
        """A copy of a JSON-like value with secrets redacted; values under secret-named keys are replaced."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, Mapping):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if isinstance(k, str) and _SECRET_KEY.match(k) and v not in (None, "", 0, False):
                    out[k] = REDACTED
                else:
                    out[k] = self.redact_obj(v)
            return out
        if isinstance(value, (list, tuple)):
            return [self.redact_obj(v) for v in value]
        return value


def _keep_name(m: re.Match[str]) -> str:
    if m.group("value").startswith("[REDACTED"):
        return m.group(0)
    return m.group("name") + REDACTED


_default: Redactor | None = None


def default_redactor() -> Redactor:
    """The process-wide redactor used by the run store, the logs and the reports."""
    global _default
    if _default is None:
        _default = Redactor()
    return _default


def add_secret(value: str | None) -> None:
    """Never let this exact value reach the store, the logs or a report."""
    default_redactor().add_secret(value)


def redact(text: str) -> str:
    """``text`` with API keys, tokens and authorization values replaced by ``[REDACTED]``."""
    return default_redactor().redact(text)


def redact_obj(value: Any) -> Any:
    """A copy of a JSON-like value with secrets redacted (see :meth:`Redactor.redact_obj`)."""
    return default_redactor().redact_obj(value)


# --- logs -----------------------------------------------------------------------------------------

# the loggers the client's stack really logs on (the SDK's HTTP layer is httpx2/httpcore2; a key in a base
# URL's query string appears in httpx2's INFO "HTTP Request" line), the event loop's, and the root logger's own
_LOGGERS = ("nbagent", "openai", "httpx", "httpx2", "httpcore", "httpcore2", "aiohttp", "asyncio", "root")
_REDACTED_MARK = "_nbagent_redacted"


class RedactingFilter(logging.Filter):
    """A log filter that redacts the message (arguments merged in) and traceback of the records of the
    loggers named in ``prefixes`` and their children, in place, before any handler formats them; it never
    drops a record. Records of other loggers pass untouched.
    """

    def __init__(self, prefixes: Iterable[str] = _LOGGERS) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def covers(self, name: str) -> bool:
        return name in self.prefixes or name.partition(".")[0] in self.prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, _REDACTED_MARK, False) or not self.covers(record.name):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is the handler's problem, not ours
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        setattr(record, _REDACTED_MARK, True)
        return True


_installed: tuple[RedactingFilter, list[logging.Filterer]] | None = None
_install_lock = threading.Lock()


def install_log_redaction(prefixes: Iterable[str] = _LOGGERS) -> None:
    """Redact every log record of these loggers (and their children) before it is written. Idempotent.

    A :class:`RedactingFilter` goes on the named loggers and their children that exist now (so a record is
    redacted where it is made, whatever handler gets it later), on their handlers, on the root logger's
    handlers and on ``logging.lastResort`` (so records of children created later are redacted on their way
    out). The log record factory and other loggers are left alone.
    """
    global _installed
    with _install_lock:
        if _installed is not None:
            return
        flt = RedactingFilter(prefixes)
        targets: list[logging.Filterer] = []
        manager = logging.Logger.manager
        names = [n for n in list(manager.loggerDict) if flt.covers(n)]
        loggers = [logging.getLogger(n) for n in names if n != "root"]
        for logger in [logging.getLogger(), *loggers]:
            targets.append(logger)
            targets.extend(logger.handlers)
        if logging.lastResort is not None:
            targets.append(logging.lastResort)
        unique = list({id(t): t for t in targets}.values())
        for target in unique:
            target.addFilter(flt)
        _installed = (flt, unique)


def uninstall_log_redaction() -> None:
    """Undo :func:`install_log_redaction`."""
    global _installed
    with _install_lock:
        if _installed is not None:
            flt, targets = _installed
            for target in targets:
                target.removeFilter(flt)
            _installed = None
