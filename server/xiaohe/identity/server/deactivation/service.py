"""Pending deactivations as flows use them: the rows, their pending keys, and the crypto.

`prepare` makes a pending key and stores it sealed in Redis (`pending_keys`);
`record` keeps the account's data key encrypted under it in `deactivations`
(joining the unit of work); `recover_data_key` opens it again while the pending
key exists; `destroy_key` deletes the pending key, after which no copy of the
row can be opened by anyone (module docstring of `pending_keys`).
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Final

from xiaohe.identity.server.crypto.envelope import DataKeyCipher, DecryptionError, field_aad
from xiaohe.identity.server.deactivation.models import PendingDeactivation
from xiaohe.identity.server.deactivation.pending_keys import PendingKeys
from xiaohe.identity.server.deactivation.repository import SqlDeactivations

logger = logging.getLogger(__name__)

PENDING_KEY_BYTES: Final = 32
PENDING_KEY_AAD: Final = "deactivation_pending_key"
DATA_KEY_AAD: Final = "deactivation_data_key"
CASE_KEYS_AAD: Final = "deactivation_case_keys"
"""Associated data (with the account id, `field_aad`) of the sealed pending key and of the
data key and case keys encrypted under it."""


class DeactivationRecords:
    """The `deactivations` rows and their pending keys."""

    def __init__(
        self,
        repository: SqlDeactivations,
        pending_keys: PendingKeys,
        cipher: DataKeyCipher,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._repo = repository
        self._keys = pending_keys
        self._cipher = cipher
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return "DeactivationRecords()"

    async def prepare(self, account_id: str, ttl_seconds: int) -> bytes:
        """A new pending key for the account, stored sealed in Redis for `ttl_seconds`
        (before the unit of work that uses it: if that fails, the key just expires)."""
        key = self._token_bytes(PENDING_KEY_BYTES)
        if len(key) != PENDING_KEY_BYTES:
            raise ValueError("the randomness source returned the wrong number of bytes")
        sealed = self._cipher.seal(key, field_aad(account_id, PENDING_KEY_AAD))
        await self._keys.put(account_id, sealed, ttl_seconds)
        return key

    async def record(
        self,
        account_id: str,
        *,
        data_key: bytes,
        pending_key: bytes,
        requested_at: float,
        due_at: float,
        case_keys: Mapping[str, bytes] | None = None,
    ) -> None:
        """Keep the data key (and the account's review case keys) encrypted under the pending
        key, with the due time (in the unit of work)."""
        sealed_cases = None
        if case_keys:
            plain = json.dumps(
                {
                    case_id: base64.b64encode(key).decode("ascii")
                    for case_id, key in case_keys.items()
                },
                sort_keys=True,
            ).encode("ascii")
            sealed_cases = self._cipher.encrypt_bytes(
                pending_key, plain, field_aad(account_id, CASE_KEYS_AAD)
            )
        await self._repo.insert(
            PendingDeactivation(
                account_id=account_id,
                requested_at=requested_at,
                due_at=due_at,
                data_key_pending=self._cipher.encrypt_bytes(
                    pending_key, data_key, field_aad(account_id, DATA_KEY_AAD)
                ),
                case_keys_pending=sealed_cases,
            )
        )

    async def get(self, account_id: str) -> PendingDeactivation | None:
        """The account's pending deactivation, or None."""
        return await self._repo.get(account_id)

    async def due(self, now: float, limit: int) -> list[str]:
        """Up to `limit` accounts whose cooling-off period has ended by `now`."""
        return await self._repo.due(now, limit)

    async def forget(self, account_id: str) -> bool:
        """Delete the account's row (in the unit of work)."""
        return await self._repo.delete(account_id)

    async def recover_data_key(self, pending: PendingDeactivation) -> bytes | None:
        """The data key a row holds, opened with its pending key from Redis and the key ring;
        None once the pending key is gone (then nothing can open it)."""
        sealed = await self._keys.get(pending.account_id)
        if sealed is None:
            return None
        try:
            pending_key = self._cipher.open(sealed, field_aad(pending.account_id, PENDING_KEY_AAD))
            return self._cipher.decrypt_bytes(
                pending_key, pending.data_key_pending, field_aad(pending.account_id, DATA_KEY_AAD)
            )
        except DecryptionError:
            logger.error("cannot open the pending data key of account %s", pending.account_id)
            return None

    async def recover_case_keys(self, pending: PendingDeactivation) -> dict[str, bytes] | None:
        """The review case keys a row holds, by case id ({} if none); None once the pending key
        is gone."""
        if pending.case_keys_pending is None:
            return {}
        sealed = await self._keys.get(pending.account_id)
        if sealed is None:
            return None
        try:
            pending_key = self._cipher.open(sealed, field_aad(pending.account_id, PENDING_KEY_AAD))
            plain = self._cipher.decrypt_bytes(
                pending_key, pending.case_keys_pending, field_aad(pending.account_id, CASE_KEYS_AAD)
            )
        except DecryptionError:
            logger.error("cannot open the pending case keys of account %s", pending.account_id)
            return None
        return {str(k): base64.b64decode(v) for k, v in json.loads(plain).items()}

    async def destroy_key(self, account_id: str) -> None:
        """Delete the account's pending key (idempotent)."""
        await self._keys.destroy(account_id)


__all__ = ["DATA_KEY_AAD", "PENDING_KEY_AAD", "DeactivationRecords"]
