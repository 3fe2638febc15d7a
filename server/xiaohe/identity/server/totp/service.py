"""`TotpService`: enrolment, activation, single-use codes and recovery codes of one account.

The service knows nothing of passwords, sessions or the brute-force throttle:
the flows (`flows/totp.py`, `flows/login.py`) check the password, count wrong
codes and open the unit of work; every write here joins it.

Secrets at rest. The base32 secret is sealed under the key ring's active master
key (`DataKeyCipher.seal`, AES-256-GCM) with the account id and the column
(`field_aad(account_id, "totp_secret")`) as associated data: the database file
never holds it in the clear, and a blob copied to another account's row does
not open. A master-key rotation leaves old seals readable while the old key stays
in the ring (it is never removed by the CLI). The secret leaves the server once,
in the EnrollTotp answer, as an otpauth URI and its QR code.
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import segno

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.envelope import field_aad
from xiaohe.identity.server.errors import FailedPrecondition
from xiaohe.identity.server.totp.codes import (
    match_step,
    new_recovery_codes,
    new_secret,
    normalise_recovery_code,
    provisioning_uri,
    recovery_code_hash,
)
from xiaohe.identity.server.totp.repository import FactorStatus, StoredFactor

logger = logging.getLogger(__name__)

SECRET_FIELD = "totp_secret"  # noqa: S105 - the associated-data name of the sealed column
QR_SCALE = 6
"""Pixels per QR module: a 57-module code with its border is about 400 px wide."""


class TotpRepository(Protocol):
    """What the service needs of storage (`repository.SqlTotpRepository`); each method joins
    the caller's unit of work when one is open."""

    async def get(self, account_id: str) -> StoredFactor | None:
        """The account's factor, pending or active, or None."""
        ...

    async def status(self, account_id: str) -> FactorStatus | None:
        """The status of the account's factor, or None (every login asks: no secret read)."""
        ...

    async def put_pending(self, account_id: str, secret_enc: bytes, now: float) -> bool:
        """Store or replace a pending factor; False if an active one exists."""
        ...

    async def activate(
        self, account_id: str, secret_enc: bytes, step: int, code_hashes: Sequence[str], now: float
    ) -> bool:
        """Activate the pending factor sealed as `secret_enc`, with these recovery codes."""
        ...

    async def use_step(self, account_id: str, step: int) -> bool:
        """Accept time step `step` once (only if newer than the last accepted)."""
        ...

    async def use_recovery_code(self, account_id: str, code_hash: str, now: float) -> bool:
        """Spend one unused recovery code."""
        ...

    async def unused_recovery_codes(self, account_id: str) -> int:
        """How many recovery codes are left."""
        ...

    async def delete(self, account_id: str) -> bool:
        """Remove the factor and its recovery codes."""
        ...


class Sealer(Protocol):
    """Sealing under the key ring (`crypto.envelope.DataKeyCipher`)."""

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt under the active master key."""
        ...

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob from `seal`."""
        ...


@dataclass(frozen=True)
class Enrolment:
    """A pending factor as the user's authenticator app needs it (shown once)."""

    otpauth_uri: str = field(repr=False)
    qr_png: bytes = field(repr=False)


class TotpService:
    """One TOTP factor per account: pending until its first code, then active."""

    def __init__(
        self,
        repository: TotpRepository,
        cipher: Sealer,
        clock: Clock,
        *,
        issuer: str,
        recovery_key: bytes,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repository
        self._cipher = cipher
        self._clock = clock
        self._issuer = issuer
        self._recovery_key = recovery_key
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return f"TotpService(issuer={self._issuer!r})"

    async def is_enrolled(self, account_id: str) -> bool:
        """Whether the account has an active (confirmed) factor."""
        return await self._repo.status(account_id) is FactorStatus.ACTIVE

    async def start_enrolment(self, account_id: str, label: str) -> Enrolment:
        """A new pending secret (replacing a pending one); FailedPrecondition if one is active."""
        secret = new_secret(self._token_bytes)
        sealed = self._cipher.seal(secret.encode("ascii"), _aad(account_id))
        if not await self._repo.put_pending(account_id, sealed, self._clock.now()):
            raise FailedPrecondition(
                "two-step verification is already on; disable it before enrolling again"
            )
        uri = provisioning_uri(secret, label=label, issuer=self._issuer)
        return Enrolment(otpauth_uri=uri, qr_png=qr_png(uri))

    async def activate(self, account_id: str, code: str) -> tuple[str, ...] | None:
        """Activate the pending factor if `code` (normalised) is its current code; returns the
        new recovery codes, or None for a wrong code. FailedPrecondition when nothing is pending
        (never enrolled, or already active)."""
        factor = await self._repo.get(account_id)
        if factor is None or factor.status is not FactorStatus.PENDING:
            raise FailedPrecondition("no two-step verification is waiting for confirmation")
        step = match_step(self._secret(factor), code, self._clock.now())
        if step is None:
            return None
        codes = new_recovery_codes(self._token_bytes)
        hashes = [self._recovery_hash(account_id, c) for c in codes]
        if not await self._repo.activate(
            account_id, factor.secret_enc, step, hashes, self._clock.now()
        ):
            return None  # replaced by a new enrolment (or confirmed) meanwhile
        return codes

    async def verify_code(self, account_id: str, code: str) -> bool:
        """Whether `code` (normalised) is a current code of the active factor, accepted now
        for the first time (its time step is then spent: SECURITY D3)."""
        factor = await self._repo.get(account_id)
        if factor is None or factor.status is not FactorStatus.ACTIVE:
            return False
        step = match_step(self._secret(factor), code, self._clock.now())
        if step is None:
            return False
        return await self._repo.use_step(account_id, step)

    async def use_recovery_code(self, account_id: str, code: str) -> bool:
        """Spend one recovery code of the active factor; False if wrong or used."""
        if not await self.is_enrolled(account_id):
            return False
        normalised = normalise_recovery_code(code)
        if normalised is None:
            return False
        return await self._repo.use_recovery_code(
            account_id,
            recovery_code_hash(self._recovery_key, account_id, normalised),
            self._clock.now(),
        )

    async def recovery_codes_left(self, account_id: str) -> int:
        """How many unused recovery codes the account has."""
        return await self._repo.unused_recovery_codes(account_id)

    async def remove(self, account_id: str) -> bool:
        """Remove the factor (pending or active) and its recovery codes; False if none."""
        return await self._repo.delete(account_id)

    def _secret(self, factor: StoredFactor) -> str:
        return self._cipher.open(factor.secret_enc, _aad(factor.account_id)).decode("ascii")

    def _recovery_hash(self, account_id: str, shown: str) -> str:
        normalised = normalise_recovery_code(shown)
        assert normalised is not None  # made by new_recovery_codes
        return recovery_code_hash(self._recovery_key, account_id, normalised)


def qr_png(uri: str) -> bytes:
    """The URI as a QR code (error correction M), PNG bytes."""
    out = io.BytesIO()
    segno.make(uri, error="m", micro=False).save(out, kind="png", scale=QR_SCALE, border=4)
    return out.getvalue()


def _aad(account_id: str) -> bytes:
    return field_aad(account_id, SECRET_FIELD)


__all__ = ["Enrolment", "Sealer", "TotpRepository", "TotpService", "qr_png"]
