"""Credentials out of every error text the project stores or prints.

A provider error can echo the request that failed, API key included (an OpenAI-compatible server
answering 401 with the ``Authorization`` header). Such text reaches the trace, the checkpoint, the
evaluation database and the terminal, so each of those passes it through :func:`redact` first.

Two kinds of secret are replaced by ``[REDACTED]``:

- the value of every environment variable whose name marks it as a credential (``*_API_KEY``,
  ``*_KEY``, ``*_TOKEN``, ``*_SECRET``, ``*_PASSWORD``: ``OPENAI_API_KEY``, ``GOOGLE_API_KEY`` and
  ``GEMINI_API_KEY``, which the expert providers read, among them), wherever it appears;
- credential-shaped strings, whoever they belong to: provider keys (``sk-...``, ``AIza...``,
  ``hf_...``, ``ghp_...``, ``xox?-...``, ``AKIA...``), JSON web tokens, the value after
  ``Bearer``, the value of a header, JSON or query field named like a secret (``Authorization``,
  ``api_key``, ``x-goog-api-key``, ``password``, ``key=``, ``token=``, ...), and the password in
  ``scheme://user:password@host``. After a bare ``key:``, ``token:`` or ``secret:`` (prose, not a
  quoted field), a lowercase word is kept: "needs an API key: set OPENAI_API_KEY" is advice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "RedactedError", "redact", "redact_exception", "redact_strings"]

REDACTED = "[REDACTED]"

_SECRET_VARIABLE = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_MIN_SECRET_CHARS = 8
"""Shorter variable values are not searched for: "true" or "1" would blank out ordinary text."""

_VALUE = r"(?!\[REDACTED\])[^\s\"',;&}\]]+"
_PATTERNS = [
    # Provider keys, by their documented prefixes; no left boundary, so glued text cannot hide one.
    re.compile(r"sk-[A-Za-z0-9_\-]{16,}"),
    re.compile(r"AIza[0-9A-Za-z_\-]{30,}"),
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"xox[abposr]-[A-Za-z0-9\-]{10,}"),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
    # A bearer credential, and a header, JSON or query field named like a secret.
    re.compile(r"(?i)(\bbearer\s+)" + _VALUE),
    re.compile(
        r"(?i)((?:authorization|api[_-]?key|access[_-]?token|refresh[_-]?token|client[_-]?secret|"
        r"password|passwd)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?+)" + _VALUE
    ),
    # "key", "token" and "secret" alone: only as whole words ("monkey: 3" is not a secret), and
    # after a bare colon (prose, YAML) not when a lowercase word follows: "an API key: set
    # OPENAI_API_KEY" says what to do; "key=...", "'key': '...'" and "key: A1b2..." are secrets.
    re.compile(
        r"(?i)((?<![A-Za-z])(?:key|token|secret)"
        r"(?:[\"']?\s*=\s*[\"']?|[\"']\s*:\s*[\"']?|:\s*(?!(?-i:[a-z]+)[.:!?)]*(?:[\s\"',;&}\]]|$)))"
        r"(?:(?:bearer|basic)\s+)?+)" + _VALUE
    ),
    # scheme://user:password@host
    re.compile(r"(://[^\s/:@]+:)(?!\[REDACTED\])[^\s/@]+(?=@)"),
]


def _secret_values(environ: Mapping[str, str]) -> list[str]:
    values = {
        value.strip()
        for name, value in environ.items()
        if _SECRET_VARIABLE.search(name) and len(value.strip()) >= _MIN_SECRET_CHARS
    }
    return sorted(values, key=len, reverse=True)  # longest first: one value may contain another


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` with every credential (see the module docstring) replaced by ``[REDACTED]``.

    ``environ`` (default: ``os.environ``) holds the variables whose values are secrets.
    """
    for value in _secret_values(os.environ if environ is None else environ):
        text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + REDACTED, text)
    return text


def redact_strings(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with :func:`redact` applied to every
    string in it, keys included (tuples stay tuples); for records such as a trace, stored whole."""
    if isinstance(value, str):
        return redact(value, environ)
    if isinstance(value, Mapping):
        return {redact_strings(k, environ): redact_strings(v, environ) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(redact_strings(item, environ) for item in value)
    if isinstance(value, list):
        return [redact_strings(item, environ) for item in value]
    return value


class RedactedError(Exception):
    """Stands in for an exception whose text held a credential that could not be redacted in its
    own object (a custom ``__str__``, an ``OSError``'s file name): ``"TypeName: redacted text"``."""


def redact_exception(error: BaseException, environ: Mapping[str, str] | None = None) -> BaseException:
    """``error`` with every credential out of what is kept of it: its ``args`` (hence its ``str`` and
    ``repr``, which a LangGraph checkpointer stores), the JSON-like values of its attributes, its
    notes, and the exceptions it chains (``__cause__``, ``__context__``), all redacted in place, so
    the caller still catches its own exception, of its own type, with its traceback.

    When its ``str`` or ``repr`` still says a credential after that (its text does not come from its
    ``args``), a :class:`RedactedError` with the redacted text is returned in its place, chained to
    the redacted causes and carrying the same traceback.
    """
    return _redact_exception(error, environ, {})


def _redact_exception(
    error: BaseException, environ: Mapping[str, str] | None, seen: dict[int, BaseException]
) -> BaseException:
    if id(error) in seen:  # a chain can loop back (an exception raised while handling itself)
        return seen[id(error)]
    seen[id(error)] = error
    error.args = redact_strings(error.args, environ)
    for name, value in list(vars(error).items()):  # __notes__ among them
        if type(value) in (str, dict, list, tuple):
            setattr(error, name, redact_strings(value, environ))
    if error.__cause__ is not None:
        error.__cause__ = _redact_exception(error.__cause__, environ, seen)
    if error.__context__ is not None:
        error.__context__ = _redact_exception(error.__context__, environ, seen)
    text, shown = _text(error, str), _text(error, repr)
    if all(t is not None and redact(t, environ) == t for t in (text, shown)):
        return error
    stand_in = RedactedError(f"{type(error).__qualname__}: {redact(text or '(unprintable)', environ)}")
    stand_in.__cause__, stand_in.__context__ = error.__cause__, error.__context__
    stand_in.__suppress_context__ = error.__suppress_context__
    seen[id(error)] = stand_in.with_traceback(error.__traceback__)
    return stand_in


def _text(error: BaseException, render: Any) -> str | None:
    try:
        return str(render(error))
    except Exception:  # an exception's own __str__ may fail; nothing of it is then trusted
        return None
