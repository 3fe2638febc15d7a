"""Personal data at rest: never in the clear in the database, and master-key rotation (I1)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from tests.contract.accounts.conftest import (
    ID_NUMBER,
    NAME,
    OTHER_ID_NUMBER,
    OTHER_PHONE,
    PHONE,
    PHONE_E164,
    THIRD_PHONE,
    AccountsEnv,
    legal_command,
    natural_command,
)
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.shared.identifiers import IdType

REPRESENTATIVE = "欧阳娜娜"

SECRETS = {
    "phone": PHONE.encode(),
    "id_number": ID_NUMBER.encode(),
    "id_number_lower": ID_NUMBER.lower().encode(),
    "name": NAME.encode("utf-8"),
    "legal_person_phone": OTHER_PHONE.encode(),
    "representative_name": REPRESENTATIVE.encode("utf-8"),
    "representative_id_number": OTHER_ID_NUMBER.encode(),
}


def _leaks(blob: bytes) -> list[str]:
    return [what for what, needle in SECRETS.items() if needle in blob]


async def test_no_raw_phone_or_id_number_in_the_stored_database(env: AccountsEnv) -> None:
    """[I1] After registration the phone, ID number and name appear nowhere in the database,
    nor a legal person's phone or its representative's name and ID number: not in the SQLite
    file or its WAL, not in any column of any PostgreSQL table."""
    result = await env.register(natural_command())
    organisation = await env.register(
        legal_command(
            organization_type="ENTERPRISE",
            representative_type="LEGAL_REPRESENTATIVE",
            representative_name=REPRESENTATIVE,
            representative_id_type=IdType.RESIDENT_ID_CARD,
            representative_id_number=OTHER_ID_NUMBER,
        )
    )
    data = await env.service.get_personal_data(organisation.account_id)
    assert (data.representative_name, data.representative_id_number) == (
        REPRESENTATIVE,
        OTHER_ID_NUMBER,
    )  # stored, so the scans below would find them if they were stored in the clear
    if env.database.dialect == "sqlite":
        path = Path(str(env.database.url.database))
        wal = path.with_name(path.name + "-wal")
        before_checkpoint = wal.read_bytes() if wal.exists() else b""
        await env.database.close()  # the last connection checkpoints the WAL into the file
        files = sorted(path.parent.glob(path.name + "*"))
        assert path in files
        scanned = before_checkpoint + b"".join(f.read_bytes() for f in files)
        assert b"zhangsan" in scanned  # the scan does read the data: the login name is there
        assert result.account_id.encode() in scanned
        assert _leaks(scanned) == []
        return

    dumped: list[bytes] = []
    async with env.database.connect() as conn:
        tables = [
            str(r.table_name)
            for r in await conn.execute(
                sa.text(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            )
        ]
        assert {"accounts", "identifiers", "consents"} <= set(tables)
        for table in tables:
            # Every column of every row as text (bytea as hex) ...
            for row in await conn.execute(sa.text(f'SELECT t::text FROM "{table}" t')):  # noqa: S608
                dumped.append(str(row[0]).encode("utf-8"))
            # ... and binary columns as their raw bytes.
            for row in await conn.execute(sa.text(f'SELECT * FROM "{table}"')):  # noqa: S608
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        dumped.append(bytes(value))
    scanned = b"\n".join(dumped)
    assert b"zhangsan" in scanned
    assert result.account_id.encode() in scanned
    assert _leaks(scanned) == []


async def test_rewrap_changes_only_the_wrapped_keys(env: AccountsEnv) -> None:
    """Master-key rotation re-wraps every data key in batches; encrypted columns stay byte-identical
    and still decrypt. A rotation made by another process (the CLI) is picked up."""
    service = env.with_accounts(rewrap_batch_size=2)
    ids = [
        (await env.register(natural_command())).account_id,
        (
            await env.register(
                natural_command(login_name="lisi", phone=OTHER_PHONE, id_number=OTHER_ID_NUMBER)
            )
        ).account_id,
        (await env.register(legal_command(phone=THIRD_PHONE))).account_id,
    ]
    select = sa.text(
        "SELECT account_id, master_key_id, data_key_wrapped, phone_enc, profile_enc, updated_at "
        "FROM accounts ORDER BY account_id"
    )
    async with env.database.connect() as conn:
        before = {r.account_id: r for r in await conn.execute(select)}
    old_key = env.keyring.active_master_key.id
    assert {r.master_key_id for r in before.values()} == {old_key}

    assert await service.rewrap_data_keys() == 0  # nothing to do before a rotation
    new_key = env.keyring.rotate_master_key().id
    assert await service.rewrap_data_keys() == 3

    async with env.database.connect() as conn:
        after = {r.account_id: r for r in await conn.execute(select)}
    for account_id in ids:
        old, new = before[account_id], after[account_id]
        assert new.master_key_id == new_key
        assert bytes(new.data_key_wrapped) != bytes(old.data_key_wrapped)
        assert bytes(new.phone_enc) == bytes(old.phone_enc)
        assert bytes(new.profile_enc) == bytes(old.profile_enc)
        assert new.updated_at == old.updated_at
    data = await env.service.get_personal_data(ids[0])
    assert (data.phone, data.id_number, data.name) == (PHONE_E164, ID_NUMBER, NAME)
    assert await service.rewrap_data_keys() == 0  # idempotent

    # The CLI rotates in its own process; the server's ring reloads before re-wrapping.
    account = await env.register(
        natural_command(
            login_name="wangwu", phone="18600001111", id_number="", id_type=IdType.UNSPECIFIED
        )
    )
    other_process_ring = KeyRing.load_or_create(env.keyring.path, env.clock)
    new_key = other_process_ring.rotate_master_key().id
    assert env.keyring.active_master_key.id != new_key  # this process has not noticed yet
    assert await env.service.rewrap_data_keys() == 4  # the new account and the 3 above
    async with env.database.connect() as conn:
        master_key_id = (
            await conn.execute(
                sa.text("SELECT master_key_id FROM accounts WHERE account_id = :a"),
                {"a": account.account_id},
            )
        ).scalar_one()
    assert master_key_id == new_key
    assert (await env.service.get_personal_data(account.account_id)).phone == "+8618600001111"
