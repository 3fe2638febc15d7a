"""MFA tickets: the state between a first factor and `AuthService.CompleteMfa`.

A login whose account has an active TOTP factor gets no session; it gets an MFA
ticket `mt1.<43 base64url characters>` (256 random bits). Redis keeps, under
the SHA-256 of the ticket only (a Redis dump or replica holds no usable
ticket), a hash with what the ticket is bound to: the account, the first
factor's method (`pwd` or `sms`), the API client, the audience the session
will be for, and whether a password first factor was long enough for an
operator (SECURITY P5; `credentials/operators.py`). It lives `ttl` seconds
(default 300), in one key whose hash tag is the ticket hash, so every script
below runs unchanged on Redis Cluster.

- `check` counts a presentation and returns the binding: one script increments
  the ticket's attempts and, past `max_attempts` (default 5), deletes it, so a
  ticket cannot be used to try more codes than a login's worth, whatever the
  brute-force throttle still allows.
- `consume` deletes it; exactly one caller sees the deletion (DEL returns 1), so
  a ticket makes at most one session.

Redis errors become `errors.Unavailable`: nothing is accepted without Redis.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from xiaohe.identity.server.storage.redis import RedisClient, run_script, text

TICKET_PREFIX: Final = "mt1."
TICKET_BYTES: Final = 32
_TICKET_SHAPE = re.compile(r"mt1\.[A-Za-z0-9_-]{43}")

# KEYS[1] ticket. ARGV: 1 account, 2 method, 3 client, 4 audience, 5 ttl ms, 6 long password.
_ISSUE_LUA = r"""
redis.call('HSET', KEYS[1], 'account', ARGV[1], 'method', ARGV[2], 'client', ARGV[3],
  'audience', ARGV[4], 'long_pwd', ARGV[6], 'attempts', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS[1] ticket. ARGV[1] max attempts. Returns {} (unknown, expired or used up) or the fields.
_CHECK_LUA = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > tonumber(ARGV[1]) then
  redis.call('DEL', KEYS[1])
  return {}
end
return redis.call('HMGET', KEYS[1], 'account', 'method', 'client', 'audience', 'long_pwd')
"""

# KEYS[1] ticket. Returns 1 for the one caller that deleted it.
_CONSUME_LUA = r"""
return redis.call('DEL', KEYS[1])
"""


@dataclass(frozen=True)
class MfaBinding:
    """What an MFA ticket is bound to."""

    account_id: str
    method: str
    client_id: str
    audience: str
    long_password: bool = False
    """A `pwd` first factor of at least an operator's length (P5); a ticket issued before
    this field existed reads as False, so a role holder holding one signs in again."""


@dataclass(frozen=True)
class IssuedMfaTicket:
    """A new ticket for the client (shown once) and its lifetime in seconds."""

    ticket: str
    expires_in: int

    def __repr__(self) -> str:
        return f"IssuedMfaTicket(expires_in={self.expires_in})"


def well_formed(ticket: str) -> bool:
    """Whether `ticket` has the shape of an MFA ticket."""
    return _TICKET_SHAPE.fullmatch(ticket) is not None


class MfaTickets:
    """Issues, checks and consumes MFA tickets in Redis (see the module docstring)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        ttl_seconds: int = 300,
        max_attempts: int = 5,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if ttl_seconds < 1 or max_attempts < 1:
            raise ValueError("ttl_seconds and max_attempts must be at least 1")
        self._redis = redis
        self._ttl = ttl_seconds
        self._max_attempts = max_attempts
        self._token_bytes = token_bytes
        self._issue = redis.register_script(_ISSUE_LUA)
        self._check = redis.register_script(_CHECK_LUA)
        self._consume = redis.register_script(_CONSUME_LUA)

    def __repr__(self) -> str:
        return f"MfaTickets(ttl_seconds={self._ttl}, max_attempts={self._max_attempts})"

    async def issue(self, binding: MfaBinding) -> IssuedMfaTicket:
        """A new ticket bound to `binding`."""
        raw = base64.urlsafe_b64encode(self._token_bytes(TICKET_BYTES)).decode("ascii")
        ticket = TICKET_PREFIX + raw.rstrip("=")
        await run_script(
            self._issue,
            [_key(ticket)],
            [
                binding.account_id,
                binding.method,
                binding.client_id,
                binding.audience,
                self._ttl * 1000,
                "1" if binding.long_password else "0",
            ],
        )
        return IssuedMfaTicket(ticket=ticket, expires_in=self._ttl)

    async def check(self, ticket: str) -> MfaBinding | None:
        """Count one presentation; the binding, or None (unknown, expired, used, used up)."""
        if not well_formed(ticket):
            return None
        reply = await run_script(self._check, [_key(ticket)], [self._max_attempts])
        if not reply or len(reply) != 5 or any(v is None for v in reply[:4]):
            return None
        account, method, client, audience = (text(v) for v in reply[:4])
        return MfaBinding(
            account_id=account,
            method=method,
            client_id=client,
            audience=audience,
            long_password=reply[4] is not None and text(reply[4]) == "1",
        )

    async def consume(self, ticket: str) -> bool:
        """Delete the ticket; True for exactly one caller."""
        if not well_formed(ticket):
            return False
        return int(await run_script(self._consume, [_key(ticket)], [])) == 1


def _key(ticket: str) -> str:
    digest = hashlib.sha256(ticket.encode("ascii")).hexdigest()
    return f"xh:mfa:{{{digest}}}"


__all__ = ["IssuedMfaTicket", "MfaBinding", "MfaTickets", "well_formed"]
