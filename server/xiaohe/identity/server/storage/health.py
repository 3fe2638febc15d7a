"""Whether this worker's stores can serve: the check behind gRPC health and `/healthz`.

A query on an open connection is not enough, which is what deleting the data
directory under a running server shows. SQLite keeps its open connections on the
deleted file and answers from it (writes that nobody will ever read again), and
the embedded Redis keeps serving the connections it has while no new one can
reach its removed socket. So besides asking each store (`SELECT 1`, `PING`, each
bounded in time), the check looks at the paths the stores are reached by: the
SQLite file must still be the file this worker opened, and a unix-socket Redis
must still have its socket. Each look is a `stat`: the check is cheap enough to
run every few seconds in every worker.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa
from redis.asyncio.cluster import RedisCluster

from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.redis import RedisClient


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`, or None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class StoreCheck:
    """Asks the database and Redis, and checks the paths they are reached by."""

    database: Database
    redis: RedisClient
    redis_url: str
    timeout: float

    def __post_init__(self) -> None:
        path = self.database.url.database
        self._sqlite_file = (
            Path(path)
            if self.database.dialect == "sqlite" and path and path != ":memory:"
            else None
        )
        self._sqlite_identity = _identity(self._sqlite_file) if self._sqlite_file else None
        parts = urlsplit(self.redis_url)
        self._redis_socket = Path(parts.path) if parts.scheme == "unix" else None

    async def problems(self) -> list[str]:
        """What cannot serve now, a short phrase each (no address, no secret); empty if all can."""
        found: list[str] = []
        if self._sqlite_file is not None and (
            _identity(self._sqlite_file) != self._sqlite_identity
        ):
            found.append("database file missing or replaced")
        elif not await self._answers(self._select_one()):
            found.append("database not answering")
        if self._redis_socket is not None and not self._redis_socket.is_socket():
            found.append("redis socket missing")
        elif not await self._answers(self._ping()):
            found.append("redis not answering")
        return found

    async def _select_one(self) -> None:
        async with self.database.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def _ping(self) -> None:
        if isinstance(self.redis, RedisCluster):
            # Every master: a cluster serves only while each slot has one that answers.
            await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
            return
        await self.redis.ping()

    async def _answers(self, call: Awaitable[object]) -> bool:
        """Whether `call` completes within the timeout without an error."""
        try:
            await asyncio.wait_for(call, timeout=self.timeout)
        except Exception:
            return False
        return True


__all__ = ["StoreCheck"]
