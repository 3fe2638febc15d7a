"""Issue and verify one-time codes; a verified code yields a ticket (consumed in codes/tickets.py).

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
  Redis holds just the SHA-256 of the ticket (I1, see `tickets.seal_destination`).
- Redis unreachable → `Unavailable`: nothing is sent and nothing is accepted.
- SMS pumping (X3): an SMS destination in a denied range is refused, and its
  number prefix's budget, its budgeted ranges' budgets and the prefix's
  conversion watch are checked in the same script as the destination's windows
  (`ratelimit/pumping.py`); a successful verification counts for the prefix in
  the verify script. Every such refusal is a `RateLimited` with the
  destination's own policy name (`code.issue.destination`) and a retry-after,
  indistinguishable from an ordinary limit; only metrics name the real cause.
  It comes before the recipient filter, so unregistered numbers are counted
  and refused exactly like registered ones (B4).

Audit: `code.issue` ok, `code.verify` ok / invalid (a wrong guess at a live code,
bounded by the failure budget), `ticket.consume` ok / invalid. Refusals by a rate
limit, and verifications that found no live code (which no budget bounds, since
anyone may send them), are counted in metrics only: under a bombing burst an
audit row per request would turn the attack onto the hash-chained, serialised log.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.destinations import (
    mailbox,
    mailbox_key,
    normalize_code,
    validate_target,
)
from xiaohe.identity.server.codes.digests import CODE_DIGITS, CodeDigests, six_digits
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    IssuedCode,
    Purpose,
    VerifiedTicket,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.store import (
    ISSUE_POLICY,
    VERIFY_POLICY,
    CodeStore,
    NewCode,
    RedisCodeStore,
    VerifyOutcome,
)
from xiaohe.identity.server.codes.tickets import mint_ticket
from xiaohe.identity.server.errors import CodeInvalid, InvalidArgument, RateLimited, Unavailable
from xiaohe.identity.server.ratelimit.callers import HOUR, CallerBudget, CallerLimits
from xiaohe.identity.server.ratelimit.limiter import (
    RateLimiter,
    Reservation,
    SlidingWindowLimiter,
    Window,
)
from xiaohe.identity.server.ratelimit.prefixes import PumpingPolicy
from xiaohe.identity.server.ratelimit.pumping import (
    DENIED_RETRY_SECONDS,
    RANGE_DENIED_POLICY,
    PrefixBlock,
    PrefixCheck,
    PumpingLimited,
)
from xiaohe.identity.server.storage.redis import RedisClient

logger = logging.getLogger(__name__)

VERIFY_IP_POLICY = "code.verify.ip"
VERIFY_CLIENT_POLICY = "code.verify.client"

_DAY = 86400.0


class MessageQueue(Protocol):
    """The delivery outbox: queues one message for a provider."""

    async def enqueue(
        self,
        channel: str,
        destination: str,
        purpose: str,
        text: str,
        subject: str = "",
        *,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """Queue the message (an email with its subject) and return its id; raise
        errors.Unavailable if nothing was queued. `params` are the variables of a
        platform's template: a code message passes `{"code": code}`."""
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


class BlockEvents(Protocol):
    """Told when an issue tripped the conversion watch (`ratelimit.pumping.BlockReporter`)."""

    def prefix_blocked(self, block: PrefixBlock) -> None:
        """A prefix was just throttled."""
        ...


RecipientFilter = Callable[[Channel, str, Purpose], Awaitable[bool]]
"""Whether to actually send a code to (channel, normalised destination, purpose)."""

ComposeMessage = Callable[[str, str, str, int], tuple[str, str]]
"""(channel, purpose, code, ttl seconds) → the message text and, for an email, its subject."""


class CodeService:
    """Issues codes under the send limits and verifies them into single-use tickets."""

    def __init__(
        self,
        *,
        redis: RedisClient | None = None,
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
        pumping: PumpingPolicy | None = None,
        block_events: BlockEvents | None = None,
    ) -> None:
        """Wire the service; `store` and `limiter` default to Redis implementations on `redis`.

        Without `pumping` no prefix or range limit applies (tests of other
        limits); the container always passes the configured policy.
        """
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
        self._pumping = pumping
        self._block_events = block_events

    def __repr__(self) -> str:
        return f"CodeService(policy={self._policy!r})"

    @property
    def policy(self) -> CodePolicy:
        """The limits and lifetimes in force."""
        return self._policy

    def _prefix_check(self, channel: Channel, destination: str) -> PrefixCheck | None:
        """The SMS-pumping scope of a normalised destination (None for email or no policy)."""
        if self._pumping is None or channel is not Channel.SMS:
            return None
        scope = self._pumping.scope(destination)
        return None if scope is None else PrefixCheck(scope, self._pumping)

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
        channel, destination, purpose, violations = validate_target(
            cmd.channel, cmd.destination, cmd.purpose, self._policy
        )
        if violations or channel is None or purpose is None:
            raise InvalidArgument(violations)
        policy = self._policy
        now = self._clock.now()
        now_ms = int(now * 1000)
        tag = self._digests.destination_tag(channel, destination)
        prefix = self._prefix_check(channel, destination)
        reservations: list[Reservation] = []
        try:
            reservations = await self._callers.charge(
                "code.issue",
                CallerBudget(policy.per_ip_hour, policy.per_client_minute),
                client_id=client_id,
                end_user_ip=end_user_ip,
                now=now,
            )
            if prefix is not None and prefix.scope.denied:
                # After the caller windows, so it is refunded and timed like any refusal.
                raise PumpingLimited(ISSUE_POLICY, RANGE_DENIED_POLICY, DENIED_RETRY_SECONDS)
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
                prefix=prefix,
            )
        except RateLimited as exc:
            await self._callers.release(reservations)
            self._refused(exc)
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
                await self._queue.enqueue(
                    channel.value, destination, purpose.value, text, subject, params={"code": code}
                )
            else:
                # The same write as a real message, so the answer takes as long (B4).
                await self._queue.withhold(channel.value, purpose.value)
        except Unavailable:
            # Nothing was queued: forget the code and refund every window.
            await self._cancel(tag, purpose, code_id, refund=True, prefix=prefix)
            await self._callers.release(reservations)
            raise
        except Exception:
            # Unknown whether anything went out: kill the code but keep the charges.
            await self._cancel(tag, purpose, code_id, refund=False, prefix=prefix)
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
        channel, destination, purpose, violations = validate_target(
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
        ticket, to_store = mint_ticket(
            tag,
            channel,
            purpose,
            destination,
            expires_at_ms=now_ms + policy.ticket_ttl * 1000,
            token_bytes=self._token_bytes,
        )
        try:
            result = await self._store.verify(
                tag,
                purpose.value,
                self._digests.code_mac(channel, destination, purpose, code),
                to_store,
                now_ms=now_ms,
                max_attempts=policy.max_attempts,
                failure_limit=policy.failures_per_destination_hour,
                failure_member=self._new_id(),
                prefix=self._prefix_check(channel, destination),
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
        windows = [Window(p.per_destination_hour, HOUR), Window(p.per_destination_day, _DAY)]
        if p.cooldown > 0:
            windows.append(Window(1, p.cooldown))
        tag = self._digests.destination_tag(Channel.EMAIL, mailbox(address))
        return await self._limiter.acquire_windows(ISSUE_POLICY, mailbox_key(tag), windows, now)

    def _refused(self, exc: RateLimited) -> None:
        """Count a refusal under its real cause, and report a block this request tripped."""
        if isinstance(exc, PumpingLimited):
            if exc.new_block is not None and self._block_events is not None:
                self._block_events.prefix_blocked(exc.new_block)
            if self._metrics is not None:
                self._metrics.limit_rejected(exc.cause)
        elif self._metrics is not None:
            self._metrics.limit_rejected(exc.policy)

    async def _cancel(
        self,
        tag: str,
        purpose: Purpose,
        code_id: str,
        *,
        refund: bool,
        prefix: PrefixCheck | None,
    ) -> None:
        try:
            await self._store.cancel_issue(
                tag, purpose.value, code_id, refund=refund, prefix=prefix
            )
        except Exception:  # best effort: the code expires by itself
            logger.warning("could not delete an undelivered code")

    async def _record(self, action: str, target: str, outcome: str) -> None:
        await record_quietly(self._audit, action, target, outcome, logger)


__all__ = [
    "VERIFY_CLIENT_POLICY",
    "VERIFY_IP_POLICY",
    "BlockEvents",
    "CodeMetrics",
    "CodeService",
    "ComposeMessage",
    "MessageQueue",
    "RecipientFilter",
]
