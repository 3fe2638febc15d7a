"""Pending keys: the one copy of a deactivating account's data key that is not in the database.

When an account asks to be deactivated, its data key is taken off the account
row and kept encrypted under a fresh random *pending key* (`deactivations`
table); the pending key itself lives only here, in Redis, sealed under the key
ring's master key (so a Redis dump alone opens nothing). Redis is shared by every
worker and, by the operator guide, never backed up. That is the point: when the
cooling-off period ends, deleting this one Redis key destroys the data key in
every database file there is, the live one and every backup or copy taken
since the request, because none of them holds the data key in a form the key
ring alone can open.

The price: losing Redis during a cooling-off period completes those accounts'
shredding early; their deactivation can then no longer be cancelled by signing
in (docs/decisions.md, "Deactivation: the pending key lives in Redis").

Keys: `xh:deact:{<account id>}` (account ids are random, not personal data);
each expires `ttl` seconds after it is written (the cooling-off period plus a
margin), a backstop for keys a failed request or a lost deletion left behind.
Redis errors become `errors.Unavailable`.
"""

from __future__ import annotations

from typing import Final

from xiaohe.identity.server.storage.redis import RedisClient, redis_errors

KEY_PREFIX: Final = "xh:deact:"


def _key(account_id: str) -> str:
    return f"{KEY_PREFIX}{{{account_id}}}"


class PendingKeys:
    """Sealed pending keys in Redis, one per account in its cooling-off period."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    def __repr__(self) -> str:
        return "PendingKeys()"

    async def put(self, account_id: str, sealed: bytes, ttl_seconds: int) -> None:
        """Store the account's sealed pending key, expiring after `ttl_seconds`."""
        with redis_errors():
            await self._redis.set(_key(account_id), sealed, ex=max(1, ttl_seconds))

    async def get(self, account_id: str) -> bytes | None:
        """The account's sealed pending key, or None if there is none (destroyed, expired)."""
        with redis_errors():
            value = await self._redis.get(_key(account_id))
        if value is None:
            return None
        return value if isinstance(value, bytes) else str(value).encode("latin-1")

    async def destroy(self, account_id: str) -> None:
        """Delete the account's pending key (idempotent): its data key is gone for good."""
        with redis_errors():
            await self._redis.delete(_key(account_id))


__all__ = ["KEY_PREFIX", "PendingKeys"]
