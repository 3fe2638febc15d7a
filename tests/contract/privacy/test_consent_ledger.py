"""The consent ledger on SQLite and PostgreSQL: records join the unit of work (I3)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.storage.database import Database, utc


async def test_a_consent_joins_the_unit_of_work(database: Database, clock: FakeClock) -> None:
    """[I3] A consent records account, version, purpose, time, client, channel and masked IP,
    and commits or rolls back with the unit of work it joins."""
    await PolicyStore(database, clock).ensure_seeded()
    ledger = ConsentLedger(database, clock)
    account = {
        "account_id": "acc_0123456789abcdef01234567",
        "subject_type": "NATURAL_PERSON",
        "login_name": "zhangsan",
        "password_hash": "x",
        "status": "active",
        "accepted_policy_version": 1,
        "real_name_level": 0,
        "master_key_id": "mk-test",
        "created_at": utc(clock.now()),
        "updated_at": utc(clock.now()),
    }
    insert = sa.text(
        "INSERT INTO accounts (account_id, subject_type, login_name, password_hash, status, "
        "accepted_policy_version, real_name_level, master_key_id, created_at, updated_at) VALUES "
        "(:account_id, :subject_type, :login_name, :password_hash, :status, "
        ":accepted_policy_version, :real_name_level, :master_key_id, :created_at, :updated_at)"
    )

    class Abort(Exception):
        pass

    async def consent_then_fail() -> None:
        async with database.begin() as conn:
            await conn.execute(insert, account)
            await ledger.record(str(account["account_id"]), 1, client_id="bff-web", channel="web")
            raise Abort

    with pytest.raises(Abort):
        await consent_then_fail()
    async with database.begin() as conn:
        await conn.execute(insert, account)
        consent_id = await ledger.record(
            str(account["account_id"]),
            1,
            client_id="bff-web",
            channel="app",
            purpose="id_scan_upload",
            ip_masked="203.0.113.*",
        )
    async with database.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM consents"))).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.consent_id == consent_id
    assert consent_id.startswith("con_")
    assert (row.account_id, row.policy_version, row.purpose) == (
        account["account_id"],
        1,
        "id_scan_upload",
    )
    assert (row.client_id, row.channel, row.ip_masked) == ("bff-web", "app", "203.0.113.*")
    listed = await ledger.of_account(str(account["account_id"]))
    assert [(c.consent_id, c.policy_version, c.ip_masked) for c in listed] == [
        (consent_id, 1, "203.0.113.*")
    ]
