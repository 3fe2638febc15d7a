"""The outbox: messages are first written to the database, then sent by the dispatcher.

A flow that sends a message calls `Outbox.enqueue` and reports success once the
row is committed (with the rest of the flow's unit of work, when one is open);
from then on the message survives a crash of any process (see `dispatcher.py`
for how it is sent). If the row cannot be written, the
caller gets `Unavailable`: nothing was queued, so the caller must not claim
that a message is on its way.

The destination (phone or email) and the text (which holds the code) are
personal data and a secret, so the row keeps them only sealed (AES-GCM via the
injected `Sealer`, bound to the message id as associated data) and the
dispatcher sets the sealed payload to NULL as soon as the message is sent or
given up. Channel and purpose stay in the clear for operations and metrics.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.delivery.templates import CHANNEL_SMS, CHANNELS
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.shared.identifiers import number_prefix
from xiaohe.identity.server.storage.database import Database, SqlConnection, utc
from xiaohe.identity.server.storage.group_commit import GroupCommit
from xiaohe.identity.server.storage.schema import outbox

log = logging.getLogger(__name__)

STATUS_PENDING = "pending"
STATUS_SENDING = "sending"
STATUS_SENT = "sent"
STATUS_FAILED = "failed"
STATUS_WITHHELD = "withheld"
"""A code the service pretended to send (SECURITY B4): no payload, never delivered."""

CODE_MESSAGE_TTL_SECONDS = 600.0
"""A code message not sent within 10 minutes is dropped: the code (TTL ≤ 10 min) is dead by then."""

NOTICE_MESSAGE_TTL_SECONDS = 86400.0
"""A security notice is still worth sending for a day."""


class Sealer(Protocol):
    """Authenticated encryption of short-lived payloads (the key ring's AES-GCM sealer)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate plaintext together with aad."""
        ...

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob from `seal`; raises if it was tampered with or the aad differs."""
        ...


@dataclass(frozen=True)
class Payload:
    """The sealed part of an outbox row: where the message goes and what it says.

    `template` and `params` are for template-based SMS platforms, which send a
    registered template filled with variables instead of our text: the template's
    key (a code purpose or a notice kind) and the values (the code, a login name),
    in the order the text uses them. They are as secret as the text.
    """

    to: str = field(repr=False)
    text: str = field(repr=False)
    subject: str = field(default="", repr=False)
    template: str = ""
    params: Mapping[str, str] = field(default_factory=dict, repr=False)

    def to_bytes(self) -> bytes:
        """UTF-8 JSON `{to, text, subject, template, params}`."""
        doc = {
            "to": self.to,
            "text": self.text,
            "subject": self.subject,
            "template": self.template,
            "params": dict(self.params),
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Payload:
        """Parse `to_bytes` output; raises ValueError if malformed."""
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("malformed outbox payload")
        to, text, subject = doc.get("to"), doc.get("text"), doc.get("subject", "")
        template, params = doc.get("template", ""), doc.get("params", {})
        if not isinstance(to, str) or not isinstance(text, str):
            raise ValueError("malformed outbox payload")
        if not isinstance(subject, str) or not isinstance(template, str):
            raise ValueError("malformed outbox payload")
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise ValueError("malformed outbox payload")
        return cls(to=to, text=text, subject=subject, template=template, params=params)


def payload_aad(message_id: str) -> bytes:
    """Associated data of a sealed payload: its message id, so a blob cannot move to another row."""
    return message_id.encode("ascii")


def new_message_id() -> str:
    """A random message id (128 bits, hex)."""
    return secrets.token_hex(16)


_INSERT = outbox.insert()


@dataclass(frozen=True)
class ClaimedMessage:
    """A row a dispatcher holds the lease on; `attempts` (after the claim) fences updates."""

    message_id: str
    channel: str
    purpose: str
    attempts: int
    expires_at: float
    payload_enc: bytes | None = field(repr=False)


class Outbox:
    """Queues messages durably for the dispatcher."""

    def __init__(
        self,
        database: Database,
        sealer: Sealer,
        clock: Clock,
        wake: Callable[[], None] | None = None,
        message_ids: Callable[[], str] = new_message_id,
        hand_off: Callable[[ClaimedMessage], None] | None = None,
        lease_seconds: float = 30.0,
        recipient_index: Callable[[str, str], str] | None = None,
        writes: GroupCommit | None = None,
    ) -> None:
        """`recipient_index(channel, destination)` is the destination's blind index, kept in
        the row's `recipient` so an export can find the messages sent to an account's
        channels (issue 14); without it rows have none. `writes` group-commits the rows
        written outside a unit of work (shared with the dispatcher's outcomes)."""
        self._recipient_index = recipient_index
        self._database = database
        self._writes = writes or GroupCommit(database)
        self._sealer = sealer
        self._clock = clock
        self._wake = wake
        self._message_ids = message_ids
        self._hand_off = hand_off
        self._lease_seconds = lease_seconds

    async def enqueue(
        self,
        channel: str,
        destination: str,
        purpose: str,
        text: str,
        subject: str = "",
        expires_in_seconds: float = CODE_MESSAGE_TTL_SECONDS,
        *,
        template: str = "",
        params: Mapping[str, str] | None = None,
    ) -> str:
        """Queue one message and return its id; raises Unavailable if it could not be queued.

        `template` and `params` name the platform template and its variables (see
        `Payload`); `template` defaults to the purpose.
        """
        _check_kind(channel, purpose)
        if not destination or not text:
            raise ValueError("a message needs a destination and a text")
        if expires_in_seconds <= 0:
            raise ValueError("expires_in_seconds must be positive")
        message_id = self._message_ids()
        sealed = self._sealer.seal(
            Payload(
                to=destination,
                text=text,
                subject=subject,
                template=template or purpose,
                params=dict(params or {}),
            ).to_bytes(),
            payload_aad(message_id),
        )
        now = self._clock.now()
        # With a hand-off, the row is born claimed (status sending, attempt 1, leased) and
        # passed straight to this process's dispatcher: no claim transaction on the hot
        # path. Should the process die first, the lease runs out and any dispatcher
        # re-claims the row, exactly as after a crash mid-send.
        claimed = self._hand_off is not None
        row = {
            "message_id": message_id,
            "channel": channel,
            "purpose": purpose,
            "payload_enc": sealed,
            "status": STATUS_SENDING if claimed else STATUS_PENDING,
            "attempts": 1 if claimed else 0,
            "next_attempt_at": utc(now),
            "lease_until": utc(now + self._lease_seconds) if claimed else None,
            "created_at": utc(now),
            "expires_at": utc(now + expires_in_seconds),
            "dest_prefix": destination_prefix(channel, destination),
            "recipient": (
                self._recipient_index(channel, destination) if self._recipient_index else None
            ),
        }
        await self._insert(row)
        log.debug("queued message %s (%s, %s)", message_id, channel, purpose)
        claimed_message = ClaimedMessage(
            message_id=message_id,
            channel=channel,
            purpose=purpose,
            attempts=1,
            expires_at=now + expires_in_seconds,
            payload_enc=sealed,
        )
        # Inside a flow's unit of work the row is not committed yet: the dispatcher
        # hears of it only once it is (and never, if the flow rolls back).
        await self._database.after_commit(lambda: self._announce(claimed_message))
        return message_id

    def _announce(self, message: ClaimedMessage) -> None:
        """Tell this process's dispatcher about a committed row."""
        if self._hand_off is not None:
            self._hand_off(message)
        elif self._wake is not None:
            try:
                self._wake()
            except Exception as exc:  # the row is committed; the poll loop will find it
                log.warning("waking the dispatcher failed: %s", type(exc).__name__)

    async def withhold(self, channel: str, purpose: str) -> str:
        """Record a message that is not sent, with the cost of queueing one; returns its id.

        The code service answers a code request for a destination no account holds
        exactly as for a registered one (SECURITY B4), and that includes the time
        the outbox write takes. The row has no payload (no destination, no text),
        is finished at birth, and is purged with sent and failed rows.
        """
        _check_kind(channel, purpose)
        message_id = self._message_ids()
        now = utc(self._clock.now())
        row = {
            "message_id": message_id,
            "channel": channel,
            "purpose": purpose,
            "payload_enc": None,
            "status": STATUS_WITHHELD,
            "attempts": 0,
            "next_attempt_at": now,
            "lease_until": None,
            "created_at": now,
            "expires_at": now,
        }
        await self._insert(row)
        return message_id

    async def _insert(self, row: Mapping[str, object]) -> None:
        """Insert one outbox row; any database failure is Unavailable (nothing was queued).

        Outside a flow's unit of work the row is group-committed with the rows of
        concurrent requests (storage/group_commit.py): one transaction per batch.
        """

        async def insert(conn: SqlConnection) -> None:
            await conn.execute(_INSERT, row)

        try:
            await self._writes.run(insert)
        except Unavailable:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise Unavailable("the message could not be queued") from exc

    async def purge_finished(self, older_than_seconds: float) -> int:
        """Delete sent, failed and withheld rows older than `older_than_seconds`; how many."""
        cutoff = utc(self._clock.now() - older_than_seconds)
        async with self._database.begin() as conn:
            result = await conn.execute(
                sa.delete(outbox).where(
                    outbox.c.status.in_((STATUS_SENT, STATUS_FAILED, STATUS_WITHHELD)),
                    outbox.c.created_at < cutoff,
                )
            )
        return int(result.rowcount)


def destination_prefix(channel: str, destination: str) -> str | None:
    """An SMS destination's number prefix ("86-1381234") for receipts and metrics; else None.

    Ten thousand numbers share a prefix, so it is not personal data and stays in the clear.
    """
    if channel != CHANNEL_SMS:
        return None
    return number_prefix(destination) or None


def _check_kind(channel: str, purpose: str) -> None:
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if not 0 < len(purpose) <= 32:
        raise ValueError("a purpose is 1-32 characters")


__all__ = [
    "CODE_MESSAGE_TTL_SECONDS",
    "NOTICE_MESSAGE_TTL_SECONDS",
    "STATUS_FAILED",
    "STATUS_PENDING",
    "STATUS_SENDING",
    "STATUS_SENT",
    "STATUS_WITHHELD",
    "Outbox",
    "Payload",
    "Sealer",
    "destination_prefix",
    "new_message_id",
    "payload_aad",
]
