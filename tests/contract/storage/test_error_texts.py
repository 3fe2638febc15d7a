"""Database error texts never carry the values a statement bound (they reach logs)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from xiaohe.identity.server.storage.database import Database

PHONE = "+8613812345678"


async def test_a_failed_statement_does_not_repeat_its_values(database: Database) -> None:
    async with database.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE probe (value VARCHAR(40) PRIMARY KEY)"))
        await conn.execute(sa.text("INSERT INTO probe (value) VALUES (:value)"), {"value": PHONE})

    async def duplicate() -> None:
        async with database.begin() as conn:
            await conn.execute(
                sa.text("INSERT INTO probe (value) VALUES (:value)"), {"value": PHONE}
            )

    with pytest.raises(sa.exc.IntegrityError) as caught:
        await duplicate()
    assert "INSERT INTO probe" in str(caught.value)  # the text is there, the values are not
    assert PHONE not in str(caught.value)
    assert "13812345678" not in repr(caught.value)
