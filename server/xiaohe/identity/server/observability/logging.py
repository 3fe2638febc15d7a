"""Structured JSON logs with personal data, codes and secrets redacted (SECURITY.md C4, I1).

`configure_logging` installs, on the root logger, handlers that write one JSON
object per line: `ts` (ISO 8601 UTC, microseconds), `level`, `logger`, `msg`,
`request_id` and `client_id` (from the request context), `worker` (the worker's
index, 0..N-1, stable across restarts; absent outside worker processes), `extra`
(the fields passed with `extra=`, when any) and `exc` (the traceback, when any).

Access log. Each RPC but health and reflection ends with one INFO line on
`xiaohe.identity.access` (see `transport/interceptors.py`): method, status name,
duration, client id and request id, never a request field. `access_log=False`
turns it off. grpc's own loggers (`grpc.*`) are held at WARNING unless the operator
sets `GRPC_VERBOSITY` (then they follow the root level), so `LOG_LEVEL=DEBUG`
shows our debug lines, not grpc's.

Every record passes through `RedactionFilter` on every handler before it is
formatted. It rewrites the message *after* `%`-formatting (so arguments are
covered), every extra field (recursively, numbers included, since a phone number
often arrives as an int), the exception text and the stack text. Rules, in order:

- JWTs (`eyJ…`), verification tickets (`vt1.…`), `Bearer …` values and the values
  of `password=` / `secret=` / `token=` style pairs (also as `"password": "…"`)
  become `[redacted]`.
- Long base64url runs (32+ characters with at least one digit and one letter:
  refresh tokens, keys, HMACs) become `[redacted]`. UUIDs and 32-hex strings
  (request ids, 16-byte pseudonym tags) are left alone, so they stay usable.
- 18-character resident ID numbers and unified social credit codes are masked
  as `110*************2X` (`mask_id_number`). A USCC is public, but a log line
  cannot tell the two shapes apart reliably, so both are masked.
- Email addresses become `z***@example.com` (`mask_email`).
- Mainland mobile numbers, with or without `+86`/`86` and with spaces or
  hyphens between groups, become `138****1234` (`mask_phone`).
- Six-digit numbers within a few characters of `code`, `otp`, `验证码`, `校验码`
  or `动态码` (either side) become `******`.
- Extra fields are also judged by name: values under secret-like names
  (`password`, `client_secret`, `refresh_token`, `authorization`, `ticket`, …)
  are dropped whole; bare 4-8 digit values under code-like names are starred.

The rules are a safety net, not a licence: code should log pseudonymous ids and
masked values in the first place. False positives (over-redaction) are accepted.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from xiaohe.identity.server import context
from xiaohe.identity.server.shared.identifiers import mask_email, mask_id_number, mask_phone

REDACTED = "[redacted]"

ACCESS_LOGGER = "xiaohe.identity.access"
GRPC_LOGGER = "grpc"
GRPC_VERBOSITY_ENV = "GRPC_VERBOSITY"

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRS = frozenset(
    {
        "name",
        "msg",
        "args",
        "levelname",
        "levelno",
        "pathname",
        "filename",
        "module",
        "exc_info",
        "exc_text",
        "stack_info",
        "lineno",
        "funcName",
        "created",
        "msecs",
        "relativeCreated",
        "thread",
        "threadName",
        "processName",
        "process",
        "taskName",
        "message",
        "asctime",
    }
)
_REDACTED_MARK = "_xh_redacted"
_HANDLER_MARK = "_xh_handler"

_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){1,2}")
_TICKET = re.compile(r"\bvt1\.[A-Za-z0-9_.~+/=-]*")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9_.~+/=-]+")
_SECRET_PAIR = re.compile(
    r"""(?ix)
    (["']?)                                     # optional quote around the key
    (\w*(?:password|passwd|pwd|secret|token|api[_-]?key|authorization)\w*)
    \1
    (\s*[=:]\s*)
    (?: (")[^"]*" | (')[^']*' | [^\s,;&)}\]]+ )   # the value; its quotes are kept
    """
)
_UUID = re.compile(r"(?i)[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")
_LONG_TOKEN = re.compile(
    r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}={0,2}"
    r"(?![A-Za-z0-9_-])"
)
_ID18 = re.compile(
    r"(?<![A-Za-z0-9])[0-9A-HJ-NP-RTUW-Y]{2}\d{6}[0-9A-HJ-NP-RTUW-Yx]{10}(?![A-Za-z0-9])"
)
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
_PHONE = re.compile(r"(?<![\d+])(?:\+?86[\s-]?)?(1[3-9]\d)[\s-]?(\d{4})[\s-]?(\d{4})(?!\d)")
_CODE_WORD = r"(?:code|otp|验证码|校验码|动态码)"
_CODE_BEFORE = re.compile(rf"(?i)({_CODE_WORD}[^0-9\n]{{0,24}}?)(?<!\d)\d{{6}}(?!\d)")
_CODE_AFTER = re.compile(rf"(?i)(?<!\d)\d{{6}}(?!\d)([^0-9\n]{{0,24}}?{_CODE_WORD})")
_SECRET_KEY = re.compile(
    r"(?i)password|passwd|pwd|secret|token|api[_-]?key|authorization|cookie|ticket"
)
_CODE_KEY = re.compile(r"(?i)code|otp|验证码|校验码|动态码")
_BARE_CODE = re.compile(r"\d{4,8}")


def _long_token(match: re.Match[str]) -> str:
    return match.group(0) if _UUID.fullmatch(match.group(0)) else REDACTED


def _secret_pair(match: re.Match[str]) -> str:
    key_quote, key, sep = match.group(1, 2, 3)
    value_quote = match.group(4) or match.group(5) or ""
    return f"{key_quote}{key}{key_quote}{sep}{value_quote}{REDACTED}{value_quote}"


def _phone(match: re.Match[str]) -> str:
    return mask_phone("".join(match.group(1, 2, 3)))


def redact(text: str) -> str:
    """The text with tokens, secrets, codes and personal data masked (rules in the module doc)."""
    text = _JWT.sub(REDACTED, text)
    text = _TICKET.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _SECRET_PAIR.sub(_secret_pair, text)
    text = _LONG_TOKEN.sub(_long_token, text)
    text = _ID18.sub(lambda m: mask_id_number(m.group(0)), text)
    text = _EMAIL.sub(lambda m: mask_email(m.group(0)), text)
    text = _PHONE.sub(_phone, text)
    text = _CODE_BEFORE.sub(lambda m: m.group(1) + "******", text)
    return _CODE_AFTER.sub(lambda m: "******" + m.group(1), text)


def redact_value(value: Any, key: str = "") -> Any:
    """A JSON-ready copy of an extra field's value with every string and number redacted.

    The field name counts too: values under secret-like names (`password`,
    `client_secret`, `refresh_token`, …) are dropped whole, and 4-8 digit values
    under code-like names (`code`, `otp`, …) are starred, since a bare `482913` gives
    the text rules nothing to go on.
    """
    if value is None or isinstance(value, bool):
        return value
    if key and _SECRET_KEY.search(key):
        return REDACTED
    if key and _CODE_KEY.search(key) and _BARE_CODE.fullmatch(str(value).strip()):
        return "******"
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float):
        text = str(value)
        cleaned = redact(text)
        return value if cleaned == text else cleaned
    if isinstance(value, dict):
        return {redact(str(k)): redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(v, key) for v in value]
    return redact(str(value))


def _record_message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string must not lose the (redacted) content
        return f"{record.msg!s} {record.args!r}"


class RedactionFilter(logging.Filter):
    """Rewrites each record in place so that no handler sees unredacted text; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact message, arguments, extra fields, exception and stack text."""
        if getattr(record, _REDACTED_MARK, False):
            return True
        record.msg = redact(_record_message(record))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key in _extra_keys(record):
            setattr(record, key, redact_value(getattr(record, key), key))
        setattr(record, _REDACTED_MARK, True)
        return True


def _extra_keys(record: logging.LogRecord) -> list[str]:
    return [
        k
        for k in record.__dict__
        if k not in _STANDARD_ATTRS and k not in (_REDACTED_MARK,) and not k.startswith("_")
    ]


class JsonFormatter(logging.Formatter):
    """One JSON object per record; expects `RedactionFilter` to have run (it re-checks anyway)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        if not getattr(record, _REDACTED_MARK, False):
            RedactionFilter().filter(record)
        ctx = context.current()
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": redact(ctx.request_id),
            "client_id": redact(ctx.client_id),
        }
        if self._worker is not None:
            entry["worker"] = self._worker
        extra = {k: getattr(record, k) for k in _extra_keys(record)}
        if extra:
            entry["extra"] = extra
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def _install(handler: logging.Handler, level: int, worker: int | None) -> logging.Handler:
    handler.setLevel(level)
    handler.addFilter(RedactionFilter())
    handler.setFormatter(JsonFormatter(worker))
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_logging(
    level: str,
    stream: TextIO | None = None,
    file: str = "",
    *,
    worker: int | None = None,
    access_log: bool = True,
) -> None:
    """Send every log record, redacted, as JSON lines to `stream` (stderr) and optionally `file`.

    Replaces handlers installed by an earlier call, so it is safe to call again
    (e.g. in each worker process). The file is opened with a `WatchedFileHandler`,
    so external log rotation works. `worker` is the worker's index, put on every
    line; `access_log=False` silences `xiaohe.identity.access`. grpc's loggers stay
    at WARNING unless the operator set `GRPC_VERBOSITY` in the environment.
    """
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError("log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    factories: list[Callable[[], logging.Handler]] = [
        lambda: logging.StreamHandler(sys.stderr if stream is None else stream)
    ]
    if file:
        factories.append(lambda: logging.handlers.WatchedFileHandler(file, encoding="utf-8"))
    for make in factories:
        root.addHandler(_install(make(), numeric, worker))
    root.setLevel(numeric)
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.NOTSET if access_log else logging.WARNING)
    operator_set = os.environ.get(GRPC_VERBOSITY_ENV, "").strip()
    logging.getLogger(GRPC_LOGGER).setLevel(logging.NOTSET if operator_set else logging.WARNING)
    logging.captureWarnings(True)


__all__ = [
    "ACCESS_LOGGER",
    "REDACTED",
    "JsonFormatter",
    "RedactionFilter",
    "configure_logging",
    "redact",
    "redact_value",
]
