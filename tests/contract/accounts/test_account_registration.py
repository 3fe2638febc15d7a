"""Registration on SQLite and PostgreSQL with real tickets: what is stored, refused and spent."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from tests.contract.accounts.conftest import (
    ID_NUMBER,
    NAME,
    ORGANIZATION,
    OTHER_ID_NUMBER,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    PHONE_E164,
    THIRD_PHONE,
    USCC,
    AccountsEnv,
    legal_command,
    natural_command,
)
from tests.contract.faults import INJECTED, failing_writes, row_counts
from xiaohe.identity.server.accounts.models import AccountStatus, SubjectType
from xiaohe.identity.server.accounts.repository import IdentifierKey, SqlAccountRepository
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.codes.models import Purpose
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.crypto.envelope import WrappedDataKey, field_aad
from xiaohe.identity.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    TicketInvalid,
)
from xiaohe.identity.server.flows.registration import RegisterCommand
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.shared.identifiers import IdType

ACCOUNT_ID = re.compile(r"acc_[0-9a-f]{24}")
EMPTY = {"accounts": 0, "identifiers": 0, "consents": 0}
NO_ID: dict[str, Any] = {"id_type": IdType.UNSPECIFIED, "id_number": ""}


async def _delete_account(env: AccountsEnv, account_id: str) -> None:
    async with env.database.begin() as conn:
        for table in ("consents", "identifiers", "accounts"):
            await conn.execute(
                sa.text(f"DELETE FROM {table} WHERE account_id = :a"),  # noqa: S608
                {"a": account_id},
            )


async def _identifier_kinds(env: AccountsEnv, account_id: str) -> list[str]:
    async with env.database.connect() as conn:
        rows = await conn.execute(
            sa.text("SELECT kind FROM identifiers WHERE account_id = :a ORDER BY kind"),
            {"a": account_id},
        )
        return [str(r.kind) for r in rows]


async def test_natural_person_registers(env: AccountsEnv) -> None:
    """[I1, I3, P4] A natural person gets an active account, sealed profile, consent, audit."""
    result = await env.register(natural_command())
    assert ACCOUNT_ID.fullmatch(result.account_id)

    view = await env.service.get_view(result.account_id)
    assert view.subject_type is SubjectType.NATURAL_PERSON
    assert view.login_name == "zhangsan"
    assert view.phone_masked == "138****5678"
    assert view.email_masked == ""
    assert view.accepted_policy_version == 1
    assert view.real_name_level == 0
    assert view.created_at == env.clock.now()

    data = await env.service.get_personal_data(result.account_id)
    assert (data.phone, data.name, data.id_type, data.id_number) == (
        PHONE_E164,
        NAME,
        IdType.RESIDENT_ID_CARD,
        ID_NUMBER,
    )
    assert (data.organization_name, data.uscc, data.email) == ("", "", "")

    creds = await env.service.get_credentials(result.account_id)
    assert creds.status == AccountStatus.ACTIVE
    assert creds.password_hash.startswith("$argon2id$")
    assert await env.hasher.verify(creds.password_hash, PASSWORD)

    assert await _identifier_kinds(env, result.account_id) == ["id_number", "login_name", "phone"]
    async with env.database.connect() as conn:
        consent = (await conn.execute(sa.text("SELECT * FROM consents"))).one()
    assert consent.account_id == result.account_id
    assert consent.policy_version == 1
    assert consent.purpose == "privacy_policy"
    assert (consent.client_id, consent.channel) == ("bff-web", "web")
    assert env.audit.records == [("account.register", result.account_id, "ok")]

    # [I1] Each ciphertext authenticates its account id and column: moved, it does not open.
    async with env.database.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT * FROM accounts WHERE account_id = :a"), {"a": result.account_id}
            )
        ).one()
    key = env.cipher.unwrap(WrappedDataKey.from_bytes(bytes(row.data_key_wrapped)))
    aid = result.account_id
    assert (
        env.cipher.decrypt_field(key, bytes(row.phone_enc), field_aad(aid, "phone")) == PHONE_E164
    )
    profile = json.loads(
        env.cipher.decrypt_field(key, bytes(row.profile_enc), field_aad(aid, "profile"))
    )
    assert profile == {"id_number": ID_NUMBER, "id_type": "RESIDENT_ID_CARD", "name": NAME}
    with pytest.raises(Exception, match="authentication"):
        env.cipher.decrypt_field(key, bytes(row.phone_enc), field_aad(aid, "profile"))
    with pytest.raises(Exception, match="authentication"):
        env.cipher.decrypt_field(key, bytes(row.phone_enc), field_aad("acc_other", "phone"))
    assert row.master_key_id == env.keyring.active_master_key.id

    # [I1] The identifiers table holds HMACs under the ring's blind-index key, nothing else.
    expected = {
        "login_name": env.blind.compute("login_name", "zhangsan"),
        "phone": env.blind.compute("phone", PHONE_E164),
        "id_number": env.blind.compute("id_number", ID_NUMBER),
    }
    async with env.database.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT kind, blind_index FROM identifiers"))).all()
    assert {str(r.kind): str(r.blind_index) for r in rows} == expected
    for kind, digest in expected.items():
        found = await env.repository.find_by_identifier(IdentifierKey(kind, digest))
        assert found is not None
        assert found.account_id == result.account_id


async def test_legal_person_registers(env: AccountsEnv) -> None:
    """A legal person registers with its USCC and organization name."""
    result = await env.register(legal_command(uscc=" 91350100m000100y43 "))
    view = await env.service.get_view(result.account_id)
    assert view.subject_type is SubjectType.LEGAL_PERSON
    assert view.phone_masked == "139****4321"
    data = await env.service.get_personal_data(result.account_id)
    assert (data.organization_name, data.uscc) == (ORGANIZATION, USCC)
    assert (data.name, data.id_number, data.id_type) == ("", "", IdType.UNSPECIFIED)
    assert await _identifier_kinds(env, result.account_id) == ["login_name", "phone", "uscc"]


REPRESENTATIVE: dict[str, Any] = {
    "organization_type": "ENTERPRISE",
    "representative_type": "LEGAL_REPRESENTATIVE",
    "representative_name": " 王　芳 ",
    "representative_id_type": IdType.RESIDENT_ID_CARD,
    "representative_id_number": "440524 18800101 0014",
}


async def test_legal_person_registers_its_representative(env: AccountsEnv) -> None:
    """[I1] A legal person's organisation type and representative (privacy policy 一.3) are
    normalised and sealed in the profile; the representative's ID number is no identifier."""
    result = await env.register(legal_command(**REPRESENTATIVE))
    data = await env.service.get_personal_data(result.account_id)
    assert (data.organization_type, data.representative_type) == (
        "ENTERPRISE",
        "LEGAL_REPRESENTATIVE",
    )
    assert (
        data.representative_name,
        data.representative_id_type,
        data.representative_id_number,
    ) == ("王 芳", IdType.RESIDENT_ID_CARD, OTHER_ID_NUMBER)
    assert (data.name, data.id_number, data.id_type) == ("", "", IdType.UNSPECIFIED)
    assert await _identifier_kinds(env, result.account_id) == ["login_name", "phone", "uscc"]
    async with env.database.connect() as conn:
        row = (
            await conn.execute(
                sa.text("SELECT * FROM accounts WHERE account_id = :a"), {"a": result.account_id}
            )
        ).one()
    key = env.cipher.unwrap(WrappedDataKey.from_bytes(bytes(row.data_key_wrapped)))
    profile = json.loads(
        env.cipher.decrypt_field(
            key, bytes(row.profile_enc), field_aad(result.account_id, "profile")
        )
    )
    assert profile == {
        "organization_name": ORGANIZATION,
        "uscc": USCC,
        "organization_type": "ENTERPRISE",
        "representative_type": "LEGAL_REPRESENTATIVE",
        "representative_name": "王 芳",
        "representative_id_type": "RESIDENT_ID_CARD",
        "representative_id_number": OTHER_ID_NUMBER,
    }


async def test_a_representative_id_number_is_neither_unique_nor_an_identifier(
    env: AccountsEnv,
) -> None:
    """F5: one person may represent many organisations, and a representative's ID number
    neither blocks nor is blocked by the person's own account (no identifier row, no notice)."""
    person = await env.register(natural_command(id_number=OTHER_ID_NUMBER))
    first = await env.register(legal_command(**REPRESENTATIVE))
    second = await env.register(
        legal_command(
            login_name="second-org", phone=THIRD_PHONE, uscc="91310110666007217T", **REPRESENTATIVE
        )
    )
    for org in (first, second):
        assert await _identifier_kinds(env, org.account_id) == ["login_name", "phone", "uscc"]
        data = await env.service.get_personal_data(org.account_id)
        assert data.representative_id_number == OTHER_ID_NUMBER
    assert await _identifier_kinds(env, person.account_id) == ["id_number", "login_name", "phone"]
    assert not [r for r in env.audit.records if r[0] == "account.identity_claimed"]


async def test_representative_fields_are_validated(env: AccountsEnv) -> None:
    """[F3] Representative fields are a legal person's only, with known types and a valid ID
    number; each violation names its field, and the ticket survives every refusal."""
    ticket = await env.ticket(OTHER_PHONE)
    cases: list[tuple[RegisterCommand, str, str]] = [
        (
            natural_command(phone=OTHER_PHONE, representative_name="王芳"),
            "representative_name",
            "must be empty for a natural person",
        ),
        (
            natural_command(phone=OTHER_PHONE, organization_type="ENTERPRISE"),
            "organization_type",
            "must be empty for a natural person",
        ),
        (
            legal_command(organization_type="CORPORATION"),
            "organization_type",
            "unknown organization type",
        ),
        (
            legal_command(representative_type="CHAIRMAN"),
            "representative_type",
            "unknown representative type",
        ),
        (
            legal_command(
                representative_id_type=IdType.RESIDENT_ID_CARD,
                representative_id_number="440524188001010015",
            ),
            "representative_id_number",
            "check digit",
        ),
        (
            legal_command(representative_id_number=OTHER_ID_NUMBER),
            "representative_id_type",
            "must be specified",
        ),
        (
            legal_command(representative_id_type=IdType.PASSPORT),
            "representative_id_number",
            "must not be empty",
        ),
        (
            legal_command(representative_name="王\n芳"),
            "representative_name",
            "control characters",
        ),
    ]
    for cmd, field, fragment in cases:
        with pytest.raises(InvalidArgument) as caught:
            await env.registration.register(
                replace(cmd, phone_ticket=ticket), client_id="bff-web", channel="web"
            )
        violations = {v.field: v.description for v in caught.value.violations}
        assert set(violations) == {field}, (field, violations)
        assert fragment in violations[field], (field, violations)
        assert "440524188001010015" not in violations[field]
        assert await env.counts() == EMPTY, field
    result = await env.register(legal_command(phone_ticket=ticket, **REPRESENTATIVE))
    assert ACCOUNT_ID.fullmatch(result.account_id)


async def test_duplicate_identifiers_are_already_exists(env: AccountsEnv) -> None:
    """Login name and phone are unique after normalisation (full width, spaces, case); a
    duplicate names its field and stores nothing.

    A taken login name is found before the ticket is spent (the user picks another
    name and retries with the same ticket); a taken phone only after it.
    """
    await env.register(natural_command())
    await env.register(legal_command())
    before = await env.counts()
    # (field, a second registration spelling that identifier differently, a fixed-up retry)
    cases: list[tuple[str, RegisterCommand, dict[str, Any]]] = [
        (
            "login_name",
            natural_command(login_name="ＺｈａｎｇＳａｎ", phone=THIRD_PHONE, **NO_ID),
            {"login_name": "wangwu"},
        ),
        (
            "phone",
            natural_command(login_name="lisi", phone="１３８ １２３４ ５６７８", **NO_ID),
            {"phone": THIRD_PHONE},
        ),
    ]
    for field, cmd, fix in cases:
        ticket = await env.ticket(cmd.phone)
        with pytest.raises(AlreadyExists) as caught:
            await env.register(replace(cmd, phone_ticket=ticket))
        assert caught.value.field == field
        assert caught.value.reason == "ALREADY_EXISTS"
        assert await env.counts() == before, field
        assert env.audit.records[-1][2] == "already_exists"
        fixed = replace(cmd, phone_ticket=ticket, **fix)
        if field == "login_name":
            retried = await env.register(fixed)  # the ticket was not spent
            await _delete_account(env, retried.account_id)
        else:
            with pytest.raises(TicketInvalid):  # the ticket was spent
                await env.register(fixed)


async def test_a_held_document_number_is_claimed_but_never_bound_twice(env: AccountsEnv) -> None:
    """F5: an ID number or USCC (spelled any way) that another account holds registers like a
    free one, but stays unbound: no identifier row, no login by it, holder unchanged."""
    holder = await env.register(natural_command())
    org = await env.register(legal_command())
    for cmd in (
        natural_command(login_name="lisi", phone=THIRD_PHONE, id_number="110105 19491231 002x"),
        legal_command(
            login_name="another-org", phone="13700003333", uscc="９１３５０１００m000100y43"
        ),
    ):
        registered = await env.register(replace(cmd, phone_ticket=await env.ticket(cmd.phone)))
        assert await _identifier_kinds(env, registered.account_id) == ["login_name", "phone"]
        assert ("account.register", registered.account_id, "ok") in env.audit.records
    assert await _identifier_kinds(env, holder.account_id) == ["id_number", "login_name", "phone"]
    assert await _identifier_kinds(env, org.account_id) == ["login_name", "phone", "uscc"]


async def test_invalid_requests_store_nothing_and_keep_the_ticket(env: AccountsEnv) -> None:
    """[P2, F3] Bad check digits and weak passwords are field violations saying why; the ticket
    survives every refusal and then registers the corrected request."""
    ticket = await env.ticket(PHONE)
    cases: list[tuple[Any, str, str]] = [
        (natural_command(id_number="110105194912310021"), "id_number", "check digit"),
        (legal_command(phone=PHONE, uscc="91350100M000100Y44"), "uscc", "check digit"),
        (natural_command(password="password123"), "password", "common password"),
        (natural_command(password="iloveyou"), "password", "most common passwords"),
        (natural_command(password="My.ZhangSan.Pass"), "password", "login name"),
        (natural_command(password="Tiger-1234-5678-x"), "password", "phone number"),
        (natural_command(password="short1"), "password", "at least 8"),
        (natural_command(uscc=USCC), "uscc", "must be empty for a natural person"),
        (legal_command(phone=PHONE, id_number=ID_NUMBER), "id_number", "legal person"),
        (natural_command(login_name="1abc"), "login_name", "start with an ASCII letter"),
        (natural_command(phone="12345"), "phone", "mainland mobile"),
        (natural_command(subject_type=None), "subject_type", "must be specified"),
        (natural_command(id_type=IdType.UNSPECIFIED), "id_type", "must be specified"),
    ]
    for cmd, field, fragment in cases:
        with pytest.raises(InvalidArgument) as caught:
            await env.registration.register(
                replace(cmd, phone_ticket=ticket), client_id="bff-web", channel="web"
            )
        violations = {v.field: v.description for v in caught.value.violations}
        assert field in violations, (field, violations)
        assert fragment in violations[field], (field, violations)
        assert await env.counts() == EMPTY, field

    # [F3] Every bad field of one request is reported at once, without repeating the values.
    cmd = natural_command(
        login_name="x",
        password="123456",
        phone="999",
        id_number="110105194912310021",
        uscc=USCC,
        phone_ticket=ticket,
    )
    with pytest.raises(InvalidArgument) as caught:
        await env.registration.register(cmd, client_id="bff-web", channel="web")
    assert {v.field for v in caught.value.violations} == {
        "login_name",
        "password",
        "phone",
        "id_number",
        "uscc",
    }
    for violation in caught.value.violations:
        assert "110105194912310021" not in violation.description
        assert "999" not in violation.description
    assert await env.counts() == EMPTY
    assert {r[2] for r in env.audit.records} == {"invalid_argument"}

    result = await env.register(natural_command(phone_ticket=ticket))
    assert ACCOUNT_ID.fullmatch(result.account_id)


async def test_outdated_policy_version_is_failed_precondition(env: AccountsEnv) -> None:
    """[I3] Accepting an outdated (or unknown) version is refused naming the current one; the
    ticket is not spent. A stale per-process cache never refuses a version just published."""
    await env.policies.publish("第二版隐私政策")
    ticket = await env.ticket(PHONE)
    for stale in (1, 3):
        with pytest.raises(FailedPrecondition) as caught:
            await env.register(natural_command(accepted_policy_version=stale, phone_ticket=ticket))
        assert [(v.field, v.description) for v in caught.value.violations] == [
            ("accepted_policy_version", "must be the current version 2")
        ]
        assert await env.counts() == EMPTY
    result = await env.register(natural_command(accepted_policy_version=2, phone_ticket=ticket))
    assert (await env.service.get_view(result.account_id)).accepted_policy_version == 2

    # This process caches version 2; another process publishes 3, which is accepted at once.
    assert (await env.policies.current()).version == 2
    await PolicyStore(env.database, env.clock).publish("另一个进程发布的第三版")
    result = await env.register(
        natural_command(login_name="lisi", phone=OTHER_PHONE, accepted_policy_version=3, **NO_ID)
    )
    assert (await env.service.get_view(result.account_id)).accepted_policy_version == 3


async def test_ticket_for_another_phone_or_purpose_is_refused(env_any_redis: AccountsEnv) -> None:
    """[C2, C5] A REGISTER ticket proves one phone for registration only."""
    env = env_any_redis
    other_phone = await env.ticket(OTHER_PHONE)
    reset = await env.ticket(PHONE, Purpose.RESET_PASSWORD)
    login = await env.ticket(PHONE, Purpose.LOGIN)
    for ticket in (other_phone, reset, login, "vt1.not-a-ticket"):
        with pytest.raises(TicketInvalid):
            await env.register(natural_command(phone_ticket=ticket))
        assert await env.counts() == EMPTY
    assert env.audit.records[-1][2] == "ticket_invalid"
    # The right ticket works, and only once.
    ticket = await env.ticket(PHONE)
    await env.register(natural_command(phone_ticket=ticket))
    with pytest.raises(TicketInvalid):
        await env.register(natural_command(login_name="lisi", **NO_ID, phone_ticket=ticket))


async def test_unique_constraint_catches_a_race(env: AccountsEnv) -> None:
    """A duplicate login name or phone that slips past the lookup (a race) is AlreadyExists
    and leaves nothing; of two simultaneous registrations of one login name exactly one
    succeeds. (A document number lost in a race stays unbound: see the test above.)"""

    class BlindRepository(SqlAccountRepository):
        async def taken_kinds(self, keys: Any) -> set[str]:
            return set()

    racing = env.with_registration(repository=BlindRepository(env.database))
    await env.register(natural_command())
    before = await env.counts()
    for field, cmd in [
        ("login_name", natural_command(phone=OTHER_PHONE, id_number=OTHER_ID_NUMBER)),
        ("phone", natural_command(login_name="lisi", id_number=OTHER_ID_NUMBER)),
    ]:
        ticket = await env.ticket(cmd.phone)
        with pytest.raises(AlreadyExists) as caught:
            await racing.register(replace(cmd, phone_ticket=ticket), client_id="c", channel="web")
        assert caught.value.field == field
        assert await env.counts() == before

    # Two simultaneous registrations of one new login name: exactly one account.
    first = natural_command(
        login_name="wangwu", phone=THIRD_PHONE, **NO_ID, phone_ticket=await env.ticket(THIRD_PHONE)
    )
    second = natural_command(
        login_name="wangwu", phone=OTHER_PHONE, **NO_ID, phone_ticket=await env.ticket(OTHER_PHONE)
    )
    results = await asyncio.gather(
        env.registration.register(first, client_id="c", channel="web"),
        env.registration.register(second, client_id="c", channel="web"),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], AlreadyExists)
    assert errors[0].field == "login_name"
    assert (await env.counts())["accounts"] == 2


async def test_identity_documents_are_optional_and_unique_per_type(env: AccountsEnv) -> None:
    """Name and ID are optional at registration (real-name verification comes later); a passport
    and a Hong Kong/Macao permit may share a number, two passports may not be bound."""
    bare = await env.register(
        natural_command(login_name="zhaoliu", phone="18600001111", name="", **NO_ID)
    )
    assert await _identifier_kinds(env, bare.account_id) == ["login_name", "phone"]
    await env.register(natural_command(id_type=IdType.PASSPORT, id_number="e1234 5678"))
    await env.register(
        natural_command(
            login_name="lisi",
            phone=OTHER_PHONE,
            id_type=IdType.HK_MACAO_PERMIT,
            id_number="E12345678",
        )
    )
    second_passport = await env.register(
        natural_command(
            login_name="wangwu",
            phone=THIRD_PHONE,
            id_type=IdType.PASSPORT,
            id_number="E12345678",
        )
    )
    # F5: the passport number is already held, so the second one stays an unbound claim.
    assert await _identifier_kinds(env, second_passport.account_id) == ["login_name", "phone"]


@pytest.mark.parametrize("failing", ["consents", "audit_log"])
async def test_a_registration_is_all_or_nothing(env: AccountsEnv, failing: str) -> None:
    """F2, I7: a fault after the account row is written (the consent or the audit record
    fails) leaves no account, identifier, consent, success record or outbox row behind; only
    the failed attempt is audited (when the audit log itself works)."""
    log = AuditLog(env.database, env.clock, AuditKeys(bytes(range(32))))
    flow = env.with_registration(audit=log)
    tables = ("accounts", "identifiers", "consents", "outbox")
    before = await row_counts(env.database, *tables)
    cmd = replace(natural_command(), phone_ticket=await env.ticket(PHONE))
    async with failing_writes(env.database, failing):
        with pytest.raises(Exception, match=INJECTED):
            await flow.register(cmd, client_id="bff-web", channel="web")
    assert await row_counts(env.database, *tables) == before
    outcomes = [r.outcome for r in await log.query(action="account.register")]
    assert outcomes == ([] if failing == "audit_log" else ["error"])
