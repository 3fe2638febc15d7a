"""AccountService.Deactivate over real gRPC (注销; issue 14 part 4, SECURITY I5, T3).

Each test runs the in-process server on SQLite and, when XIAOHE_TEST_POSTGRES_URL
is set, on PostgreSQL (own schema), with the embedded Redis. Codes arrive in the
dev outbox and become tickets through the real RPCs; the fake clock stands in for
the 15-day cooling-off period, and the completion job is run as the CLI runs it
(`DeactivationFlow.complete_due`).

"A copy taken before the destruction" is, on SQLite, the database file copied
with SQLite's backup API (a consistent file, as a backup tool would take it) and
opened as a database of its own; on PostgreSQL, the account's rows read out (a
dump of them). Either way the server's own key ring and Redis are then asked to
decrypt the phone, name and ID number from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from tests.conftest import POSTGRES_URL, _with_search_path, own_schema
from tests.contract.faults import failing_writes, row_counts
from tests.document_samples import png_sample
from tests.integration.accounts.channel_steps import (
    OPEN_LIMITS,
    bearer,
    refused,
    refused_within_a_second,
    settle,
    ticket,
)
from tests.integration.auth.test_totp_rpc import complete, enrolled_account, password_login
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    code_ticket,
    stubs,
)
from xiaohe.identity.server.crypto.envelope import DecryptionError, WrappedDataKey, field_aad
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.deactivation.models import PendingDeactivation
from xiaohe.identity.server.errors import FailedPrecondition
from xiaohe.identity.server.review.cases import HELD_FOR_DEACTIVATION
from xiaohe.identity.server.review.models import CaseKind, CaseState, Verdict
from xiaohe.identity.server.storage.database import Database, epoch
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.schema import (
    accounts,
    deactivations,
    identifiers,
    review_cases,
    totp_factors,
)
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.v1 import (
    accounts_pb2,
    admin_pb2,
    admin_pb2_grpc,
    auth_pb2,
    common_pb2,
    privacy_pb2,
    privacy_pb2_grpc,
)

DAY = 86400
COOLING_OFF = 15 * DAY
NAME = "张伟"
ID_NUMBER = "11010519491231002X"
DEACTIVATE = common_pb2.PURPOSE_DEACTIVATE


@pytest.fixture(params=["sqlite", "postgres"])
async def h(
    request: pytest.FixtureRequest, harness_factory: HarnessFactory, tmp_path: Path
) -> AsyncIterator[Harness]:
    """A server with open code limits on SQLite, or on PostgreSQL in a schema of its own."""
    if request.param == "sqlite":
        yield await harness_factory(**OPEN_LIMITS)
        return
    if not POSTGRES_URL:
        pytest.skip("XIAOHE_TEST_POSTGRES_URL is not set")
    url = _with_search_path(POSTGRES_URL, f"t_{secrets.token_hex(6)}")
    async with own_schema(url):
        ring = tmp_path / "ring" / "keyring.json"
        clock = request.getfixturevalue("clock")
        KeyRing.create(ring, clock)
        harness = await harness_factory(database_url=url, keyring_file=str(ring), **OPEN_LIMITS)
        yield harness
        await harness.channel.close()
        await harness.running.stop(0)
        await harness.container.close()


async def register_person(h: Harness, login_name: str = LOGIN_NAME) -> str:
    """Register a natural person with a phone, a name and a resident ID number."""
    await settle(h)
    registered = await stubs(h).accounts.Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=login_name,
            password=PASSWORD,
            phone=PHONE,
            phone_ticket=await code_ticket(h, PHONE, common_pb2.PURPOSE_REGISTER),
            accepted_policy_version=1,
            natural_person=accounts_pb2.NaturalPersonProfile(
                name=NAME, id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=ID_NUMBER
            ),
        ),
        metadata=h.metadata,
    )
    return registered.account_id


async def sign_in(h: Harness) -> auth_pb2.LoginResponse:
    """A password login by LOGIN_NAME."""
    return await stubs(h).auth.Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=LOGIN_NAME, password=PASSWORD)
        ),
        metadata=h.metadata,
    )


async def deactivate(
    h: Harness, session: auth_pb2.Session, phone: str = PHONE
) -> accounts_pb2.DeactivateResponse:
    """Deactivate the session's account with a DEACTIVATE ticket of `phone`."""
    proof = await ticket(h, phone, DEACTIVATE)
    return await stubs(h).accounts.Deactivate(
        accounts_pb2.DeactivateRequest(ticket=proof), metadata=h.metadata + bearer(session)
    )


async def decided_case(h: Harness, account_id: str) -> str:
    """A review case about the account, decided (rejected), whose fields hold its name and ID
    number under the case's own data key; returns its id."""
    case_id = await h.container.review_cases.open(
        kind=CaseKind.PHONE_CHANGE,
        account_id=account_id,
        subject_type="natural_person",
        fields={"name": NAME, "id_number": ID_NUMBER},
        document_ids=[],
        reference="test",
    )
    case = await h.container.review_cases.get(case_id)
    await h.container.review_cases.decide(
        case,
        reviewer_account_id="acc_reviewer",
        verdict=Verdict.REJECT,
        reason="documents unreadable",
        new_state=CaseState.REJECTED,
    )
    return case_id


async def case_key_wrap(database: Database, case_id: str) -> bytes | None:
    """The case's stored key wrap, or None if the case is gone."""
    async with database.connect() as conn:
        wrapped = (
            await conn.execute(
                sa.select(review_cases.c.data_key_wrapped).where(review_cases.c.case_id == case_id)
            )
        ).scalar()
    return None if wrapped is None else bytes(wrapped)


async def status_of(h: Harness, account_id: str) -> str:
    """The account's stored status."""
    return (await h.container.accounts.get_credentials(account_id)).status


@dataclass
class Rows:
    """An account's rows as a database file (or a copy of it) holds them."""

    account: dict[str, Any]
    deactivation: dict[str, Any] | None
    case_keys: dict[str, bytes]
    """The key wraps of the review cases about the account, by case id."""


async def rows_of(database: Database, account_id: str) -> Rows:
    """The account's `accounts` and `deactivations` rows."""
    async with database.connect() as conn:
        account = (
            await conn.execute(sa.select(accounts).where(accounts.c.account_id == account_id))
        ).one()
        pending = (
            await conn.execute(
                sa.select(deactivations).where(deactivations.c.account_id == account_id)
            )
        ).first()
        cases = (
            await conn.execute(
                sa.select(review_cases.c.case_id, review_cases.c.data_key_wrapped).where(
                    review_cases.c.account_id == account_id
                )
            )
        ).all()
    return Rows(
        dict(account._mapping),
        None if pending is None else dict(pending._mapping),
        {str(c.case_id): bytes(c.data_key_wrapped) for c in cases},
    )


async def copy_taken_now(h: Harness, account_id: str, tmp_path: Path) -> Rows:
    """A copy of the database as a backup would take it now (module docstring)."""
    url = h.container.settings.effective_database_url
    if not url.startswith("sqlite"):
        return await rows_of(h.container.database, account_id)
    copy = tmp_path / f"copy-{secrets.token_hex(4)}.db"
    source = sqlite3.connect(url.removeprefix("sqlite:///"))
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    database = Database.from_url(f"sqlite:///{copy}")
    try:
        return await rows_of(database, account_id)
    finally:
        await database.close()


def copy_pending(rows: Rows) -> PendingDeactivation:
    """The `deactivations` row of a copy, as the server reads one."""
    assert rows.deactivation is not None
    cases = rows.deactivation["case_keys_pending"]
    return PendingDeactivation(
        account_id=rows.account["account_id"],
        requested_at=epoch(rows.deactivation["requested_at"]),
        due_at=epoch(rows.deactivation["due_at"]),
        data_key_pending=bytes(rows.deactivation["data_key_pending"]),
        case_keys_pending=None if cases is None else bytes(cases),
    )


async def decrypted(h: Harness, rows: Rows) -> tuple[str, dict[str, str]] | None:
    """The phone and the profile (name, ID number) that the server, with its key ring and
    its Redis, can decrypt from these rows; None when it cannot get at the data key."""
    aid = rows.account["account_id"]
    cipher = h.container.cipher
    if rows.account["data_key_wrapped"] is not None:
        key: bytes | None = cipher.unwrap(
            WrappedDataKey.from_bytes(bytes(rows.account["data_key_wrapped"]))
        )
    elif rows.deactivation is not None:
        key = await h.container.deactivation.recover_data_key(copy_pending(rows))
    else:
        key = None
    if key is None:
        return None
    phone = cipher.decrypt_field(key, bytes(rows.account["phone_enc"]), field_aad(aid, "phone"))
    profile = cipher.decrypt_field(
        key, bytes(rows.account["profile_enc"]), field_aad(aid, "profile")
    )
    return phone, json.loads(profile)


async def test_after_cooling_off_nothing_decrypts_the_chain_verifies_and_the_phone_is_free(
    h: Harness, tmp_path: Path
) -> None:
    """I5, T3: every session ends at once; after the cooling-off period the phone, name
    and ID number cannot be decrypted from the live database or from a copy taken before
    the destruction (the ciphertext is still in the copy, only the key is gone), the audit
    chain verifies, and the same phone, login name and ID number register a new account."""
    account_id = await register_person(h)
    case_id = await decided_case(h, account_id)
    first = (await sign_in(h)).session
    second = (await sign_in(h)).session
    before = await copy_taken_now(h, account_id, tmp_path)
    assert await decrypted(h, before) == (
        PHONE,
        {"id_number": ID_NUMBER, "id_type": "RESIDENT_ID_CARD", "name": NAME},
    )

    answer = await deactivate(h, first)

    assert answer.sessions_ended == 2
    assert answer.completes_at.seconds == int(h.clock.now() + COOLING_OFF)
    await refused_within_a_second(h, first, second)
    assert await status_of(h, account_id) == "deactivation_pending"
    during = await rows_of(h.container.database, account_id)
    assert during.account["data_key_wrapped"] is None  # the key ring alone opens nothing now
    assert during.case_keys == {case_id: HELD_FOR_DEACTIVATION}  # nor the case's fields
    with pytest.raises(FailedPrecondition):
        await h.container.review_cases.get(case_id)
    copy = await copy_taken_now(h, account_id, tmp_path)
    assert (await decrypted(h, copy) or ("", {}))[0] == PHONE  # the pending key still opens it

    h.clock.advance(COOLING_OFF - 60)
    assert await h.container.deactivation.complete_due() == 0  # not due yet
    h.clock.advance(61)
    assert await h.container.deactivation.complete_due() == 1

    live = await rows_of(h.container.database, account_id)
    assert live.deactivation is None
    assert live.account["data_key_wrapped"] is None
    assert live.account["phone_enc"] is None
    assert live.account["profile_enc"] is None
    assert live.account["status"] == "deactivated"
    assert await decrypted(h, live) is None
    # The copy still holds every ciphertext and the encrypted data key ...
    assert copy.account["phone_enc"] == before.account["phone_enc"]
    assert copy.account["profile_enc"] == before.account["profile_enc"]
    assert copy.deactivation is not None
    # ... but the pending key is gone from Redis, and no key of the ring opens the data key.
    assert await decrypted(h, copy) is None
    for master in h.container.keyring.master_keys:
        with pytest.raises(DecryptionError):
            h.container.cipher.decrypt_bytes(
                master.key,
                bytes(copy.deactivation["data_key_pending"]),
                field_aad(account_id, "deactivation_data_key"),
            )
    # The review case (name and ID number under its own key) is gone, and the copy's row
    # holds no key the ring opens: its key was kept only under the destroyed pending key.
    assert await case_key_wrap(h.container.database, case_id) is None
    assert copy.case_keys == {case_id: HELD_FOR_DEACTIVATION}
    assert copy.deactivation["case_keys_pending"] is not None
    assert await h.container.deactivation.recover_case_keys(copy_pending(copy)) is None
    # The personal data reads as empty everywhere the server looks.
    data = await h.container.accounts.get_personal_data(account_id)
    assert (data.phone, data.name, data.id_number) == ("", "", "")

    admin = admin_pb2_grpc.AdminServiceStub(h.channel)
    chain = await admin.VerifyAuditChain(admin_pb2.VerifyAuditChainRequest(), metadata=h.metadata)
    assert chain.intact
    assert chain.records_checked > 0

    new_id = await register_person(h)
    assert new_id != account_id
    assert (await h.container.accounts.get_personal_data(new_id)).phone == PHONE
    assert (await sign_in(h)).session.access_token


async def test_the_pre_request_copy_is_the_one_the_key_ring_opens(
    h: Harness, tmp_path: Path
) -> None:
    """What the design does not cover, shown: a copy from before Deactivate holds the data key
    wrapped under the master key, so it stays readable with the key ring. The operator guide
    therefore keeps database backups no longer than the cooling-off period."""
    account_id = await register_person(h)
    before = await copy_taken_now(h, account_id, tmp_path)
    await deactivate(h, (await sign_in(h)).session)
    h.clock.advance(COOLING_OFF + 1)
    assert await h.container.deactivation.complete_due() == 1
    assert (await decrypted(h, before) or ("", {}))[0] == PHONE


async def test_of_two_concurrent_requests_the_loser_leaves_the_winners_key_alone(
    h: Harness,
) -> None:
    """Review finding: two Deactivate calls at once, each with its own ticket. The loser
    must fail without replacing the pending key the winner's row is sealed under, or no
    sign-in could cancel the deactivation. The loser's key is made late on purpose."""
    await register_person(h)
    session = (await sign_in(h)).session
    proofs = [await ticket(h, PHONE, DEACTIVATE) for _ in range(2)]
    records = h.container.deactivation._records
    prepare, calls = records.prepare, 0

    async def late_second(account_id: str, ttl_seconds: int) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 2:
            await asyncio.sleep(0.5)
        return await prepare(account_id, ttl_seconds)

    records.prepare = late_second  # type: ignore[method-assign]
    answers = await asyncio.gather(
        *(
            stubs(h).accounts.Deactivate(
                accounts_pb2.DeactivateRequest(ticket=proof), metadata=h.metadata + bearer(session)
            )
            for proof in proofs
        ),
        return_exceptions=True,
    )
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(refused) == 1
    # Not active any more, or (when it reads the account after the winner's commit) its
    # ticket no longer matches the account's phone, which is held aside: refused either way.
    assert refused[0].code() in (
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await asyncio.sleep(0.6)  # whatever the loser would still do is done

    h.clock.advance(COOLING_OFF - DAY)
    answer = await sign_in(h)
    assert answer.deactivation_cancelled
    assert answer.next_step == auth_pb2.NEXT_STEP_NONE


@pytest.mark.parametrize("method", ["password", "sms"])
async def test_signing_in_during_cooling_off_cancels_the_deactivation(
    h: Harness, method: str
) -> None:
    """I5: a sign-in within the cooling-off period cancels the deactivation, says so,
    and the account is as it was (its data readable again, nothing completes later)."""
    account_id = await register_person(h)
    case_id = await decided_case(h, account_id)
    await deactivate(h, (await sign_in(h)).session)
    h.clock.advance(COOLING_OFF - DAY)

    if method == "password":
        answer = await sign_in(h)
    else:
        answer = await stubs(h).auth.Login(
            auth_pb2.LoginRequest(sms_ticket=await ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)),
            metadata=h.metadata,
        )

    assert answer.deactivation_cancelled
    assert answer.next_step == auth_pb2.NEXT_STEP_NONE
    assert await status_of(h, account_id) == "active"
    view = await stubs(h).accounts.GetAccount(
        accounts_pb2.GetAccountRequest(), metadata=h.metadata + bearer(answer.session)
    )
    assert view.account.phone_masked
    assert view.account.phone_masked != PHONE
    assert (await h.container.accounts.get_personal_data(account_id)).id_number == ID_NUMBER
    assert (await rows_of(h.container.database, account_id)).deactivation is None
    case = await h.container.review_cases.get(case_id)  # its key is under the master key again
    assert case.fields["id_number"] == ID_NUMBER
    h.clock.advance(2 * DAY)
    assert await h.container.deactivation.complete_due() == 0
    assert await status_of(h, account_id) == "active"
    assert not (await sign_in(h)).deactivation_cancelled  # an ordinary sign-in says nothing


async def test_signing_in_with_a_second_factor_cancels_at_the_second_factor(h: Harness) -> None:
    """With TOTP the password alone starts no session and cancels nothing; CompleteMfa does."""
    account_id, secret, _ = await enrolled_account(h)
    await deactivate(h, await _mfa_session(h, secret))
    challenged = await password_login(h)
    assert challenged.next_step == auth_pb2.NEXT_STEP_MFA_REQUIRED
    assert not challenged.deactivation_cancelled
    assert await status_of(h, account_id) == "deactivation_pending"
    h.clock.advance(30)
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    assert done.deactivation_cancelled
    assert await status_of(h, account_id) == "active"


async def _mfa_session(h: Harness, secret: str) -> auth_pb2.Session:
    """A full sign-in of an account with TOTP: password, then the code."""
    challenged = await password_login(h)
    h.clock.advance(30)
    done = await complete(h, challenged.mfa_ticket, code_at(secret, h.clock.now()))
    return done.session


async def test_scans_a_phone_holder_sent_for_a_case_about_the_account_go_at_completion(
    h: Harness,
) -> None:
    """Review finding (I5): a document a phone's holder uploaded for a case about the account
    (a lost phone) is not the account's own, yet it goes with the case at completion; a
    holder's document no case of the account names stays."""
    account_id = await register_person(h)
    docs = h.container.documents
    async with h.container.database.begin():
        named = await docs.store(
            owner=docs.phone_owner(OTHER_PHONE),
            kind="id_scan",
            file_name="front.png",
            content_type="image/png",
            content=png_sample(),
        )
        unrelated = await docs.store(
            owner=docs.phone_owner(OTHER_PHONE),
            kind="id_scan",
            file_name="other.png",
            content_type="image/png",
            content=png_sample(),
        )
    case_id = await h.container.review_cases.open(
        kind=CaseKind.PHONE_CHANGE,
        account_id=account_id,
        subject_type="natural_person",
        fields={"name": NAME, "id_number": ID_NUMBER},
        document_ids=[named.document_id],
        reference="test",
    )
    await h.container.review_cases.decide(
        await h.container.review_cases.get(case_id),
        reviewer_account_id="acc_reviewer",
        verdict=Verdict.REJECT,
        reason="documents unreadable",
        new_state=CaseState.REJECTED,
    )
    await deactivate(h, (await sign_in(h)).session)
    h.clock.advance(COOLING_OFF + 1)
    assert await h.container.deactivation.complete_due() == 1

    assert await docs.info(named.document_id) is None
    assert await docs.info(unrelated.document_id) is not None


async def test_a_request_is_not_resolved_with_a_lost_note_during_cooling_off(h: Harness) -> None:
    """Review finding (I4): while the account's key is held aside, an operator's answer with
    a note is refused (FAILED_PRECONDITION) and the request stays open; once a sign-in has
    cancelled the deactivation the same answer is kept with its note."""
    await register_person(h)
    session = (await sign_in(h)).session
    privacy: privacy_pb2_grpc.PrivacyServiceAsyncStub = privacy_pb2_grpc.PrivacyServiceStub(
        h.channel
    )  # type: ignore[assignment]
    filed = await privacy.FileRequest(
        privacy_pb2.FileRequestRequest(
            kind=privacy_pb2.RIGHTS_REQUEST_KIND_CORRECTION, detail="地址写错了"
        ),
        metadata=h.metadata + bearer(session),
    )
    await deactivate(h, session)
    admin: admin_pb2_grpc.AdminServiceAsyncStub = admin_pb2_grpc.AdminServiceStub(h.channel)  # type: ignore[assignment]
    answer = admin_pb2.ResolveRequestRequest(
        request_id=filed.request.request_id,
        outcome=privacy_pb2.RIGHTS_REQUEST_OUTCOME_REFUSED,
        note="需要先提供身份证明",
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin.ResolveRequest(answer, metadata=h.metadata)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    assert (await sign_in(h)).deactivation_cancelled
    resolved = await admin.ResolveRequest(answer, metadata=h.metadata)
    assert resolved.request.state == privacy_pb2.RIGHTS_REQUEST_STATE_RESOLVED
    assert resolved.request.note == "需要先提供身份证明"


async def test_after_the_cooling_off_period_a_sign_in_is_refused_and_completion_follows(
    h: Harness,
) -> None:
    """Past the due time, before the job has run, the sign-in no longer cancels: it is refused
    like any inactive account's, and the next run completes the deactivation."""
    account_id = await register_person(h)
    await deactivate(h, (await sign_in(h)).session)
    h.clock.advance(COOLING_OFF)
    d = await refused(sign_in(h))
    assert d.code == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(h, account_id) == "deactivation_pending"
    assert await h.container.deactivation.complete_due() == 1
    assert await status_of(h, account_id) == "deactivated"


async def test_open_obligations_refuse_it_with_their_name(h: Harness) -> None:
    """An open review case (the default obligation) refuses the request, naming it; nothing
    changes and the ticket is still good once the case is gone."""
    account_id = await register_person(h)
    session = (await sign_in(h)).session
    case_id = await h.container.review_cases.open(
        kind=CaseKind.PHONE_CHANGE,
        account_id=account_id,
        subject_type="natural_person",
        fields={"new_phone": "+8613700001111"},
        document_ids=[],
        reference="test",
    )
    proof = await ticket(h, PHONE, DEACTIVATE)
    request = accounts_pb2.DeactivateRequest(ticket=proof)
    d = await refused(stubs(h).accounts.Deactivate(request, metadata=h.metadata + bearer(session)))
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "open_review_cases" in d.message
    assert await status_of(h, account_id) == "active"
    assert await row_counts(h.container.database, "deactivations") == {"deactivations": 0}

    await h.container.review_cases.forget_account(account_id)
    assert case_id  # gone now: the same ticket is accepted
    answer = await stubs(h).accounts.Deactivate(request, metadata=h.metadata + bearer(session))
    assert answer.sessions_ended == 1


async def test_bad_requests_are_refused_on_the_ticket_field(h: Harness) -> None:
    """F3: no ticket, an overlong one, a ticket of another purpose or another phone, and no
    bearer token each get a clear error; nothing changes."""
    account_id = await register_person(h)
    session = (await sign_in(h)).session
    call = stubs(h).accounts.Deactivate
    meta = h.metadata + bearer(session)
    for bad in ("", " ", "x" * 5000):
        d = await refused(call(accounts_pb2.DeactivateRequest(ticket=bad), metadata=meta))
        assert (d.code, list(d.violations)) == (grpc.StatusCode.INVALID_ARGUMENT, ["ticket"])
    login_ticket = await ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
    d = await refused(call(accounts_pb2.DeactivateRequest(ticket=login_ticket), metadata=meta))
    assert (d.reason, list(d.violations)) == ("TICKET_INVALID", ["ticket"])
    stranger = await ticket(h, "+8613700002222", DEACTIVATE)
    d = await refused(call(accounts_pb2.DeactivateRequest(ticket=stranger), metadata=meta))
    assert (d.reason, list(d.violations)) == ("TICKET_INVALID", ["ticket"])
    proof = await ticket(h, PHONE, DEACTIVATE)
    d = await refused(call(accounts_pb2.DeactivateRequest(ticket=proof), metadata=h.metadata))
    assert d.code == grpc.StatusCode.UNAUTHENTICATED
    assert await status_of(h, account_id) == "active"


async def test_a_fault_in_the_request_changes_nothing(h: Harness) -> None:
    """F2: all-or-nothing, a failing write at the end of the request's unit of work (the audit
    record) leaves the account active with its key, its sessions and no deactivation row."""
    account_id = await register_person(h)
    session = (await sign_in(h)).session
    proof = await ticket(h, PHONE, DEACTIVATE)
    async with failing_writes(h.container.database, "audit_log"):
        d = await refused(
            stubs(h).accounts.Deactivate(
                accounts_pb2.DeactivateRequest(ticket=proof),
                metadata=h.metadata + bearer(session),
            )
        )
    assert d.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE)
    assert await status_of(h, account_id) == "active"
    rows = await rows_of(h.container.database, account_id)
    assert rows.deactivation is None
    assert rows.account["data_key_wrapped"] is not None
    assert (await h.container.accounts.get_personal_data(account_id)).phone == PHONE
    assert (await h.container.sessions.list_sessions(account_id))[0].session_id


async def test_a_fault_in_the_completion_changes_nothing_and_the_next_run_completes(
    h: Harness,
) -> None:
    """F2: all-or-nothing, a failing write at the end of the completion's unit of work leaves the
    identifiers, the TOTP factor and the pending state as they were (the key is gone already,
    so nothing is readable); the next run completes it."""
    account_id, secret, _ = await enrolled_account(h)
    await deactivate(h, await _mfa_session(h, secret))
    h.clock.advance(COOLING_OFF + 1)
    tables = ("identifiers", "deactivations", "totp_factors", "totp_recovery_codes")
    before = await row_counts(h.container.database, *tables)
    async with failing_writes(h.container.database, "audit_log"):
        assert await h.container.deactivation.complete_due() == 0
    assert await row_counts(h.container.database, *tables) == before
    assert await status_of(h, account_id) == "deactivation_pending"
    async with h.container.database.connect() as conn:
        held = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(identifiers)
                .where(identifiers.c.account_id == account_id)
            )
        ).scalar_one()
        factor = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(totp_factors)
                .where(totp_factors.c.account_id == account_id)
            )
        ).scalar_one()
    assert (held, factor) == (2, 1)  # login name and phone; the factor

    assert await h.container.deactivation.complete_due() == 1
    assert await row_counts(h.container.database, *tables) == {
        "identifiers": 0,
        "deactivations": 0,
        "totp_factors": 0,
        "totp_recovery_codes": 0,
    }
    assert await status_of(h, account_id) == "deactivated"


async def test_the_cli_completes_what_is_due(
    harness_factory: HarnessFactory, embedded_redis: EmbeddedRedis
) -> None:
    """`xiaohe-identity deactivation complete` runs the completion now, against the server's
    database and Redis (here a cooling-off period of 0: due at once by the system clock)."""
    h = await harness_factory(deactivation_cooling_off_seconds=0, **OPEN_LIMITS)
    account_id = await register_person(h)
    await deactivate(h, (await sign_in(h)).session)
    env = {
        **os.environ,
        "XIAOHE_IDENTITY_DATA_DIR": str(h.data_dir),
        "XIAOHE_IDENTITY_REDIS_URL": embedded_redis.url + "?db=2",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "xiaohe.identity.server.cli", "deactivation", "complete"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"deactivations_completed": 1}
    assert await status_of(h, account_id) == "deactivated"
    assert await row_counts(h.container.database, "deactivations") == {"deactivations": 0}


async def test_the_server_completes_due_deactivations_by_itself(
    harness_factory: HarnessFactory,
) -> None:
    """The background task of every worker completes what is due (here every second)."""
    h = await harness_factory(
        deactivation_cooling_off_seconds=0, deactivation_sweep_seconds=1, **OPEN_LIMITS
    )
    account_id = await register_person(h)
    await deactivate(h, (await sign_in(h)).session)
    for _ in range(50):
        if await status_of(h, account_id) == "deactivated":
            break
        await asyncio.sleep(0.1)
    assert await status_of(h, account_id) == "deactivated"
