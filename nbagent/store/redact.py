"""Keep API keys and ``Authorization`` headers out of the run store, the logs and notebook output.

Three layers, cheapest first:

* exact secrets: the values of ``OPENAI_API_KEY`` / ``NBAGENT_API_KEY`` (read when a :class:`Redactor` is
  built) and anything passed to :func:`add_secret` (the API key of a configured endpoint, say);
* key/value shapes: ``Authorization: Bearer ...``, ``"api_key": "..."``, ``x-api-key=...``, ``password=...``;
* token shapes: ``sk-...`` (OpenAI and compatible), ``sk-ant-...``, ``hf_...``, ``ghp_...``, ``AKIA...``.

Each match is replaced by ``[REDACTED]``. :func:`redact` works on strings, :func:`redact_obj` on JSON-like
values (dict keys that name a secret have their whole value replaced), and :func:`install_log_redaction`
makes every log record of the ``nbagent``, ``openai``, ``httpx`` and ``aiohttp`` loggers pass through
:func:`redact` before any handler sees it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "REDACTED",
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

_LOGGERS = ("nbagent", "openai", "httpx", "httpcore", "aiohttp")
_installed: tuple[Callable[..., logging.LogRecord], Callable[..., logging.LogRecord]] | None = None
_install_lock = threading.Lock()


def install_log_redaction(prefixes: Iterable[str] = _LOGGERS) -> None:
    """Redact the message (arguments merged in) and traceback of every log record from these loggers and
    their children. Works through the log record factory, so it covers loggers created later too. Idempotent.
    """
    global _installed
    with _install_lock:
        if _installed is not None:
            return
        names = tuple(prefixes)
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            name = record.name
            if name.startswith(names) and (name in names or name.partition(".")[0] in names):
                try:
                    message = record.getMessage()
                except Exception:  # noqa: BLE001 - a broken format string is the handler's problem, not ours
                    return record
                record.msg = redact(message)
                record.args = None
                if record.exc_info and not record.exc_text:
                    text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
                    record.exc_text = redact(text)
            return record

        logging.setLogRecordFactory(factory)
        _installed = (factory, previous)


def uninstall_log_redaction() -> None:
    """Undo :func:`install_log_redaction` (when no other factory was installed on top of it since)."""
    global _installed
    with _install_lock:
        if _installed is not None and logging.getLogRecordFactory() is _installed[0]:
            logging.setLogRecordFactory(_installed[1])
            _installed = None
