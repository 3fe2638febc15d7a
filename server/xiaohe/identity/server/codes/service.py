"""Issue and verify one-time codes; hand out and consume verification tickets.

Every flow that proves control of a phone or an email (registration, SMS login,
password reset, binding, phone change, recovery, real name, deactivation) goes
through `CodeService.issue` → the user types the code → `CodeService.verify` →
a single-use ticket → the flow's RPC calls `TicketService.consume`.

Why it is built this way (SECURITY.md C1–C7, B2, B4, B5, F1, I1):

- A code is 6 digits from a CSPRNG (`secrets`), lives 5 minutes and is stored
  only as an HMAC bound to (channel, destination, purpose), so a REGISTER code
  cannot reset a password and a code for phone A cannot verify phone B. The code
  itself appears only in the message text handed to the queue: never in a return
  value, an exception, a log line or a metric.
- Redis keys never contain a destination: they carry a keyed pseudonym of it
  (`destination_tag`), which is also the audit target.
- Every request field is validated before any limit is spent, and a request
  refused by a later limit refunds the earlier ones, so a malformed or refused
  request costs the caller's budgets nothing.
- Issuing checks the per-destination cooldown and hour/day windows, records the
  issue and replaces the previous code in one Lua script: under any concurrency,
  across all processes, one number gets one message per cooldown.
- Verifying counts the attempt before comparing (constant time, in Lua), so
  concurrent guesses cannot exceed `max_attempts`; wrong guesses also feed a
  rolling per-destination budget that issuing a new code does not reset (C3).
  Only a guess compared against a LIVE code is counted: a verification with no
  live code (never issued, expired, used, used up) needs no access to the phone,
  so counting it would let anyone block the owner's SMS login with a few bogus
  calls (B2). A live code exists only after an issue, which is itself limited,
  so the default budget (30/hour) exceeds what the default issue limits allow
  (5 codes/hour × 5 tries = 25): an attacker who sends codes to the victim's
  phone still cannot exhaust it. It stays as defence in depth for operators who
  raise the issue limits (see `CodePolicy`).
- Verification calls themselves are bounded per end-user IP (IPv4 address or
  IPv6 /64) and per client, checked before the script: a verification that
  finds no live code spends no destination budget, so without these anyone
  could make the server run unbounded Redis scripts. They count every
  verification that reaches the script, whatever its outcome.
- A ticket gives its consumer the normalised destination back, but Redis
  persists its data, so the destination is stored sealed (AES-256-GCM) under a
  key derived from the ticket's random part, which only the ticket holder has;
  Redis holds just the SHA-256 of the ticket (I1, see `seal_destination`).
- Redis unreachable → `Unavailable`: nothing is sent and nothing is accepted.

Audit: `code.issue` ok, `code.verify` ok / invalid (a wrong guess at a live code,
bounded by the failure budget), `ticket.consume` ok / invalid. Refusals by a rate
limit, and verifications that found no live code (which no budget bounds, since
anyone may send them), are counted in metrics only: under a bombing burst an
audit row per request would turn the attack onto the hash-chained, serialised log.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import redis.asyncio as aioredis
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    IssuedCode,
    Purpose,
    TicketClaims,
    VerifiedTicket,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.store import (
    ISSUE_POLICY,
    VERIFY_POLICY,
    CodeStore,
    NewCode,
    RedisCodeStore,
    StoredTicket,
    TicketStore,
    TicketToStore,
    VerifyOutcome,
)
from xiaohe.identity.server.errors import (
    CodeInvalid,
    FieldViolation,
    InvalidArgument,
    RateLimited,
    TicketInvalid,
    Unavailable,
)
from xiaohe.identity.server.ratelimit.callers import CallerBudget, CallerLimits
from xiaohe.identity.server.ratelimit.limiter import (
    RateLimiter,
    Reservation,
    SlidingWindowLimiter,
    Window,
)
from xiaohe.identity.server.shared.identifiers import (
    normalize,
    normalize_email,
    normalize_phone,
)
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms

logger = logging.getLogger(__name__)

IP_POLICY = "code.issue.ip"
CLIENT_POLICY = "code.issue.client"
VERIFY_IP_POLICY = "code.verify.ip"
VERIFY_CLIENT_POLICY = "code.verify.client"

CODE_DIGITS = 6
_HOUR = 3600.0
_DAY = 86400.0
TICKET_VERSION = "vt1"
TICKET_SECRET_BYTES = 32
# A ticket presented this many times with the wrong purpose/channel/destination is destroyed.
TICKET_MAX_MISMATCHES = 3
# Label of the key that seals a ticket's destination, derived from the ticket's secret.
TICKET_DESTINATION_LABEL = b"xiaohe ticket destination v1"
TICKET_NONCE_BYTES = 12
_GCM_TAG_BYTES = 16

_MAX_DESTINATION_CHARS = 512
_MAX_CODE_CHARS = 64
_TICKET_PATTERN = re.compile(r"vt1\.([0-9a-f]{32})\.([A-Za-z0-9_-]{43})")


class MessageQueue(Protocol):
    """The delivery outbox: queues one message for a provider."""

    async def enqueue(
        self, channel: str, destination: str, purpose: str, text: str, subject: str = ""
    ) -> str:
        """Queue the message (an email with its subject) and return its id; raise
        errors.Unavailable if nothing was queued."""
        ...

    async def withhold(self, channel: str, purpose: str) -> str:
        """Store that a message was not sent, at the cost of queueing one (B4); no destination."""
        ...


class CodeMetrics(Protocol):
    """Counters about codes; labels never include a destination or a code."""

    def code_issued(self, channel: str, purpose: str) -> None:
        """A code was issued."""
        ...

    def code_verified(self, channel: str, purpose: str, outcome: str) -> None:
        """A verification ended with `outcome` (ok, mismatch, missing, exhausted, rate_limited)."""
        ...

    def limit_rejected(self, policy: str) -> None:
        """A request was refused by the dotted `policy`."""
        ...


RecipientFilter = Callable[[Channel, str, Purpose], Awaitable[bool]]
"""Whether to actually send a code to (channel, normalised destination, purpose)."""

ComposeMessage = Callable[[str, str, str, int], tuple[str, str]]
"""(channel, purpose, code, ttl seconds) → the message text and, for an email, its subject."""


def six_digits() -> str:
    """A uniformly random 6-digit code from the OS CSPRNG."""
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


class CodeDigests:
    """Keyed digests of the code subsystem: destination tags, code HMACs and IP tags.

    All use HMAC-SHA256 under the code HMAC key, with inputs that cannot collide
    across uses (`<channel>:<destination>` for tags, prefixed inputs for the
    rest). Without the key, a Redis dump tells nothing about destinations or
    codes: a 6-digit code is trivially enumerable from a plain hash, not from an
    HMAC. The code HMAC covers channel, destination and purpose, so a stored
    code is also cryptographically bound to what it was issued for.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the code HMAC key must be at least 32 bytes")
        self._key = key
        self._pseudonyms = Pseudonyms(key)

    def __repr__(self) -> str:
        return "CodeDigests(<key hidden>)"

    def _mac(self, message: str) -> bytes:
        return hmac.new(self._key, message.encode("utf-8"), hashlib.sha256).digest()

    def destination_tag(self, channel: Channel, destination: str) -> str:
        """Pseudonym of a normalised destination: HMAC of `channel:destination`, 16 bytes hex."""
        return self._mac(f"{channel.value}:{destination}")[:16].hex()

    def code_mac(self, channel: Channel, destination: str, purpose: Purpose, code: str) -> str:
        """The stored form of a code (hex HMAC over the code and what it is bound to)."""
        message = "\x00".join(("xh.code.v1", channel.value, destination, purpose.value, code))
        return self._mac(message).hex()

    def ip_tag(self, ip: str) -> str:
        """The pseudonym of an end-user IP (IPv6 by /64 prefix, where one user usually sits)."""
        return self._pseudonyms.ip(ip)


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


_E = TypeVar("_E", Channel, Purpose)


def _parse_enum(
    kind: type[_E], value: object, field: str, violations: list[FieldViolation]
) -> _E | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value)
    choices = ", ".join(member.value for member in kind)
    violations.append(FieldViolation(field, f"must be specified: one of {choices}"))
    return None


def _required_channel(purpose: Purpose) -> Channel | None:
    if purpose is Purpose.BIND_PHONE:
        return Channel.SMS
    if purpose is Purpose.BIND_EMAIL:
        return Channel.EMAIL
    return None


def mailbox(address: str) -> str:
    """The mailbox an (already normalised) email address delivers to: without its `+tag`."""
    local, _, domain = address.rpartition("@")
    return f"{local.split('+', 1)[0]}@{domain}"


def mailbox_key(tag: str) -> str:
    """The issue windows shared by every `+tag` address of one mailbox."""
    return f"xh:rl:{{mb:{tag}}}:issue"


def normalize_destination(
    channel: Channel, raw: str, allowed_country_codes: Sequence[str], field: str = "destination"
) -> str:
    """The normalised destination (E.164 phone or lower-cased email) or InvalidArgument."""
    if len(raw) > _MAX_DESTINATION_CHARS:
        raise InvalidArgument(FieldViolation(field, "is too long"))
    if channel is Channel.SMS:
        return normalize_phone(raw, field=field, allowed_country_codes=allowed_country_codes)
    return normalize_email(raw, field=field)


def normalize_code(raw: object, field: str = "code") -> str:
    """The code as typed, NFKC-normalised (full-width digits) and trimmed, or InvalidArgument."""
    if not isinstance(raw, str) or len(raw) > _MAX_CODE_CHARS:
        raise InvalidArgument(FieldViolation(field, f"must be {CODE_DIGITS} digits"))
    value = normalize(raw)
    if len(value) != CODE_DIGITS or not value.isascii() or not value.isdigit():
        raise InvalidArgument(FieldViolation(field, f"must be {CODE_DIGITS} digits"))
    return value


def _validate_target(
    channel_value: object, destination: object, purpose_value: object, policy: CodePolicy
) -> tuple[Channel | None, str, Purpose | None, list[FieldViolation]]:
    violations: list[FieldViolation] = []
    channel = _parse_enum(Channel, channel_value, "channel", violations)
    purpose = _parse_enum(Purpose, purpose_value, "purpose", violations)
    normalised = ""
    if not isinstance(destination, str) or not destination.strip():
        violations.append(FieldViolation("destination", "must not be empty"))
    elif channel is not None:
        try:
            normalised = normalize_destination(channel, destination, policy.allowed_country_codes)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
    if channel is not None and purpose is not None:
        required = _required_channel(purpose)
        if required is not None and required is not channel:
            violations.append(
                FieldViolation("channel", f"codes for {purpose.value} are sent by {required.value}")
            )
    return channel, normalised, purpose, violations


class CodeService:
    """Issues codes under the send limits and verifies them into single-use tickets."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis | None = None,
        hmac_key: bytes,
        clock: Clock,
        queue: MessageQueue,
        compose: ComposeMessage,
        policy: CodePolicy | None = None,
        random_digits: Callable[[], str] = six_digits,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        recipient_filter: RecipientFilter | None = None,
        metrics: CodeMetrics | None = None,
        audit: AuditSink | None = None,
        store: CodeStore | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        """Wire the service; `store` and `limiter` default to Redis implementations on `redis`."""
        if store is None or limiter is None:
            if redis is None:
                raise ValueError("pass redis, or both store and limiter")
            store = store or RedisCodeStore(redis)
            limiter = limiter or SlidingWindowLimiter(redis, token_bytes=token_bytes)
        self._store = store
        self._queue = queue
        self._compose = compose
        self._digests = CodeDigests(hmac_key)
        self._limiter = limiter
        self._callers = CallerLimits(limiter, self._digests.ip_tag)
        self._clock = clock
        self._policy = policy or CodePolicy()
        self._random_digits = random_digits
        self._token_bytes = token_bytes
        self._recipient_filter = recipient_filter
        self._metrics = metrics
        self._audit = audit

    def __repr__(self) -> str:
        return f"CodeService(policy={self._policy!r})"

    @property
    def policy(self) -> CodePolicy:
        """The limits and lifetimes in force."""
        return self._policy

    def _new_id(self) -> str:
        return base64.urlsafe_b64encode(self._token_bytes(16)).rstrip(b"=").decode("ascii")

    def _new_code(self) -> str:
        code = self._random_digits()
        if len(code) != CODE_DIGITS or not code.isascii() or not code.isdigit():
            raise RuntimeError("the code generator must return 6 ASCII digits")
        return code

    async def issue(
        self, cmd: IssueCodeCommand, *, client_id: str = "", end_user_ip: str | None = None
    ) -> IssuedCode:
        """Send a new code within the limits, or raise InvalidArgument / RateLimited.

        Order: validate (no limit spent on a bad request) → end-user IP window (if
        the IP is known) → client window (if the client is known) → one script on
        the destination (cooldown, hour and day windows, record, replace the code)
        → queue the message. A refusal at any step refunds the windows already
        charged. When the queue is unavailable (or the filter's store is) the
        stored code is deleted and every window refunded: nothing was sent, so
        nothing is counted. Any other failure while queueing deletes the code
        but keeps the charges, since a message may have gone out. The response
        is the same whether or not `recipient_filter` let the message go (B4).
        """
        channel, destination, purpose, violations = _validate_target(
            cmd.channel, cmd.destination, cmd.purpose, self._policy
        )
        if violations or channel is None or purpose is None:
            raise InvalidArgument(violations)
        policy = self._policy
        now = self._clock.now()
        now_ms = int(now * 1000)
        tag = self._digests.destination_tag(channel, destination)
        reservations: list[Reservation] = []
        try:
            reservations = await self._callers.charge(
                "code.issue",
                CallerBudget(policy.per_ip_hour, policy.per_client_minute),
                client_id=client_id,
                end_user_ip=end_user_ip,
                now=now,
            )
            if channel is Channel.EMAIL:
                reservations.append(await self._charge_mailbox(destination, now))
            code = self._new_code()
            code_id = self._new_id()
            await self._store.issue(
                tag,
                purpose.value,
                NewCode(
                    mac=self._digests.code_mac(channel, destination, purpose, code),
                    code_id=code_id,
                    expires_at_ms=now_ms + policy.ttl * 1000,
                ),
                now_ms=now_ms,
                cooldown_ms=policy.cooldown * 1000,
                per_hour=policy.per_destination_hour,
                per_day=policy.per_destination_day,
            )
        except RateLimited as exc:
            await self._callers.release(reservations)
            if self._metrics is not None:
                self._metrics.limit_rejected(exc.policy)
            raise
        except Exception:
            await self._callers.release(reservations)
            raise

        try:
            deliver = True
            if self._recipient_filter is not None:
                deliver = await self._recipient_filter(channel, destination, purpose)
            if deliver:
                text, subject = self._compose(channel.value, purpose.value, code, policy.ttl)
                await self._queue.enqueue(channel.value, destination, purpose.value, text, subject)
            else:
                # The same write as a real message, so the answer takes as long (B4).
                await self._queue.withhold(channel.value, purpose.value)
        except Unavailable:
            # Nothing was queued: forget the code and refund every window.
            await self._cancel(tag, purpose, code_id, refund=True)
            await self._callers.release(reservations)
            raise
        except Exception:
            # Unknown whether anything went out: kill the code but keep the charges.
            await self._cancel(tag, purpose, code_id, refund=False)
            raise

        if self._metrics is not None:
            self._metrics.code_issued(channel.value, purpose.value)
        await self._record("code.issue", tag, "ok")
        return IssuedCode(code_id=code_id, expires_in=policy.ttl, resend_after=policy.cooldown)

    async def verify(
        self, cmd: VerifyCodeCommand, *, client_id: str = "", end_user_ip: str | None = None
    ) -> VerifiedTicket:
        """Check a code; on success consume it and return a single-use ticket.

        Wrong, expired, replaced, used and used-up codes all raise the same
        CodeInvalid, but only a wrong guess at a live code spends the
        destination's failure budget (and is audited): the others need no access
        to the phone (B2). When the budget is spent the answer is
        RateLimited(`code.verify.destination`) until old failures leave the
        window.

        Before the script, after validation (a malformed request spends
        nothing): the end-user IP window `code.verify.ip` (if the IP is known),
        then the client window `code.verify.client` (if the client is known); a
        client refusal refunds the IP charge. Once the script has run, the
        charges stay whatever its outcome, including a refusal by the
        destination's failure budget: that refusal still cost a script, and
        anyone can provoke it, so refunding it would leave such calls unbounded.
        If the script cannot run (Redis unavailable), the charges are refunded.
        """
        channel, destination, purpose, violations = _validate_target(
            cmd.channel, cmd.destination, cmd.purpose, self._policy
        )
        code = ""
        try:
            code = normalize_code(cmd.code)
        except InvalidArgument as exc:
            violations.extend(exc.violations)
        if violations or channel is None or purpose is None:
            raise InvalidArgument(violations)
        policy = self._policy
        now = self._clock.now()
        now_ms = int(now * 1000)
        try:
            reservations = await self._callers.charge(
                "code.verify",
                CallerBudget(policy.verify_per_ip_hour, policy.verify_per_client_minute),
                client_id=client_id,
                end_user_ip=end_user_ip,
                now=now,
            )
        except RateLimited as exc:
            if self._metrics is not None:
                self._metrics.code_verified(
                    channel.value, purpose.value, VerifyOutcome.RATE_LIMITED.value
                )
                self._metrics.limit_rejected(exc.policy)
            raise
        tag = self._digests.destination_tag(channel, destination)
        secret = self._token_bytes(TICKET_SECRET_BYTES)
        ticket = ticket_from_secret(tag, secret)
        hashed = ticket_hash(ticket)
        sealed = seal_destination(
            secret, hashed, destination, self._token_bytes(TICKET_NONCE_BYTES)
        )
        try:
            result = await self._store.verify(
                tag,
                purpose.value,
                self._digests.code_mac(channel, destination, purpose, code),
                TicketToStore(
                    ticket_hash=hashed,
                    channel=channel.value,
                    purpose=purpose.value,
                    sealed_destination=sealed,
                    expires_at_ms=now_ms + policy.ticket_ttl * 1000,
                ),
                now_ms=now_ms,
                max_attempts=policy.max_attempts,
                failure_limit=policy.failures_per_destination_hour,
                failure_member=self._new_id(),
            )
        except Exception:
            await self._callers.release(reservations)
            raise
        if self._metrics is not None:
            self._metrics.code_verified(channel.value, purpose.value, result.outcome.value)
        if result.outcome is VerifyOutcome.OK:
            await self._record("code.verify", tag, "ok")
            return VerifiedTicket(ticket=ticket, expires_in=policy.ticket_ttl)
        if result.outcome is VerifyOutcome.RATE_LIMITED:
            if self._metrics is not None:
                self._metrics.limit_rejected(VERIFY_POLICY)
            raise RateLimited(VERIFY_POLICY, result.retry_after)
        if result.outcome is VerifyOutcome.MISMATCH:
            await self._record("code.verify", tag, "invalid")
        raise CodeInvalid()

    async def _charge_mailbox(self, address: str, now: float) -> Reservation:
        """The send limits of the mailbox behind an address, whatever `+tag` it carries.

        `zhang+1@example.com`, `zhang+2@…` and `zhang@…` are one mailbox, but they are
        three destinations (each code is bound to the address typed), so without this
        window every tag would get the full per-destination budget: an email bomb.
        Same cooldown and windows, refused as the destination's own limit.
        """
        p = self._policy
        windows = [Window(p.per_destination_hour, _HOUR), Window(p.per_destination_day, _DAY)]
        if p.cooldown > 0:
            windows.append(Window(1, p.cooldown))
        tag = self._digests.destination_tag(Channel.EMAIL, mailbox(address))
        return await self._limiter.acquire_windows(ISSUE_POLICY, mailbox_key(tag), windows, now)

    async def _cancel(self, tag: str, purpose: Purpose, code_id: str, *, refund: bool) -> None:
        try:
            await self._store.cancel_issue(tag, purpose.value, code_id, refund=refund)
        except Exception:  # best effort: the code expires by itself
            logger.warning("could not delete an undelivered code")

    async def _record(self, action: str, target: str, outcome: str) -> None:
        await record_quietly(self._audit, action, target, outcome, logger)


class TicketService:
    """Consumes verification tickets for the flow RPCs (register, SMS login, reset, bind...)."""

    def __init__(
        self,
        *,
        redis: aioredis.Redis | None = None,
        hmac_key: bytes,
        clock: Clock,
        policy: CodePolicy | None = None,
        audit: AuditSink | None = None,
        store: TicketStore | None = None,
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

    async def _present(
        self,
        ticket: str,
        purpose: Purpose,
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
            purpose=Purpose(purpose).value,
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
        for candidate in [channel] if channel is not None else list(Channel):
            try:
                normalised = normalize_destination(
                    candidate, destination, self._policy.allowed_country_codes
                )
            except InvalidArgument:
                continue
            tags.add(self._digests.destination_tag(candidate, normalised))
        return tags


__all__ = [
    "CLIENT_POLICY",
    "IP_POLICY",
    "VERIFY_CLIENT_POLICY",
    "VERIFY_IP_POLICY",
    "AuditSink",
    "CodeDigests",
    "CodeMetrics",
    "CodeService",
    "ComposeMessage",
    "MessageQueue",
    "ParsedTicket",
    "RecipientFilter",
    "TicketService",
    "mailbox",
    "mailbox_key",
    "new_ticket",
    "normalize_code",
    "normalize_destination",
    "open_destination",
    "parse_ticket",
    "seal_destination",
    "six_digits",
    "ticket_from_secret",
    "ticket_hash",
]
