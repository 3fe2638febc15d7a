"""a live client's name is unique

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 07:00:00.000000

A partial unique index on `clients.name` where `revoked_at IS NULL`: two live
clients cannot share a name, and a revoked client's name may be used again.
Databases from before this revision may hold live duplicates (nothing refused
them): the oldest client of each name keeps it, every later one is renamed
`NAME (CLIENT_ID)`, cut to fit 200 characters. Credentials and grants are
untouched; only what operators read changes. Revoked clients keep their names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MAX_NAME_CHARS = 200

_clients = sa.table(
    "clients",
    sa.column("client_id", sa.String),
    sa.column("name", sa.String),
    sa.column("created_at", sa.DateTime),
    sa.column("revoked_at", sa.DateTime),
)


def _renamed(name: str, client_id: str) -> str:
    suffix = f" ({client_id})"
    return name[: MAX_NAME_CHARS - len(suffix)] + suffix


def upgrade() -> None:
    conn = op.get_bind()
    live = conn.execute(
        sa.select(_clients.c.client_id, _clients.c.name)
        .where(_clients.c.revoked_at.is_(None))
        .order_by(_clients.c.created_at, _clients.c.client_id)
    ).all()
    seen: set[str] = set()
    for client_id, name in live:
        if name in seen:
            conn.execute(
                _clients.update()
                .where(_clients.c.client_id == client_id)
                .values(name=_renamed(name, client_id))
            )
        seen.add(name)
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.create_index(
            "uq_clients_live_name",
            ["name"],
            unique=True,
            sqlite_where=sa.text("revoked_at IS NULL"),
            postgresql_where=sa.text("revoked_at IS NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("clients", schema=None) as batch_op:
        batch_op.drop_index("uq_clients_live_name")
