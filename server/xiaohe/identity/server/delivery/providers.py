"""Providers: the last hop of a message, to a file (dev), an SMTP server or an SMS gateway.

A provider gets one `OutgoingMessage` and either returns (the provider has
accepted it; an `Accepted` carries the provider's own message id, when it has
one) or raises `DeliveryError(retryable, reason)`. The dispatcher calls these
providers at least once per message and may call them again with the same
`message_id` after a crash or a timeout, so every provider here passes the
message id on as an idempotency key (file: dedupe, SMTP: `Message-ID`, HTTP:
`Idempotency-Key`) and says so with `idempotent = True`.

Providers without an idempotency key (the SMS platforms in `aliyun.py` and
`tencent.py`) set `idempotent = False`. For them, a failure after the request
went out (a read timeout, a dropped connection) is `DeliveryOutcomeUnknown`:
the platform may have sent the SMS, so the dispatcher applies its
unknown-outcome policy instead of simply trying again (see `dispatcher.py`).

The text holds a verification code and `to` a phone number or an email
address: neither ever appears in an exception, a log line or a `repr`.
`DeliveryError.reason` is a short fixed phrase plus a status code or an
exception type, never the server's reply text (which may echo the address).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import smtplib
import ssl
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Protocol

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.shared.batches import Coalescer
from xiaohe.identity.server.shared.network import (
    check_secret_url,
    smtp_credentials_in_plaintext,
)

_REMEMBERED_IDS = 10_000
_FILE_BATCH = 256
"""Messages per append of the dev file provider."""
_MESSAGE_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


@dataclass(frozen=True)
class OutgoingMessage:
    """One message ready for a provider; `to`, `text` and `subject` stay out of `repr`."""

    message_id: str
    channel: str
    to: str = field(repr=False)
    purpose: str
    text: str = field(repr=False)
    subject: str = field(default="", repr=False)
    template_params: Mapping[str, str] = field(
        default_factory=dict, repr=False, compare=False, hash=False
    )
    """For template-based SMS platforms: the values of the text's variables (e.g. `code`),
    in the order the text uses them; sealed in the outbox like the text."""
    template: str = ""
    """The platform template's key: a code purpose or a notice kind ("" = the purpose)."""

    def __post_init__(self) -> None:
        if not 0 < len(self.message_id) <= 64 or not set(self.message_id) <= _MESSAGE_ID_CHARS:
            raise ValueError("a message id is 1-64 characters of [A-Za-z0-9_-]")


@dataclass(frozen=True)
class Accepted:
    """A provider took the message: which provider (`name`) and the id it answered, if any.

    The id (Aliyun `BizId`, Tencent `SerialNo`) is what delivery receipts name,
    so the dispatcher stores both on the outbox row.
    """

    provider: str
    provider_message_id: str | None = None


class DeliveryError(Exception):
    """A provider did not accept a message; `retryable` says whether trying again may help.

    `failover` says whether another provider may take this message instead:
    this one definitely did not send it and the cause lies with the provider
    (5xx, throttling, no balance, a credential it refuses, no template for the
    purpose), not with the message (an invalid number, a template the platform
    rejects, the per-number limit). By default a retryable error allows
    failover and a permanent one does not. `provider` names the provider that
    answered (set by the failover chain; empty means the channel's provider).
    """

    def __init__(
        self,
        retryable: bool,
        reason: str,
        *,
        failover: bool | None = None,
        provider: str = "",
    ) -> None:
        super().__init__(reason)
        self.retryable = retryable
        self.reason = reason
        self.failover = retryable if failover is None else failover
        self.provider = provider


class DeliveryOutcomeUnknown(DeliveryError):
    """The request reached (or may have reached) the provider, but no answer came back.

    A timeout or a dropped connection after sending: the message may be on its
    way. It never fails over (two providers could both send it). `idempotent`
    says whether the provider dedupes a resend with the same message id; if it
    does, the dispatcher retries as usual, otherwise it applies its
    unknown-outcome policy.
    """

    def __init__(self, reason: str, *, idempotent: bool, provider: str = "") -> None:
        super().__init__(True, reason, failover=False, provider=provider)
        self.idempotent = idempotent


class Provider(Protocol):
    """Something that hands a message to the outside world.

    Providers may also set `idempotent` (see `is_idempotent`); the ones here do.
    """

    name: str

    async def send(self, message: OutgoingMessage) -> Accepted | None:
        """Deliver the message or raise DeliveryError; None means accepted, without an id."""
        ...


def is_idempotent(provider: object) -> bool:
    """Whether a resend with the same message id is dropped by the provider (default: yes).

    Providers that do not declare it are the in-process doubles and gateways of
    before the SMS platforms, all of which dedupe by message id.
    """
    return bool(getattr(provider, "idempotent", True))


# -- file (dev) ----------------------------------------------------------------------


class JsonlFileProvider:
    """Appends each message as one JSON line to a file (`var/outbox/sms.jsonl` in dev).

    Several worker processes append to the same file. Each line goes out in a
    single `write()` on an `O_APPEND` descriptor while holding an exclusive
    `flock`, so lines never interleave; if a write comes up short (disk full)
    the file is truncated back to its previous length before the lock is
    released, so a torn line is never left behind.

    Idempotent by `message_id`: before appending, the provider checks an
    in-process set of the last 10,000 ids it wrote, then, under the lock, scans
    the last `tail_bytes` of the file (the default holds about a thousand messages).
    A duplicate comes from a retry after a crash or a lease expiry, seconds to
    minutes after the first write, so it falls inside that window; one older
    than the window would be written again (at-least-once, never lost).

    Messages sent concurrently in one process are appended together: one open,
    lock, tail scan, `write()` and fsync for the batch (`shared/batches.py`).
    A batch is all or nothing, so a short write fails every message in it.
    """

    name = "file"
    idempotent = True

    def __init__(self, path: Path, clock: Clock, tail_bytes: int = 256 * 1024) -> None:
        self._path = path
        self._clock = clock
        self._tail_bytes = tail_bytes
        self._written: set[str] = set()
        self._written_order: deque[str] = deque()
        self._appends: Coalescer[OutgoingMessage, None] = Coalescer(self._append_batch, _FILE_BATCH)

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Append the message as one JSON line unless its id is already in the file."""
        try:
            await self._appends.submit(message)
        except OSError as exc:
            raise DeliveryError(True, f"file error: {type(exc).__name__}") from None
        return Accepted(self.name)

    async def _append_batch(self, messages: list[OutgoingMessage]) -> list[None]:
        await asyncio.to_thread(self._append, messages)
        return [None] * len(messages)

    def _line(self, message: OutgoingMessage) -> bytes:
        record = {
            "to": message.to,
            "channel": message.channel,
            "purpose": message.purpose,
            "text": message.text,
            "message_id": message.message_id,
            "at": datetime.fromtimestamp(self._clock.now(), tz=UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        if message.subject:
            record["subject"] = message.subject
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        # Keep U+2028/U+2029 escaped: `str.splitlines()` would split a line on them.
        line = line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        return (line + "\n").encode()

    def _append(self, messages: list[OutgoingMessage]) -> None:
        fresh = {m.message_id: m for m in messages if m.message_id not in self._written}
        if not fresh:
            return
        self._ensure_directory()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self._path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                st = os.fstat(fd)
                if st.st_mode & 0o077:
                    os.fchmod(fd, 0o600)
                for message_id in self._tail_holds(fd, st.st_size, fresh):
                    self._remember(message_id)
                    del fresh[message_id]
                if not fresh:
                    return
                data = b"".join(self._line(message) for message in fresh.values())
                try:
                    written = os.write(fd, data)
                except OSError:
                    os.ftruncate(fd, st.st_size)
                    raise
                if written != len(data):
                    os.ftruncate(fd, st.st_size)
                    raise OSError("short write")
                os.fsync(fd)
                for message_id in fresh:
                    self._remember(message_id)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _remember(self, message_id: str) -> None:
        """Add to the in-process set, keeping only the most recent ids (bounded memory)."""
        if message_id in self._written:
            return
        self._written.add(message_id)
        self._written_order.append(message_id)
        if len(self._written_order) > _REMEMBERED_IDS:
            self._written.discard(self._written_order.popleft())

    def _ensure_directory(self) -> None:
        directory = self._path.parent
        if not directory.is_dir():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)  # mkdir's mode is reduced by the umask

    def _tail_holds(self, fd: int, size: int, message_ids: Iterable[str]) -> list[str]:
        """Those of `message_ids` that a line in the last `tail_bytes` of the file holds.

        The lines are compact JSON, and inside a JSON string a `"` is always
        escaped, so `"message_id":"<id>"` can only match the key itself.
        """
        start = max(0, size - self._tail_bytes)
        tail = os.pread(fd, size - start, start)
        return [m for m in message_ids if f'"message_id":"{m}"'.encode() in tail]


# -- SMTP ----------------------------------------------------------------------------


class SmtpProvider:
    """Sends email through an SMTP server (stdlib `smtplib`, in a worker thread).

    The `Message-ID` header is derived from the outbox message id, so a resend
    after a crash carries the same id and mail systems can drop the duplicate.
    SMTP 4xx replies and connection problems are retryable; 5xx replies are
    permanent.

    Credentials are only ever sent after STARTTLS (SECURITY X2): a provider with a
    username but without `starttls` cannot be built, and a server that does not
    offer STARTTLS is a permanent failure before any AUTH command.
    """

    name = "smtp"
    idempotent = True

    def __init__(
        self,
        host: str,
        port: int,
        sender: str,
        username: str = "",
        password: str = "",
        starttls: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._sender = sender
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout
        if smtp_credentials_in_plaintext(username, password, starttls):
            raise ValueError("SMTP credentials are sent only over STARTTLS; enable starttls")
        domain = parseaddr(sender)[1].rpartition("@")[2]
        self._domain = domain or "xiaohe-identity.invalid"

    def message_id_header(self, message_id: str) -> str:
        """The RFC 5322 Message-ID for an outbox message id."""
        return f"<{message_id}@{self._domain}>"

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """The MIME message (UTF-8 text, encoded subject) for an outgoing message."""
        mail = EmailMessage()
        mail["From"] = self._sender
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = self.message_id_header(message.message_id)
        mail.set_content(message.text, charset="utf-8")
        return mail

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Send the email or raise DeliveryError; the provider id is the Message-ID."""
        try:
            mail = self.build(message)
        except (ValueError, TypeError):  # e.g. a line break in a header: never valid
            raise DeliveryError(False, "smtp invalid message") from None
        await asyncio.to_thread(self._send_sync, mail)
        return Accepted(self.name, self.message_id_header(message.message_id)[:64])

    def _send_sync(self, mail: EmailMessage) -> None:
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self._username:
                    smtp.login(self._username, self._password)
                refused = smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            code = codes[0] if codes else 0
            raise DeliveryError(_smtp_retryable(code), f"smtp recipient refused {code}") from None
        except smtplib.SMTPConnectError as exc:
            raise DeliveryError(True, f"smtp connect error {exc.smtp_code}") from None
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(_smtp_retryable(exc.smtp_code), f"smtp {exc.smtp_code}") from None
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError(False, "smtp extension not supported") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(True, f"smtp connection error: {type(exc).__name__}") from None
        if refused:
            code = next(iter(refused.values()))[0]
            raise DeliveryError(_smtp_retryable(code), f"smtp recipient refused {code}")


def _smtp_retryable(code: int) -> bool:
    """5xx is a permanent refusal; 4xx and anything unexpected may succeed later."""
    return not 500 <= code <= 599


# -- HTTP SMS gateway ----------------------------------------------------------------


def gateway_signature(secret: str | bytes, timestamp: str, message_id: str, body: bytes) -> str:
    """Hex HMAC-SHA256(secret, "{timestamp}\\n{message_id}\\n{sha256 hex of body}")."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hashlib.sha256(body).hexdigest()
    signed = f"{timestamp}\n{message_id}\n{digest}".encode()
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def verify_gateway_signature(
    secret: str | bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    now: float,
    max_skew_seconds: float = 300.0,
) -> bool:
    """Check a gateway request: the signature over the body's message_id, and the timestamp's age.

    For gateway implementers: take `timestamp` and `signature` from the
    `X-Xiaohe-Timestamp` and `X-Xiaohe-Signature` headers and pass the raw
    request body. The message id is read from the body (not from a header),
    so it cannot be swapped; the timestamp must be within `max_skew_seconds`
    of `now`, which bounds replays; the comparison is constant time.
    """
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > max_skew_seconds:
        return False
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    message_id = doc.get("message_id") if isinstance(doc, dict) else None
    if not isinstance(message_id, str):
        return False
    expected = gateway_signature(secret, timestamp, message_id, body)
    return hmac.compare_digest(expected, signature.strip().lower())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: a gateway that redirects a signed POST is misconfigured."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: object,
        code: int,
        msg: str,
        headers: object,
        newurl: str,
    ) -> None:
        return None


class HttpSmsGatewayProvider:
    """Posts each SMS as signed JSON to an HTTP gateway (stdlib `urllib`, in a worker thread).

    Request: `POST url` with body `{"message_id","to","text","purpose"}` and
    headers `X-Xiaohe-Key-Id`, `X-Xiaohe-Timestamp` (epoch seconds),
    `X-Xiaohe-Signature` (see `gateway_signature`) and `Idempotency-Key`
    (the message id; a resend after a timeout carries the same key, so the
    gateway must send at most once per key). 2xx is accepted; 408, 429, 5xx
    and connection problems are retryable; redirects and other 4xx are
    permanent. The body holds a phone number and a code, so plain `http://` is
    accepted only for a gateway on this machine (SECURITY X2).
    """

    name = "http"
    idempotent = True

    def __init__(
        self,
        url: str,
        key_id: str,
        secret: str | bytes,
        clock: Clock,
        timeout: float = 10.0,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        check = check_secret_url(url)
        if check == "not_http":
            raise ValueError("the SMS gateway URL must be https://HOST/...")
        if check == "remote_http":
            raise ValueError("the SMS gateway URL must be https:// unless it is on loopback")
        self._url = url
        self._key_id = key_id
        self._secret = secret
        self._clock = clock
        self._timeout = timeout
        # `proxies=None` honours the *_proxy environment variables; `{}` disables proxies.
        handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
        if proxies is not None:
            handlers.append(urllib.request.ProxyHandler(dict(proxies)))
        self._opener = urllib.request.build_opener(*handlers)

    def build_request(self, message: OutgoingMessage) -> urllib.request.Request:
        """The signed HTTP request for a message."""
        body = json.dumps(
            {
                "message_id": message.message_id,
                "to": message.to,
                "text": message.text,
                "purpose": message.purpose,
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        timestamp = str(int(self._clock.now()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Xiaohe-Key-Id": self._key_id,
            "X-Xiaohe-Timestamp": timestamp,
            "X-Xiaohe-Signature": gateway_signature(
                self._secret, timestamp, message.message_id, body
            ),
            "Idempotency-Key": message.message_id,
        }
        # The scheme is checked in __init__ (http/https only).
        return urllib.request.Request(self._url, data=body, headers=headers, method="POST")  # noqa: S310

    async def send(self, message: OutgoingMessage) -> Accepted:
        """Post the message or raise DeliveryError."""
        request = self.build_request(message)
        await asyncio.to_thread(self._post, request)
        return Accepted(self.name)

    def _post(self, request: urllib.request.Request) -> None:
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except urllib.error.URLError as exc:
            # urllib wraps what fails while connecting or writing the request: not sent.
            cause = exc.reason
            kind = type(cause).__name__ if isinstance(cause, BaseException) else type(exc).__name__
            raise DeliveryError(True, f"gateway connection error: {kind}") from None
        except (http.client.HTTPException, OSError) as exc:
            # Failed while waiting for the answer: the gateway may have sent it. It dedupes
            # by Idempotency-Key, so the dispatcher may try again, but never another provider.
            raise DeliveryOutcomeUnknown(
                f"gateway connection error: {type(exc).__name__}", idempotent=True
            ) from None
        if 200 <= status <= 299:
            return
        retryable = status in (408, 429) or 500 <= status <= 599
        raise DeliveryError(retryable, f"gateway http {status}")


__all__ = [
    "Accepted",
    "DeliveryError",
    "DeliveryOutcomeUnknown",
    "HttpSmsGatewayProvider",
    "JsonlFileProvider",
    "OutgoingMessage",
    "Provider",
    "SmtpProvider",
    "gateway_signature",
    "is_idempotent",
    "verify_gateway_signature",
]
