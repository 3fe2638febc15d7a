"""Brute-force counters for password login, in Redis Lua (SECURITY.md B1, B2).

Two mechanisms, both keyed on the account and kept in one Redis Cluster slot
(hash tag `{acct:<account_id>}`), every check-and-update one Lua script:

- The account's evaluation budget (B1): a sliding one-hour window of password
  attempts that were *evaluated* (Argon2 ran) and failed. `admit` runs before a
  password is verified and reserves a slot in that window, counted as a failure
  until the attempt's outcome is known. Because check and reservation are one
  script, no interleaving of concurrent requests, across all worker processes,
  lets more than `failures_per_account_hour` failures per hour be evaluated:
  500 simultaneous wrong guesses yield at most 100 Argon2 verifies, the rest are
  refused without evaluation. A full window *is* the account lock: it lasts
  until the oldest failure leaves the window ("the rest of the window"), so it is
  temporary by construction. A reservation whose caller dies before reporting
  stays counted as a failure, which errs on the safe side.
- The (account, IP) lock (B2): failures from one IP against one account within
  15 minutes; the `failures_per_account_ip`-th locks that pair for
  `lock_base * 2**n` seconds, where n is the number of earlier locks of the pair
  in the last 24 hours, capped at `lock_max`. Locks escalate but are never
  permanent. The counter restarts after each lock.

What a success clears, and why. `record_success` (a right password) and `clear`
(an SMS-code login) disregard the failures *from the same IP*: the pair's
counter, its lock, its escalation history, and that IP's failures in the
account's hourly window. That is NIST SP 800-63B §5.2.2 ("when the subscriber
successfully authenticates, the verifier SHOULD disregard any previous failed
attempts for that user from the same IP address") and B2's "a success clears
the failure count" for the owner's own typing mistakes. Failures from *other*
IPs stay in the hourly window, so the owner logging in never hands a
distributed attacker a fresh budget of 100 guesses: B1 holds literally, for
every hour, whatever the owner does. In-flight reservations are never cleared.

Privacy: an IP never appears in Redis. It is reduced to the unit one user sits
behind (the IPv4 address, or the IPv6 /64) and replaced by a keyed HMAC
(`shared.pseudonyms` under `ip_key`; unkeyed SHA-256 when none is configured,
which a determined reader of Redis could reverse for IPv4 by enumeration). An
empty IP counts as `-`.

Time comes from the injected clock (ms passed to the scripts); key expiry is
only garbage collection. Redis errors become `errors.Unavailable` (fail closed:
no password is evaluated without its attempt being counted).
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.ratelimit.scripts import GC_GRACE_MS, SLIDING_WINDOW_LUA
from xiaohe.identity.server.shared.network import ip_bucket
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms
from xiaohe.identity.server.storage.redis import RedisClient, run_script

ACCOUNT_WINDOW_SECONDS: Final = 3600
PAIR_WINDOW_SECONDS: Final = 900
ESCALATION_WINDOW_SECONDS: Final = 86400
EMPTY_IP: Final = "-"
_IP_TAG_LABEL: Final = "xh.login.ip.v1"
"""The `Pseudonyms` label of an end-user IP in this module's keys and members."""
_IP_TAG_BYTES: Final = 16

_SUBJECT = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_RESERVATION = re.compile(r"[A-Za-z0-9_-]{16}")
_RESERVATION_BYTES: Final = 12

# KEYS: 1 account window, 2 pair lock.
# ARGV: 1 now, 2 pending member, 3 limit, 4 window ms, 5 grace ms.
# Returns {1} (slot reserved) or {0, 1 | 2, retry ms}: 1 the pair is locked, 2 the window is full.
_ADMIT_LUA = (
    SLIDING_WINDOW_LUA
    + r"""
local now = tonumber(ARGV[1])
local locked_until = tonumber(redis.call('GET', KEYS[2]) or '0')
if locked_until > now then
  return {0, 1, locked_until - now}
end
local window = tonumber(ARGV[4])
sw_trim(KEYS[1], now, window)
local retry = sw_retry(KEYS[1], now, tonumber(ARGV[3]), window)
if retry > 0 then
  return {0, 2, retry}
end
sw_record(KEYS[1], now, ARGV[2], window, tonumber(ARGV[5]))
return {1}
"""
)

# KEYS: 1 account window, 2 pair failures, 3 pair lock history, 4 pair lock.
# ARGV: 1 now, 2 pending member, 3 failed member, 4 reservation id, 5 account window ms,
#       6 account limit, 7 pair limit, 8 pair window ms, 9 lock base ms, 10 lock max ms,
#       11 history window ms, 12 grace ms.
# Returns {lock ms (0: no new lock), 1 if the account window is full else 0}.
_FAILURE_LUA = (
    SLIDING_WINDOW_LUA
    + r"""
local now = tonumber(ARGV[1])
local grace = tonumber(ARGV[12])
local account_window = tonumber(ARGV[5])
-- The reserved slot becomes a failure, at the time it was reserved.
local at = redis.call('ZSCORE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
if at then
  at = tonumber(at)
else
  at = now
end
sw_trim(KEYS[1], now, account_window)
sw_record(KEYS[1], at, ARGV[3], account_window, grace)
local full = 0
if redis.call('ZCOUNT', KEYS[1], '(' .. sw_ms(now - account_window), '+inf')
    >= tonumber(ARGV[6]) then
  full = 1
end
-- The pair's failures in its own window.
local pair_window = tonumber(ARGV[8])
sw_trim(KEYS[2], now, pair_window)
sw_record(KEYS[2], now, ARGV[4], pair_window, grace)
if redis.call('ZCARD', KEYS[2]) < tonumber(ARGV[7]) then
  return {0, full}
end
-- Lock the pair: base * 2^(locks in the last 24 h), capped; the count restarts.
local history = tonumber(ARGV[11])
sw_trim(KEYS[3], now, history)
local earlier = redis.call('ZCARD', KEYS[3])
local duration = tonumber(ARGV[9])
local cap = tonumber(ARGV[10])
local i = 0
while i < earlier and duration < cap do
  duration = duration * 2
  i = i + 1
end
if duration > cap then
  duration = cap
end
local locked_until = now + duration
local current = tonumber(redis.call('GET', KEYS[4]) or '0')
if current > locked_until then
  locked_until = current
end
redis.call('SET', KEYS[4], sw_ms(locked_until), 'PX', sw_ms(locked_until - now + grace))
sw_record(KEYS[3], now, ARGV[4], history, grace)
redis.call('DEL', KEYS[2])
return {duration, full}
"""
)

# KEYS: 1 account window, 2 pair failures, 3 pair lock history, 4 pair lock.
# ARGV: 1 now, 2 pending member ('' for none), 3 prefix of this IP's failures, 4 window ms.
_CLEAR_LUA = (
    SLIDING_WINDOW_LUA
    + r"""
local now = tonumber(ARGV[1])
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[1], ARGV[2])
end
sw_trim(KEYS[1], now, tonumber(ARGV[4]))
local prefix = ARGV[3]
local members = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, member in ipairs(members) do
  if string.sub(member, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[1], member)
  end
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return 1
"""
)

# KEYS[1] account window; ARGV[1] pending member.
_RELEASE_LUA = r"""
return redis.call('ZREM', KEYS[1], ARGV[1])
"""

# KEYS: the keys `_FAILURE_LUA` reads. Reads them and changes nothing.
_TOUCH_LUA = r"""
return redis.call('EXISTS', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
"""


@dataclass(frozen=True)
class LockoutPolicy:
    """Limits of password failures (defaults from ARCHITECTURE.md and SECURITY.md B1/B2)."""

    failures_per_account_hour: int = 100
    failures_per_account_ip: int = 10
    lock_base_seconds: int = 60
    lock_max_seconds: int = 3600
    account_window_seconds: int = ACCOUNT_WINDOW_SECONDS
    pair_window_seconds: int = PAIR_WINDOW_SECONDS
    escalation_window_seconds: int = ESCALATION_WINDOW_SECONDS

    def __post_init__(self) -> None:
        if self.failures_per_account_hour < 1 or self.failures_per_account_ip < 1:
            raise ValueError("failure limits must be at least 1")
        if not 0 < self.lock_base_seconds <= self.lock_max_seconds:
            raise ValueError("lock_base_seconds must be positive and at most lock_max_seconds")
        windows = (
            self.account_window_seconds,
            self.pair_window_seconds,
            self.escalation_window_seconds,
        )
        if min(windows) <= 0:
            raise ValueError("windows must be positive")


class Refusal(StrEnum):
    """Why `admit` refused; the values are the audit and metric outcomes."""

    PAIR_LOCKED = "locked"
    ACCOUNT_LIMIT = "rate_limited"


@dataclass(frozen=True)
class Admission:
    """The answer of `admit`: a reservation to report back, or a refusal and its remaining time."""

    reservation: str = ""
    refusal: Refusal | None = None
    retry_after: float = 0.0

    @property
    def admitted(self) -> bool:
        """Whether the password may be evaluated."""
        return self.refusal is None


@dataclass(frozen=True)
class FailureOutcome:
    """What one recorded failure caused: a new (account, IP) lock and/or a full hourly window."""

    locked_for: float
    account_full: bool


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class LoginThrottle:
    """Counts password failures per account and per (account, IP); see the module docstring."""

    def __init__(
        self,
        redis: RedisClient,
        clock: Clock,
        policy: LockoutPolicy | None = None,
        *,
        ip_key: bytes = b"",
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._clock = clock
        self._policy = policy if policy is not None else LockoutPolicy()
        self._ip_pseudonyms = Pseudonyms(ip_key) if ip_key else None
        self._token_bytes = token_bytes
        self._admit = redis.register_script(_ADMIT_LUA)
        self._failure = redis.register_script(_FAILURE_LUA)
        self._clear = redis.register_script(_CLEAR_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._touch = redis.register_script(_TOUCH_LUA)

    def __repr__(self) -> str:
        return f"LoginThrottle({self._policy!r})"

    @property
    def policy(self) -> LockoutPolicy:
        """The limits in force."""
        return self._policy

    def ip_tag(self, ip: str) -> str:
        """The pseudonym of an end-user IP in keys and members (never the IP itself)."""
        unit = ip_bucket(ip) if ip.strip() else EMPTY_IP
        if self._ip_pseudonyms is not None:
            return self._ip_pseudonyms.tag(_IP_TAG_LABEL, unit, size=_IP_TAG_BYTES)
        # Unkeyed fallback: the same message as `Pseudonyms.tag`, plainly hashed.
        message = f"{_IP_TAG_LABEL}\x00{unit}".encode("utf-8", "surrogatepass")
        return hashlib.sha256(message).digest()[:_IP_TAG_BYTES].hex()

    async def admit(self, account_id: str, ip: str) -> Admission:
        """Reserve one evaluation before a password is verified, or refuse (locked / budget spent).

        Raises errors.Unavailable when Redis cannot answer: nothing is evaluated then.
        """
        keys = self._keys(account_id, self.ip_tag(ip))
        reservation = base64.urlsafe_b64encode(self._token_bytes(_RESERVATION_BYTES)).decode(
            "ascii"
        )
        reply = await run_script(
            self._admit,
            [keys.window, keys.lock],
            [
                _ms(self._clock.now()),
                keys.pending(reservation),
                self._policy.failures_per_account_hour,
                _ms(self._policy.account_window_seconds),
                GC_GRACE_MS,
            ],
        )
        if int(reply[0]) == 1:
            return Admission(reservation=reservation)
        refusal = Refusal.PAIR_LOCKED if int(reply[1]) == 1 else Refusal.ACCOUNT_LIMIT
        return Admission(refusal=refusal, retry_after=int(reply[2]) / 1000)

    async def record_failure(self, account_id: str, ip: str, reservation: str) -> FailureOutcome:
        """Keep the reserved slot as a failure; lock the (account, IP) pair at its threshold."""
        keys = self._keys(account_id, self.ip_tag(ip))
        rid = _check_reservation(reservation)
        p = self._policy
        reply = await run_script(
            self._failure,
            [keys.window, keys.failures, keys.history, keys.lock],
            [
                _ms(self._clock.now()),
                keys.pending(rid),
                keys.failed(rid),
                rid,
                _ms(p.account_window_seconds),
                p.failures_per_account_hour,
                p.failures_per_account_ip,
                _ms(p.pair_window_seconds),
                _ms(p.lock_base_seconds),
                _ms(p.lock_max_seconds),
                _ms(p.escalation_window_seconds),
                GC_GRACE_MS,
            ],
        )
        return FailureOutcome(locked_for=int(reply[0]) / 1000, account_full=int(reply[1]) == 1)

    async def record_success(self, account_id: str, ip: str, reservation: str) -> None:
        """Free the reserved slot and disregard this IP's failures, lock and escalation history."""
        await self._run_clear(account_id, ip, _check_reservation(reservation))

    async def clear(self, account_id: str, ip: str) -> None:
        """After a login by another factor (SMS code): disregard this IP's failures and lock."""
        await self._run_clear(account_id, ip, None)

    async def release(self, account_id: str, ip: str, reservation: str) -> None:
        """Refund a reservation whose password was never evaluated (e.g. the hasher was full)."""
        keys = self._keys(account_id, self.ip_tag(ip))
        await run_script(
            self._release, [keys.window], [keys.pending(_check_reservation(reservation))]
        )

    async def touch(self, account_id: str, ip: str) -> None:
        """One round trip over the keys `record_failure` uses, changing nothing (B3).

        A refused attempt makes it after its dummy verify, so that a refusal (a
        locked pair, a spent hourly budget, the full window of the shared
        pseudo-account of unknown identifiers) costs what a wrong password costs:
        one Argon2 verify and two scripts.
        """
        keys = self._keys(account_id, self.ip_tag(ip))
        await run_script(self._touch, [keys.window, keys.failures, keys.history, keys.lock], [])

    async def _run_clear(self, account_id: str, ip: str, reservation: str | None) -> None:
        keys = self._keys(account_id, self.ip_tag(ip))
        await run_script(
            self._clear,
            [keys.window, keys.failures, keys.history, keys.lock],
            [
                _ms(self._clock.now()),
                keys.pending(reservation) if reservation is not None else "",
                keys.failed_prefix,
                _ms(self._policy.account_window_seconds),
            ],
        )

    @staticmethod
    def _keys(account_id: str, ip_tag: str) -> _Keys:
        if not _SUBJECT.fullmatch(account_id):
            raise ValueError("account id has an unexpected shape")
        return _Keys(prefix=f"xh:login:{{acct:{account_id}}}", ip_tag=ip_tag)


@dataclass(frozen=True)
class _Keys:
    """Keys and members of one (account, IP); all share the account's hash tag."""

    prefix: str
    ip_tag: str

    @property
    def window(self) -> str:
        return f"{self.prefix}:window"

    @property
    def failures(self) -> str:
        return f"{self.prefix}:pf:{self.ip_tag}"

    @property
    def history(self) -> str:
        return f"{self.prefix}:ph:{self.ip_tag}"

    @property
    def lock(self) -> str:
        return f"{self.prefix}:pl:{self.ip_tag}"

    @property
    def failed_prefix(self) -> str:
        return f"f:{self.ip_tag}:"

    def pending(self, reservation: str) -> str:
        return f"p:{self.ip_tag}:{reservation}"

    def failed(self, reservation: str) -> str:
        return f"{self.failed_prefix}{reservation}"


def _check_reservation(reservation: str) -> str:
    if not _RESERVATION.fullmatch(reservation):
        raise ValueError("not a reservation returned by admit")
    return reservation


__all__ = [
    "ACCOUNT_WINDOW_SECONDS",
    "ESCALATION_WINDOW_SECONDS",
    "PAIR_WINDOW_SECONDS",
    "Admission",
    "FailureOutcome",
    "LockoutPolicy",
    "LoginThrottle",
    "Refusal",
]
