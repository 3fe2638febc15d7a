"""Two live API clients never share a name (SQLite, PostgreSQL); a revoked client's name is free.

The registry checks first, for a message naming the holder; the partial unique index
of migration 0006 is what keeps concurrent creates from both succeeding.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.exc import IntegrityError

from tests.conftest import own_schema
from xiaohe.identity.server.callers.registry import ClientRegistry
from xiaohe.identity.server.clock import FakeClock, SystemClock
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.errors import AlreadyExists
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.migrate import alembic_config, upgrade_async
from xiaohe.identity.server.storage.schema import clients
from xiaohe.identity.server.supervisor import ensure_bootstrap_client


async def test_a_live_clients_name_is_refused_naming_the_holder(
    database: Database, clock: FakeClock
) -> None:
    registry = ClientRegistry(database, clock)
    first, _ = await registry.create("web-bff", ["codes"])
    with pytest.raises(AlreadyExists) as caught:
        await registry.create(" web-bff ", ["auth"])  # the same name once normalised
    assert caught.value.field == "name"
    assert "'web-bff'" in caught.value.message
    assert first.client_id in caught.value.message
    assert "revoke" in caught.value.message
    assert [c.name for c in await registry.list_all()] == ["web-bff"]


async def test_concurrent_creates_of_one_name_make_one_client(
    database: Database, clock: FakeClock
) -> None:
    """Atomic: of eight simultaneous creates (two registries, as two workers), one wins."""
    registries = [ClientRegistry(database, clock), ClientRegistry(database, clock)]
    results = await asyncio.gather(
        *(registries[i % 2].create("orders", ["validate"]) for i in range(8)),
        return_exceptions=True,
    )
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, AlreadyExists)]
    assert (len(made), len(refused)) == (1, 7), results
    assert [c.name for c in await registries[0].list_all()] == ["orders"]


async def test_the_database_itself_refuses_a_second_live_name(
    database: Database, clock: FakeClock
) -> None:
    """The index, not only the check: a row written past the registry is refused too."""
    registry = ClientRegistry(database, clock)
    await registry.create("billing", ["validate"])
    with pytest.raises(IntegrityError):
        async with database.begin() as conn:
            await conn.execute(
                clients.insert().values(
                    client_id="xhc_direct",
                    name="billing",
                    secret_hash="sha256$0",
                    grants="[]",
                    created_at=utc(clock.now()),
                    revoked_at=None,
                )
            )


async def test_a_revoked_clients_name_may_be_given_again(
    database: Database, clock: FakeClock
) -> None:
    registry = ClientRegistry(database, clock)
    old, _ = await registry.create("carrier feed", ["carrier-hooks"])
    await registry.revoke(old.client_id)
    clock.advance(1)
    new, _ = await registry.create("carrier feed", ["carrier-hooks"])
    assert new.client_id != old.client_id
    with pytest.raises(AlreadyExists):
        await registry.create("carrier feed", ["carrier-hooks"])
    listed = {(c.client_id, c.revoked) for c in await registry.list_all()}
    assert listed == {(old.client_id, True), (new.client_id, False)}


@pytest.fixture
async def url_at_0005(database_url: str) -> AsyncIterator[str]:
    """A database migrated to revision 0005, before live names were unique."""
    async with own_schema(database_url):
        await asyncio.to_thread(command.upgrade, alembic_config(database_url), "0005")
        yield database_url


async def test_migration_keeps_the_oldest_name_and_renames_later_live_duplicates(
    url_at_0005: str, clock: FakeClock
) -> None:
    """Existing databases may hold duplicates: the upgrade never fails on them, keeps every
    client's id, secret and grants, and leaves revoked clients as they were."""
    rows = [
        ("xhc_old", "web", None),
        ("xhc_mid", "web", None),
        ("xhc_new", "web", None),
        ("xhc_gone", "web", clock.now() + 5),
        ("xhc_gone2", "web", clock.now() + 6),
        ("xhc_long", "x" * 200, None),
        ("xhc_long2", "x" * 200, None),
        ("xhc_solo", "orders", None),
    ]
    database = Database.from_url(url_at_0005)
    try:
        async with database.begin() as conn:
            for i, (client_id, name, revoked) in enumerate(rows):
                await conn.execute(
                    clients.insert().values(
                        client_id=client_id,
                        name=name,
                        secret_hash=f"sha256${i}",
                        grants=json.dumps(["codes"]),
                        created_at=utc(clock.now()) + timedelta(seconds=i),
                        revoked_at=None if revoked is None else utc(revoked),
                    )
                )
    finally:
        await database.close()

    await upgrade_async(url_at_0005)

    database = Database.from_url(url_at_0005)
    try:
        async with database.connect() as conn:
            found = {
                str(r.client_id): (str(r.name), str(r.secret_hash), r.revoked_at is not None)
                for r in (await conn.execute(sa.select(clients))).all()
            }
        assert {k: v[0] for k, v in found.items()} == {
            "xhc_old": "web",
            "xhc_mid": "web (xhc_mid)",
            "xhc_new": "web (xhc_new)",
            "xhc_gone": "web",
            "xhc_gone2": "web",
            "xhc_long": "x" * 200,
            "xhc_long2": "x" * (200 - len(" (xhc_long2)")) + " (xhc_long2)",
            "xhc_solo": "orders",
        }
        assert {k: v[1] for k, v in found.items()} == {
            r[0]: f"sha256${i}" for i, r in enumerate(rows)
        }
        assert sorted(k for k, v in found.items() if v[2]) == ["xhc_gone", "xhc_gone2"]
        with pytest.raises(AlreadyExists):
            await ClientRegistry(database, clock).create("web", ["codes"])
    finally:
        await database.close()


async def test_a_lost_bootstrap_file_does_not_make_a_second_live_bootstrap_client(
    database: Database, tmp_path: Path
) -> None:
    """Deleting `bootstrap-client.json` while the old all-grants client is live is refused
    (revoke it first); once it is revoked, the next start makes a new one."""
    settings = Settings(data_dir=tmp_path)
    path = await ensure_bootstrap_client(settings, database)
    old_id = json.loads(path.read_text())["client_id"]
    path.unlink()
    with pytest.raises(AlreadyExists) as caught:
        await ensure_bootstrap_client(settings, database)
    assert old_id in caught.value.message
    assert "revoke" in caught.value.message
    assert not path.exists()

    registry = ClientRegistry(database, SystemClock())
    await registry.revoke(old_id)
    await ensure_bootstrap_client(settings, database)
    new_id = json.loads(path.read_text())["client_id"]
    live = [c.client_id for c in await registry.list_all() if not c.revoked]
    assert live == [new_id] != [old_id]
