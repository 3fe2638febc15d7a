"""PostgreSQL as the production store: the standard URL forms, pool size, statement timeout."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL
from xiaohe.identity.server.config import load_settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage.database import Database

pytestmark = pytest.mark.skipif(not POSTGRES_URL, reason="XIAOHE_TEST_POSTGRES_URL is not set")


def _standard_form(scheme: str) -> str:
    """The test database's URL as an operator writes it: no driver in the scheme."""
    return scheme + POSTGRES_URL.split("://", 1)[1]


@pytest.fixture
async def production_database(tmp_path: Path) -> AsyncIterator[Database]:
    """The Database a worker builds from `postgres://…` with a pool of 3 and a 200 ms timeout."""
    settings = load_settings(
        {
            "XIAOHE_IDENTITY_DATABASE_URL": _standard_form("postgres://"),
            "XIAOHE_IDENTITY_KEYRING_FILE": str(tmp_path / "keyring.json"),
            "XIAOHE_IDENTITY_DATABASE_POOL_SIZE": "3",
            "XIAOHE_IDENTITY_DATABASE_STATEMENT_TIMEOUT_MS": "200",
        }
    )
    container = Container(settings, redis_url="redis://127.0.0.1:1")
    yield container.database
    await container.database.close()


@pytest.mark.parametrize(
    ("scheme", "query"), [("postgresql://", ""), ("postgres://", ""), ("postgres://", "sslmode")]
)
async def test_the_standard_url_forms_reach_postgresql(scheme: str, query: str) -> None:
    url = _standard_form(scheme)
    if query:  # libpq's spelling; this test server speaks no TLS, so `prefer` falls back
        url += ("&" if "?" in url else "?") + "sslmode=prefer"
    settings = load_settings(
        {
            "XIAOHE_IDENTITY_DATABASE_URL": url,
            "XIAOHE_IDENTITY_KEYRING_FILE": f"/run/secrets/{secrets.token_hex(4)}.json",
        }
    )
    database = Database.from_url(settings.effective_database_url)
    try:
        async with database.begin() as conn:
            answer = (await conn.execute(sa.text("SELECT 1"))).scalar_one()
    finally:
        await database.close()
    assert answer == 1


async def test_each_connection_carries_the_statement_timeout(
    production_database: Database,
) -> None:
    async with production_database.begin() as conn:
        shown = (await conn.execute(sa.text("SHOW statement_timeout"))).scalar_one()
    assert shown == "200ms"


async def test_a_statement_past_the_timeout_fails_that_call_as_unavailable(
    production_database: Database,
) -> None:
    with pytest.raises(Unavailable):
        async with production_database.begin() as conn:
            await conn.execute(sa.text("SELECT pg_sleep(2)"))
    async with production_database.begin() as conn:  # the pool is still usable
        assert (await conn.execute(sa.text("SELECT 2"))).scalar_one() == 2


async def test_the_pool_holds_the_configured_size(production_database: Database) -> None:
    engine = production_database._engine  # the pool is the subject
    assert engine is not None
    assert engine.pool.size() == 3  # type: ignore[attr-defined]


async def test_a_server_that_answers_nothing_is_unavailable_within_the_bound() -> None:
    """F4: a "PostgreSQL" that accepts the connection and never answers is reported as
    Unavailable after the connect bound, long before a caller's deadline."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel completes the handshake; nothing ever replies
    port = listener.getsockname()[1]
    database = Database.from_url(f"postgresql+asyncpg://identity@127.0.0.1:{port}/identity")
    try:
        async with asyncio.timeout(10):  # far above the bound: waiting would end here instead
            with pytest.raises(Unavailable):
                async with database.begin() as conn:
                    await conn.execute(sa.text("SELECT 1"))
    finally:
        await database.close()
        listener.close()
