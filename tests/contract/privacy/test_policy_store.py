"""Privacy policy versions and consents on SQLite and PostgreSQL (I3)."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import sqlalchemy as sa

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.errors import FailedPrecondition, InvalidArgument, NotFound
from xiaohe.identity.server.privacy.policies import PolicyStore, packaged_policy_text
from xiaohe.identity.server.storage.database import Database

# SHA-256 of /work/shared/seed/privacy-policy.zh.md, the platform's published policy.
SEED_SHA256 = "13e9d607079b091cadeb1b818f7e144d16369769c607a153700fd67e72faa874"


async def _versions(database: Database) -> list[int]:
    async with database.connect() as conn:
        rows = await conn.execute(sa.text("SELECT version FROM policy_versions ORDER BY version"))
        return [int(r.version) for r in rows]


def test_packaged_text_is_the_seed_policy() -> None:
    """Version 1 is the platform's policy text, verbatim."""
    text = packaged_policy_text()
    assert text.startswith("# 小禾企服网用户隐私政策\n")
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == SEED_SHA256


async def test_seeding_race_leaves_exactly_one_version_1(
    database: Database, database_url: str, clock: FakeClock
) -> None:
    """[I3] Five workers seeding at once (each with its own engine) publish version 1 once."""
    others = [Database.from_url(database_url) for _ in range(4)]
    try:
        stores = [PolicyStore(db, clock) for db in [database, *others]]
        await asyncio.gather(*(s.ensure_seeded() for s in stores))
        await asyncio.gather(*(s.ensure_seeded() for s in stores))  # and again: a no-op
    finally:
        for db in others:
            await db.close()
    assert await _versions(database) == [1]
    current = await PolicyStore(database, clock).current()
    text = packaged_policy_text()
    assert current.version == 1
    assert current.text == text
    assert current.sha256 == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert current.published_at == clock.now()
    assert text not in repr(current)


async def test_current_seeds_an_empty_table(database: Database, clock: FakeClock) -> None:
    """current() on a fresh database publishes the packaged version 1 instead of failing."""
    assert (await PolicyStore(database, clock).current()).version == 1
    assert await _versions(database) == [1]


async def test_publish_makes_the_next_version_current(database: Database, clock: FakeClock) -> None:
    """Publishing adds version 2 and makes it current; versions stay readable; bad texts refused."""
    store = PolicyStore(database, clock)
    await store.ensure_seeded()
    clock.advance(3600)
    v2 = await store.publish("第二版：新增了实名认证的目的说明。")
    assert v2.version == 2
    assert v2.published_at == clock.now()
    assert (await store.current()).version == 2
    assert (await store.get(2)).text == "第二版：新增了实名认证的目的说明。"
    assert (await store.get(1)).text == packaged_policy_text()
    with pytest.raises(NotFound):
        await store.get(3)

    with pytest.raises(InvalidArgument) as empty:
        await store.publish(" \n\t")
    assert empty.value.violations[0].field == "text"
    with pytest.raises(FailedPrecondition) as same:
        await store.publish("第二版：新增了实名认证的目的说明。")
    assert "version 2" in same.value.message
    # Going back to an older text is a new version, not a refusal.
    assert (await store.publish(packaged_policy_text())).version == 3
    assert await _versions(database) == [1, 2, 3]


async def test_concurrent_publications_get_distinct_versions(
    database: Database, database_url: str, clock: FakeClock
) -> None:
    """Publishers racing (separate engines) each get their own next number; none is lost."""
    await PolicyStore(database, clock).ensure_seeded()
    others = [Database.from_url(database_url) for _ in range(3)]
    try:
        published = await asyncio.gather(
            *(PolicyStore(db, clock).publish(f"第{i}稿") for i, db in enumerate(others))
        )
    finally:
        for db in others:
            await db.close()
    assert sorted(p.version for p in published) == [2, 3, 4]
    assert await _versions(database) == [1, 2, 3, 4]


async def test_current_is_cached_for_a_few_seconds(database: Database, clock: FakeClock) -> None:
    """Another process's publication shows after the cache time, or at once when asked fresh."""
    here = PolicyStore(database, clock, cache_seconds=5)
    elsewhere = PolicyStore(database, clock)
    assert (await here.current()).version == 1
    await elsewhere.publish("第二版")
    assert (await here.current()).version == 1  # still cached
    assert (await here.current(fresh=True)).version == 2
    here_again = PolicyStore(database, clock, cache_seconds=5)
    assert (await here_again.current()).version == 2
    await elsewhere.publish("第三版")
    clock.advance(4)
    assert (await here_again.current()).version == 2
    clock.advance(2)
    assert (await here_again.current()).version == 3
