"""Re-authentication by password, for flows that change an account (SECURITY.md B1–B3).

Changing the password, binding a phone or removing an email asks for the
current password. A wrong one must cost an attacker exactly what a wrong
password at login costs, or these flows would be a side door around the
brute-force limits: so the check runs through the same throttle (the account's
hourly budget and the (account, IP) lock), a refused attempt still spends one
Argon2 verify, and a right one clears this IP's failures like a login does.
"""

from __future__ import annotations

from typing import Protocol

from xiaohe.identity.server.credentials.lockout import Admission, FailureOutcome
from xiaohe.identity.server.errors import InvalidCredentials, Overloaded


class Hasher(Protocol):
    """Argon2id off the event loop (`hasher.PasswordHasher`)."""

    async def verify(self, hash: str, password: str) -> bool:
        """Whether `password` matches `hash`."""
        ...

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of one verify."""
        ...


class Throttle(Protocol):
    """Brute-force counters (`lockout.LoginThrottle`)."""

    async def admit(self, account_id: str, ip: str) -> Admission:
        """Reserve one evaluation or refuse."""
        ...

    async def record_failure(self, account_id: str, ip: str, reservation: str) -> FailureOutcome:
        """Keep the reservation as a failure."""
        ...

    async def record_success(self, account_id: str, ip: str, reservation: str) -> None:
        """Free the reservation and clear this IP's failures."""
        ...

    async def release(self, account_id: str, ip: str, reservation: str) -> None:
        """Refund a reservation that was never evaluated."""
        ...

    async def touch(self, account_id: str, ip: str) -> None:
        """Cost what `record_failure` costs, changing nothing."""
        ...

    async def clear(self, account_id: str, ip: str) -> None:
        """Forget this IP's failures and lock (a success by another way in: B2)."""
        ...


class PasswordCheck:
    """Verifies the password of a known account under the login throttle."""

    def __init__(self, hasher: Hasher, throttle: Throttle) -> None:
        self._hasher = hasher
        self._throttle = throttle

    async def verify(self, account_id: str, password_hash: str, password: str, ip: str) -> None:
        """Return if `password` is the account's; InvalidCredentials otherwise (or when locked).

        Overloaded (hashing queue full) refunds the attempt. Unavailable (Redis)
        evaluates nothing: no password is checked without being counted.
        """
        admission = await self._throttle.admit(account_id, ip)
        if admission.refusal is not None:
            await self._hasher.dummy_verify(password)
            await self._throttle.touch(account_id, ip)
            raise InvalidCredentials()
        try:
            if password_hash.startswith("$argon2"):
                right = await self._hasher.verify(password_hash, password)
            else:
                await self._hasher.dummy_verify(password)
                right = False
        except Overloaded:
            await self._throttle.release(account_id, ip, admission.reservation)
            raise
        if not right:
            await self._throttle.record_failure(account_id, ip, admission.reservation)
            raise InvalidCredentials()
        await self._throttle.record_success(account_id, ip, admission.reservation)


__all__ = ["PasswordCheck"]
