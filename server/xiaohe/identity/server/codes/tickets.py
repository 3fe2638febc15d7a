"""Verification tickets: their format, their sealed destination, and consuming them.

A ticket is `vt1.<destination tag>.<32 random bytes>`; Redis holds only its
SHA-256 (see `TicketService.consume` for why a mismatch does not use it up, and
`seal_destination` for why Redis never holds a destination in the clear).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.destinations import normalize_destination
from xiaohe.identity.server.codes.digests import CodeDigests
from xiaohe.identity.server.codes.models import (
    DELIVERY_CHANNELS,
    Channel,
    CodePolicy,
    Purpose,
    TicketClaims,
)
from xiaohe.identity.server.codes.store import (
    RedisCodeStore,
    StoredTicket,
    TicketStore,
    TicketToStore,
)
from xiaohe.identity.server.errors import InvalidArgument, TicketInvalid
from xiaohe.identity.server.storage.redis import RedisClient

logger = logging.getLogger(__name__)

TICKET_VERSION = "vt1"
TICKET_SECRET_BYTES = 32
# A ticket presented this many times with the wrong purpose/channel/destination is destroyed.
TICKET_MAX_MISMATCHES = 3
# Label of the key that seals a ticket's destination, derived from the ticket's secret.
TICKET_DESTINATION_LABEL = b"xiaohe ticket destination v1"
TICKET_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16
_TICKET_PATTERN = re.compile(r"vt1\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class ParsedTicket:
    """A well-formed ticket: its destination tag, the hex SHA-256 of the string, its secret."""

    tag: str
    ticket_hash: str
    secret: bytes = field(repr=False)


def ticket_from_secret(tag: str, secret: bytes) -> str:
    """The ticket `vt1.<tag>.<secret, urlsafe base64 without padding>`."""
    if len(secret) != TICKET_SECRET_BYTES:
        raise ValueError("a ticket secret is 32 bytes")
    encoded = base64.urlsafe_b64encode(secret).rstrip(b"=").decode("ascii")
    return f"{TICKET_VERSION}.{tag}.{encoded}"


def new_ticket(tag: str, token_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh ticket `vt1.<tag>.<32 random bytes, urlsafe base64>`."""
    return ticket_from_secret(tag, token_bytes(TICKET_SECRET_BYTES))


def ticket_hash(ticket: str) -> str:
    """Storage name of a ticket: hex SHA-256 of the ticket string (never stored itself)."""
    return hashlib.sha256(ticket.encode("utf-8")).hexdigest()


def parse_ticket(ticket: object) -> ParsedTicket | None:
    """Split a ticket into its tag and hash, or None if it is not a well-formed ticket."""
    if not isinstance(ticket, str) or len(ticket) > 128:
        return None
    match = _TICKET_PATTERN.fullmatch(ticket)
    if match is None:
        return None
    secret = base64.urlsafe_b64decode(match.group(2) + "=")
    return ParsedTicket(tag=match.group(1), ticket_hash=ticket_hash(ticket), secret=secret)


def _destination_key(secret: bytes) -> bytes:
    return hmac.new(secret, TICKET_DESTINATION_LABEL, hashlib.sha256).digest()


def seal_destination(secret: bytes, ticket_hash: str, destination: str, nonce: bytes) -> str:
    """A ticket's destination as stored: urlsafe base64 of nonce + AES-256-GCM ciphertext + tag.

    The key is HMAC-SHA256(ticket secret, TICKET_DESTINATION_LABEL) and the
    associated data is the ticket hash (the ticket's Redis name), so a sealed
    destination opens only for the holder of that very ticket. Redis stores the
    hash, never the ticket, so a Redis dump, its append-only file or a replica
    reveals no destination (I1). Each key seals exactly one value, so the
    random 96-bit `nonce` (from the injected randomness) is never reused.
    """
    if len(nonce) != TICKET_NONCE_BYTES:
        raise ValueError("the nonce must be 12 bytes")
    sealed = AESGCM(_destination_key(secret)).encrypt(
        nonce, destination.encode("utf-8"), ticket_hash.encode("ascii")
    )
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def open_destination(secret: bytes, ticket_hash: str, sealed: str) -> str | None:
    """The destination sealed by `seal_destination`, or None if it does not open."""
    try:
        blob = base64.urlsafe_b64decode(sealed.encode("ascii"))
    except ValueError:  # binascii.Error and non-ASCII text are both ValueErrors
        return None
    if len(blob) < TICKET_NONCE_BYTES + _GCM_TAG_BYTES:
        return None
    nonce, body = blob[:TICKET_NONCE_BYTES], blob[TICKET_NONCE_BYTES:]
    try:
        plain = AESGCM(_destination_key(secret)).decrypt(nonce, body, ticket_hash.encode("ascii"))
        return plain.decode("utf-8")
    except (InvalidTag, UnicodeDecodeError):
        return None


def mint_ticket(
    tag: str,
    channel: Channel,
    purpose: Purpose,
    destination: str,
    *,
    expires_at_ms: int,
    token_bytes: Callable[[int], bytes],
) -> tuple[str, TicketToStore]:
    """A fresh ticket for `destination` and what the store keeps of it (hash, sealed destination).

    The one place a ticket is made, for a verified code (`CodeService.verify`) and
    for a grant (`TicketService.grant`): 32 random bytes of secret, then 12 of
    nonce for `seal_destination`, both from `token_bytes`.
    """
    secret = token_bytes(TICKET_SECRET_BYTES)
    ticket = ticket_from_secret(tag, secret)
    hashed = ticket_hash(ticket)
    sealed = seal_destination(secret, hashed, destination, token_bytes(TICKET_NONCE_BYTES))
    return ticket, TicketToStore(
        ticket_hash=hashed,
        channel=Channel(channel).value,
        purpose=Purpose(purpose).value,
        sealed_destination=sealed,
        expires_at_ms=expires_at_ms,
    )


class TicketService:
    """Consumes verification tickets for the flow RPCs (register, SMS login, reset, bind...)."""

    def __init__(
        self,
        *,
        redis: RedisClient | None = None,
        hmac_key: bytes,
        clock: Clock,
        policy: CodePolicy | None = None,
        audit: AuditSink | None = None,
        store: TicketStore | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        """Wire the service; `store` defaults to the Redis implementation on `redis`."""
        if store is None:
            if redis is None:
                raise ValueError("pass redis or store")
            store = RedisCodeStore(redis)
        self._store = store
        self._digests = CodeDigests(hmac_key)
        self._clock = clock
        self._policy = policy or CodePolicy()
        self._audit = audit
        self._token_bytes = token_bytes

    async def grant(self, account_id: str, purpose: Purpose, ttl: int | None = None) -> str:
        """A single-use ticket for `purpose` that names an account a flow has identified.

        Recovery hands one out (purpose RESET_PASSWORD) once the person has proven
        the account's phone and identity details: `consume` then answers channel
        ACCOUNT and the account id as destination. It is stored like any ticket
        (only its hash; the account id sealed under the ticket's own secret) and
        lives `ttl` seconds (the ticket lifetime by default).
        """
        tag = self._digests.destination_tag(Channel.ACCOUNT, account_id)
        now_ms = int(self._clock.now() * 1000)
        ticket, stored = mint_ticket(
            tag,
            Channel.ACCOUNT,
            purpose,
            account_id,
            expires_at_ms=now_ms + (ttl or self._policy.ticket_ttl) * 1000,
            token_bytes=self._token_bytes,
        )
        await self._store.store_ticket(tag, stored, now_ms=now_ms)
        return ticket

    async def consume(
        self,
        ticket: str,
        *,
        purpose: Purpose,
        channel: Channel | None = None,
        destination: str | None = None,
    ) -> TicketClaims:
        """Use up a ticket for `purpose` (and channel/destination if given); say what it proves.

        A live ticket presented with the right purpose (and channel and
        destination, when the caller passes them) is deleted by the same script
        that reads it, so it works exactly once. The destination is compared
        through its keyed tag, which the ticket string carries and its stored
        hash authenticates, so a raw destination never travels to Redis here.
        The stored destination is opened with the ticket's own secret after the
        script; one that does not open, or whose tag is not the ticket's (only
        possible if Redis was tampered with), is TicketInvalid.

        A presentation that does not match is refused WITHOUT consuming the
        ticket: a flow that reached the wrong RPC, or a user who corrected a
        typo in a form, can still use it in the right place, and its holder
        already knows what it is bound to, so nothing is revealed. So that a
        stolen ticket cannot be probed against many destinations, the third
        mismatch destroys it. Unknown, expired, used and mismatched tickets, and
        strings that are not tickets at all, raise the same TicketInvalid.
        """
        return await self._present(ticket, purpose, channel, destination, keep=False)

    async def check(
        self,
        ticket: str,
        *,
        purpose: Purpose,
        channel: Channel | None = None,
        destination: str | None = None,
    ) -> TicketClaims:
        """What `consume` would answer, without using the ticket up.

        A flow calls it before a check that should not cost the user the ticket
        (a login name that is taken): a caller must hold a live ticket before the
        flow answers anything, and a mismatch counts toward the ticket's
        destruction exactly as in `consume`. Not audited: nothing changed.
        """
        return await self._present(ticket, purpose, channel, destination, keep=True)

    async def check_any(
        self, ticket: str, *, purposes: Collection[Purpose], channel: Channel | None = None
    ) -> TicketClaims:
        """`check` for a ticket that may have any of `purposes` (its claims name which).

        One presentation, so a ticket of the second purpose is not charged a
        mismatch for not being of the first.
        """
        if not purposes:
            raise ValueError("purposes must not be empty")
        return await self._present(ticket, tuple(purposes), channel, None, keep=True)

    async def _present(
        self,
        ticket: str,
        purpose: Purpose | tuple[Purpose, ...],
        channel: Channel | None,
        destination: str | None,
        *,
        keep: bool,
    ) -> TicketClaims:
        parsed = parse_ticket(ticket)
        if parsed is None:
            raise TicketInvalid()
        bound = True
        if destination is not None:
            bound = parsed.tag in self._candidate_tags(destination, channel)
        stored = await self._store.consume_ticket(
            parsed.tag,
            parsed.ticket_hash,
            now_ms=int(self._clock.now() * 1000),
            purpose=",".join(Purpose(p).value for p in purpose)
            if isinstance(purpose, tuple)
            else Purpose(purpose).value,
            channel=Channel(channel).value if channel is not None else "",
            destination_matches=bound,
            max_misses=TICKET_MAX_MISMATCHES,
            keep=keep,
        )
        claims = None if stored is None else self._open(parsed, stored)
        if keep:
            if claims is None:
                raise TicketInvalid()
            return claims
        if claims is None:
            await record_quietly(self._audit, "ticket.consume", parsed.tag, "invalid", logger)
            raise TicketInvalid()
        await record_quietly(self._audit, "ticket.consume", parsed.tag, "ok", logger)
        return claims

    def _open(self, parsed: ParsedTicket, stored: StoredTicket) -> TicketClaims | None:
        """The claims of a consumed ticket, or None if its stored fields do not hold together."""
        destination = open_destination(parsed.secret, parsed.ticket_hash, stored.sealed_destination)
        if destination is None:
            return None
        try:
            channel, purpose = Channel(stored.channel), Purpose(stored.purpose)
        except ValueError:
            return None
        if self._digests.destination_tag(channel, destination) != parsed.tag:
            return None
        return TicketClaims(
            channel=channel,
            destination=destination,
            purpose=purpose,
            issued_at=stored.issued_at_ms / 1000,
        )

    def _candidate_tags(self, destination: str, channel: Channel | None) -> set[str]:
        """Tags of `destination` normalised for `channel` (or for each channel it fits)."""
        tags: set[str] = set()
        if channel is Channel.ACCOUNT:
            return {self._digests.destination_tag(channel, destination)}
        for candidate in [channel] if channel is not None else DELIVERY_CHANNELS:
            try:
                normalised = normalize_destination(
                    candidate, destination, self._policy.allowed_country_codes
                )
            except InvalidArgument:
                continue
            tags.add(self._digests.destination_tag(candidate, normalised))
        return tags


__all__ = [
    "TICKET_DESTINATION_LABEL",
    "TICKET_MAX_MISMATCHES",
    "TICKET_NONCE_BYTES",
    "TICKET_SECRET_BYTES",
    "ParsedTicket",
    "TicketService",
    "mint_ticket",
    "new_ticket",
    "open_destination",
    "parse_ticket",
    "seal_destination",
    "ticket_from_secret",
    "ticket_hash",
]
