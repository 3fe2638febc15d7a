"""DirectoryFlow on the real stores (SQLite and PostgreSQL): masking per grant, the
disclosure log and its audit records all or nothing, the person's list paged newest
first (SECURITY I6).

Accounts come from the real registration flow (tickets on the embedded Redis); the
client registry, the disclosure log and the audit log are real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.contract.accounts.conftest import (
    ID_NUMBER,
    NAME,
    ORGANIZATION,
    PHONE,
    USCC,
    AccountsEnv,
    build_env,
    legal_command,
    natural_command,
)
from tests.contract.faults import failing_writes, row_counts
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.callers.registry import ClientRegistry
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import InvalidArgument, PermissionDenied, Unavailable
from xiaohe.identity.server.flows.directory import RELEASE_ACTION, DirectoryFlow, IdentityQuery
from xiaohe.identity.server.privacy.disclosures import DisclosureLog
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

EVERY_FIELD = (
    "subject_type",
    "login_name",
    "real_name_level",
    "name",
    "id_type",
    "id_number",
    "phone",
    "email",
    "organization_name",
    "uscc",
)


@pytest.fixture
async def env(
    database: Database,
    embedded_redis: EmbeddedRedis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> AsyncIterator[AccountsEnv]:
    client = aioredis.Redis.from_url(embedded_redis.url + "?db=2")
    await client.flushdb()
    yield await build_env(database, client, clock, tmp_path, password_policy, argon2)
    await client.flushdb()
    await client.aclose()


def flow(env: AccountsEnv) -> tuple[DirectoryFlow, AuditLog, ClientRegistry]:
    audit = AuditLog(env.database, env.clock, AuditKeys(bytes(range(32))))
    clients = ClientRegistry(env.database, env.clock)
    directory = DirectoryFlow(
        uow=env.database,
        accounts=env.service,
        disclosures=DisclosureLog(env.database, env.clock),
        clients=clients,
        audit=audit,
    )
    return directory, audit, clients


def query(client_id: str, grants: set[str], *ids: str, fields: tuple[str, ...] = EVERY_FIELD,
          purpose: str = "kyc") -> IdentityQuery:  # fmt: skip
    return IdentityQuery(client_id, frozenset(grants), ids, fields, purpose)


MASKED_GRANTS = {f"field:{f}" for f in EVERY_FIELD} | {"purpose:kyc"}


async def test_masked_and_full_values_of_every_field(env: AccountsEnv) -> None:
    """I6: sensitive fields come masked unless the grant is `full`; the rest as they are."""
    person = (await env.register(natural_command())).account_id
    company = (await env.register(legal_command())).account_id
    directory, _, clients = flow(env)
    client, _ = await clients.create("kyc", sorted(MASKED_GRANTS))
    masked = await directory.batch_get_identities(
        query(client.client_id, MASKED_GRANTS, person, company)
    )
    p, c = masked.identities
    assert p.values["name"] == NAME[0] + "**"
    assert p.values["id_number"] == ID_NUMBER[:3] + "*" * 13 + ID_NUMBER[-2:]
    assert p.values["phone"] == "138****" + PHONE[-4:]
    assert (p.values["subject_type"], p.values["login_name"], p.values["id_type"]) == (
        "NATURAL_PERSON", "zhangsan", "RESIDENT_ID_CARD",
    )  # fmt: skip
    assert set(p.masked) == {"name", "id_number", "phone", "email", "uscc"}
    assert c.values["organization_name"] == ORGANIZATION
    assert c.values["uscc"] == USCC[:3] + "*" * 13 + USCC[-2:]

    full = {f"field:{f}:full" for f in EVERY_FIELD} | {"purpose:kyc"}
    whole = await directory.get_identity(query(client.client_id, full, person))
    assert (whole.values["name"], whole.values["id_number"], whole.masked) == (NAME, ID_NUMBER, ())


async def test_refusals_release_and_log_nothing(env: AccountsEnv) -> None:
    person = (await env.register(natural_command())).account_id
    directory, _, _ = flow(env)
    with pytest.raises(PermissionDenied) as denied:
        await directory.get_identity(query("xhc_a", {"field:phone", "purpose:kyc"}, person))
    assert denied.value.grant == "field:subject_type"
    with pytest.raises(InvalidArgument):
        await directory.get_identity(
            query("xhc_a", {"field:phone"}, person, fields=("phone",), purpose="kyc")
        )
    assert (await row_counts(env.database, "disclosures"))["disclosures"] == 0


async def test_the_disclosure_log_and_audit_commit_together_or_nothing_is_released(
    env: AccountsEnv,
) -> None:
    """I6: if the log write fails, Unavailable, no row and no audit record of the release;
    if the audit write fails, no disclosure row stays either."""
    person = (await env.register(natural_command())).account_id
    directory, audit, clients = flow(env)
    client, _ = await clients.create("kyc", sorted(MASKED_GRANTS))
    ask = query(client.client_id, MASKED_GRANTS, person, fields=("phone",))
    for table in ("disclosures", "audit_log"):
        async with failing_writes(env.database, table):
            with pytest.raises(Unavailable):
                await directory.get_identity(ask)
        assert (await row_counts(env.database, "disclosures"))["disclosures"] == 0
        assert await audit.query(action=RELEASE_ACTION) == []
    released = await directory.get_identity(ask)
    assert released.released == ("phone",)
    assert [(r.target, r.outcome) for r in await audit.query(action=RELEASE_ACTION)] == [
        (person, "ok")
    ]


async def test_the_person_lists_disclosures_newest_first_in_pages(env: AccountsEnv) -> None:
    person = (await env.register(natural_command())).account_id
    directory, _, clients = flow(env)
    shop, _ = await clients.create("shop", sorted(MASKED_GRANTS))
    bank, _ = await clients.create("bank", sorted(MASKED_GRANTS))
    for client, fields in ((shop, ("phone",)), (bank, ("name", "id_number")), (shop, ("email",))):
        await directory.get_identity(query(client.client_id, MASKED_GRANTS, person, fields=fields))
        env.clock.advance(5)
    first = await directory.list_disclosures(person, page_size=2, page_token="")
    assert [(d.client_name, d.fields) for d in first.disclosures] == [
        ("shop", ("email",)),
        ("bank", ("name", "id_number")),
    ]
    rest = await directory.list_disclosures(person, page_size=2, page_token=first.next_page_token)
    assert [(d.client_name, d.fields, d.purpose) for d in rest.disclosures] == [
        ("shop", ("phone",), "kyc")
    ]
    assert rest.next_page_token == ""
    other = (await env.register(legal_command())).account_id
    assert (await directory.list_disclosures(other, page_size=0, page_token="")).disclosures == ()
