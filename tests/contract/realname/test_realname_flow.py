"""Real-name submissions on SQLite and PostgreSQL: states, levels, unique claims, atomicity (I1)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes, row_counts
from tests.contract.realname.conftest import ID_NUMBER, NAME, USCC, RealNameEnv
from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.errors import (
    ConsentRequired,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from xiaohe.identity.server.flows.realname import (
    CONFLICT_REASON,
    LegalPersonCommand,
    NaturalPersonCommand,
    UploadHeader,
)
from xiaohe.identity.server.realname.claims import NaturalPersonClaim
from xiaohe.identity.server.realname.submissions import State
from xiaohe.identity.server.realname.verifiers import ReviewVerifier, RuleVerifier, Verdict

DAY = 86400.0
THIRD_ID = "110105198001010016"


async def natural(env: RealNameEnv, account_id: str, **changes: Any) -> NaturalPersonCommand:
    """A valid natural-person submission for `account_id` with one ID scan of its own."""
    now = env.clock.now()
    base = NaturalPersonCommand(
        account_id=account_id,
        name=NAME,
        id_type=1,
        id_number=ID_NUMBER,
        valid_from=now - 365 * DAY,
        valid_until=now + 5 * 365 * DAY,
        address="青海省西宁市城西区胜利路 1 号",
        document_ids=(await env.document(account_id),),
    )
    return replace(base, **changes)


async def legal(env: RealNameEnv, account_id: str, **changes: Any) -> LegalPersonCommand:
    """A valid legal-person submission for `account_id` with its own documents."""
    base = LegalPersonCommand(
        account_id=account_id,
        organization_name="青海小禾科技服务有限公司",
        organization_type="ENTERPRISE",
        uscc=USCC,
        representative_type="LEGAL_REPRESENTATIVE",
        representative_name=NAME,
        representative_id_type=1,
        representative_id_number=ID_NUMBER,
        address="青海省西宁市城西区胜利路 1 号",
        licence_document_ids=(await env.document(account_id, "business_licence"),),
        publicity_screenshot_document_ids=(await env.document(account_id, "publicity_screenshot"),),
        representative_id_document_ids=(await env.document(account_id, "representative_id_scan"),),
    )
    return replace(base, **changes)


async def level_of(env: RealNameEnv, account_id: str) -> int:
    return (await env.accounts.get_view(account_id)).real_name_level


async def test_rules_verify_a_natural_person_at_level_1(env: RealNameEnv) -> None:
    """I1: a submission that passes the rules is VERIFIED at level 1; its details are stored
    only encrypted, and the status shows the name masked."""
    account = await env.account()
    submitted = await env.flow().submit_natural(await natural(env, account))
    assert submitted.state is State.VERIFIED
    assert await level_of(env, account) == 1
    status = await env.flow().status(account)
    assert (status.state, status.level, status.submission_id) == (
        State.VERIFIED,
        1,
        submitted.submission_id,
    )
    assert status.name_masked == "张**"
    async with env.database.connect() as conn:
        rows = (await conn.execute(sa.text("SELECT * FROM real_name_submissions"))).all()
    assert len(rows) == 1
    flat = repr(tuple(rows[0])).encode()
    assert ID_NUMBER.encode() not in flat
    assert NAME.encode("utf-8") not in bytes(rows[0].details_enc)
    with pytest.raises(FailedPrecondition, match="verified already"):
        await env.flow().submit_natural(await natural(env, account))


async def test_rules_verify_a_legal_person(env: RealNameEnv) -> None:
    """A legal person with a valid USCC and representative is VERIFIED at level 1."""
    account = await env.account(SubjectType.LEGAL_PERSON)
    submitted = await env.flow().submit_legal(await legal(env, account))
    assert submitted.state is State.VERIFIED
    assert await level_of(env, account) == 1
    status = await env.flow().status(account)
    assert status.name_masked.startswith("青海")
    assert "*" in status.name_masked


async def test_the_subject_type_must_match(env: RealNameEnv) -> None:
    """A natural person's submission for a legal person's account is FAILED_PRECONDITION."""
    company = await env.account(SubjectType.LEGAL_PERSON)
    with pytest.raises(FailedPrecondition, match="not a natural person"):
        await env.flow().submit_natural(await natural(env, company))
    person = await env.account()
    with pytest.raises(FailedPrecondition, match="not a legal person"):
        await env.flow().submit_legal(await legal(env, person))
    assert (await row_counts(env.database, "real_name_submissions"))["real_name_submissions"] == 0


async def test_documents_must_be_the_callers_own_and_of_the_right_kind(env: RealNameEnv) -> None:
    """D1: another account's document, an unknown id or a wrong kind is refused per field."""
    account, other = await env.account(), await env.account()
    theirs = await env.document(other)
    licence = await env.document(account, "business_licence")
    cmd = await natural(env, account, document_ids=(theirs, "doc_" + "0" * 24, licence))
    with pytest.raises(InvalidArgument) as refused:
        await env.flow().submit_natural(cmd)
    fields = {v.field: v.description for v in refused.value.violations}
    assert fields["document_ids[0]"] == fields["document_ids[1]"]  # not told apart
    assert "id_scan" in fields["document_ids[2]"]
    with pytest.raises(InvalidArgument) as empty:
        await env.flow().submit_natural(replace(cmd, document_ids=()))
    assert empty.value.violations[0].field == "document_ids"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"id_number": "110105201501010017"}, "at least 18"),
        ({"valid_until_days": -1}, "expired"),
        ({"valid_from_days": 3}, "not valid yet"),
    ],
    ids=["minor", "expired", "not-yet-valid"],
)
async def test_rules_reject_with_a_reason(
    env: RealNameEnv, changes: dict[str, Any], reason: str
) -> None:
    """I1: a minor, an expired or a not-yet-valid document is REJECTED with a reason, level 0."""
    account = await env.account()
    now = env.clock.now()
    cmd = await natural(env, account)
    if "id_number" in changes:
        cmd = replace(cmd, id_number=changes["id_number"])
    if "valid_until_days" in changes:
        cmd = replace(cmd, valid_until=now + changes["valid_until_days"] * DAY)
    if "valid_from_days" in changes:
        cmd = replace(cmd, valid_from=now + changes["valid_from_days"] * DAY)
    submitted = await env.flow().submit_natural(cmd)
    assert submitted.state is State.REJECTED
    assert reason in submitted.reason
    assert await level_of(env, account) == 0
    # A rejected person may try again.
    again = await env.flow().submit_natural(await natural(env, account))
    assert again.state is State.VERIFIED


async def test_a_wrong_check_digit_is_a_field_violation(env: RealNameEnv) -> None:
    """A typo in the ID number or USCC is INVALID_ARGUMENT on the field; nothing is stored."""
    account = await env.account()
    with pytest.raises(InvalidArgument) as refused:
        await env.flow().submit_natural(await natural(env, account, id_number="110105194912310021"))
    assert refused.value.violations[0].field == "id_number"
    assert "110105194912310021" not in str(refused.value)
    company = await env.account(SubjectType.LEGAL_PERSON)
    with pytest.raises(InvalidArgument) as bad_uscc:
        await env.flow().submit_legal(await legal(env, company, uscc="91350100M000100Y44"))
    assert bad_uscc.value.violations[0].field == "uscc"
    assert (await row_counts(env.database, "real_name_submissions"))["real_name_submissions"] == 0


async def test_a_verified_identity_cannot_be_claimed_by_a_second_account(
    env: RealNameEnv,
) -> None:
    """I1: once verified, the same ID number is REJECTED for another account, with a reason
    that does not name the first; the same holds for a USCC and its organisation code."""
    first, second = await env.account(), await env.account()
    assert (await env.flow().submit_natural(await natural(env, first))).state is State.VERIFIED
    submitted = await env.flow().submit_natural(await natural(env, second))
    assert submitted.state is State.REJECTED
    assert submitted.reason == CONFLICT_REASON
    assert first not in submitted.reason
    assert await level_of(env, second) == 0
    a, b = await env.account(SubjectType.LEGAL_PERSON), await env.account(SubjectType.LEGAL_PERSON)
    assert (await env.flow().submit_legal(await legal(env, a))).state is State.VERIFIED
    org_code = USCC[8:17]
    rejected = await env.flow().submit_legal(await legal(env, b, uscc=org_code))
    assert rejected.state is State.REJECTED
    assert rejected.reason == CONFLICT_REASON


async def test_two_accounts_submitting_one_id_at_once_give_one_verified(env: RealNameEnv) -> None:
    """I1: under concurrency at most one of two accounts claiming the same ID is VERIFIED."""
    accounts = [await env.account() for _ in range(4)]
    commands = [await natural(env, a) for a in accounts]
    results = await asyncio.gather(*(env.flow().submit_natural(c) for c in commands))
    states = [r.state for r in results]
    assert states.count(State.VERIFIED) == 1
    assert states.count(State.REJECTED) == 3
    levels = [await level_of(env, a) for a in accounts]
    assert sorted(levels) == [0, 0, 0, 1]
    assert (await row_counts(env.database, "real_name_claims"))["real_name_claims"] == 1


class SlowRules(RuleVerifier):
    """The rules, answering after a pause like a remote identity check would."""

    async def check_natural(self, claim: NaturalPersonClaim) -> Verdict:
        await asyncio.sleep(0.05)
        return await super().check_natural(claim)


async def test_one_account_submitting_two_ids_at_once_verifies_one(env: RealNameEnv) -> None:
    """I1: two submissions of one account at once (different ID numbers) give one VERIFIED
    and one FAILED_PRECONDITION; the account never holds two claims."""
    account = await env.account()
    commands = [
        await natural(env, account),
        await natural(env, account, id_number="350102198506150028"),
    ]
    flow = env.flow(verifier=SlowRules())  # both pass the first checks before either records
    results = await asyncio.gather(
        *(flow.submit_natural(c) for c in commands), return_exceptions=True
    )
    verified = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert [r.state for r in verified] == [State.VERIFIED]
    assert len(refused) == 1
    assert isinstance(refused[0], FailedPrecondition)
    assert (await row_counts(env.database, "real_name_claims"))["real_name_claims"] == 1


@pytest.mark.parametrize(
    ("table", "operation"),
    [("audit_log", "INSERT"), ("accounts", "UPDATE"), ("real_name_claims", "INSERT")],
)
async def test_a_failed_submission_leaves_no_state_level_or_claim(
    env: RealNameEnv, table: str, operation: str
) -> None:
    """I1: submission, claim, level and audit record are one unit of work: a failure in any
    of them leaves none of them."""
    account = await env.account()
    cmd = await natural(env, account)
    async with failing_writes(env.database, table, operation):
        with pytest.raises(Exception, match=INJECTED):
            await env.flow().submit_natural(cmd)
    counts = await row_counts(env.database, "real_name_submissions", "real_name_claims")
    assert counts == {"real_name_submissions": 0, "real_name_claims": 0}
    assert await level_of(env, account) == 0
    assert (await env.flow().submit_natural(cmd)).state is State.VERIFIED


async def test_review_on_sends_rule_passed_submissions_to_review(env: RealNameEnv) -> None:
    """With `real_name_review` on, a submission the rules accept is IN_REVIEW, a case is opened
    with the fields the reviewer compares, and the level stays 0."""
    flow = env.flow(review_rule_passed=True)
    account = await env.account()
    cmd = await natural(env, account)
    submitted = await flow.submit_natural(cmd)
    assert submitted.state is State.IN_REVIEW
    assert await level_of(env, account) == 0
    [case] = env.queue.cases
    assert case["kind"] == "real_name"
    assert case["account_id"] == account
    assert case["subject_type"] == "natural_person"
    assert case["reference"] == submitted.submission_id
    assert case["fields"]["id_number"] == ID_NUMBER
    assert case["fields"]["name"] == NAME
    assert case["document_ids"] == list(cmd.document_ids)
    with pytest.raises(FailedPrecondition, match="waiting"):
        await flow.submit_natural(await natural(env, account))


async def test_a_passport_needs_a_reviewer_and_none_is_wired(env: RealNameEnv) -> None:
    """Rules cannot vouch for a passport: IN_REVIEW with a queue; without one,
    FAILED_PRECONDITION and nothing stored."""
    account = await env.account()
    cmd = await natural(env, account, id_type=2, id_number="E12345678")
    with pytest.raises(FailedPrecondition, match="manual review"):
        await env.flow(review_queue=None).submit_natural(cmd)
    assert (await row_counts(env.database, "real_name_submissions"))["real_name_submissions"] == 0
    assert (await env.flow().submit_natural(cmd)).state is State.IN_REVIEW


async def test_apply_review_approves_at_level_2(env: RealNameEnv) -> None:
    """A reviewer's approval makes the submission VERIFIED at level 2, audited; a second
    decision on it is FAILED_PRECONDITION."""
    flow = env.flow(verifier=ReviewVerifier())
    account, reviewer = await env.account(), await env.account()
    submitted = await flow.submit_natural(await natural(env, account))
    assert submitted.state is State.IN_REVIEW
    async with env.database.begin():
        await flow.apply_review(
            submitted.submission_id,
            approved=True,
            reason="documents match",
            reviewer_account_id=reviewer,
        )
    status = await flow.status(account)
    assert (status.state, status.level, status.reason) == (State.VERIFIED, 2, "documents match")
    assert status.decided_at is not None
    with pytest.raises(FailedPrecondition):
        await flow.apply_review(
            submitted.submission_id, approved=False, reason="x", reviewer_account_id=reviewer
        )
    async with env.database.connect() as conn:
        outcomes = (
            await conn.execute(
                sa.text("SELECT outcome FROM audit_log WHERE action = 'realname.review'")
            )
        ).all()
    assert [r.outcome for r in outcomes] == ["verified"]


async def test_apply_review_rejects_and_checks_its_caller(env: RealNameEnv) -> None:
    """A rejection carries its reason; no reason, an unknown submission or the reviewer's own
    account are refused."""
    flow = env.flow(verifier=ReviewVerifier())
    account, reviewer = await env.account(), await env.account()
    submitted = await flow.submit_natural(await natural(env, account))
    with pytest.raises(InvalidArgument):
        await flow.apply_review(
            submitted.submission_id, approved=False, reason=" ", reviewer_account_id=reviewer
        )
    with pytest.raises(NotFound):
        await flow.apply_review(
            "rns_" + "0" * 24, approved=False, reason="x", reviewer_account_id=reviewer
        )
    with pytest.raises(PermissionDenied):
        await flow.apply_review(
            submitted.submission_id, approved=True, reason="x", reviewer_account_id=account
        )
    await flow.apply_review(
        submitted.submission_id,
        approved=False,
        reason="the scan is unreadable",
        reviewer_account_id=reviewer,
    )
    status = await flow.status(account)
    assert (status.state, status.level, status.reason) == (
        State.REJECTED,
        0,
        "the scan is unreadable",
    )


async def test_an_approval_after_another_account_verified_is_a_rejection(
    env: RealNameEnv,
) -> None:
    """I1: approving a claim that another account verified meanwhile rejects it instead."""
    reviewed = env.flow(verifier=ReviewVerifier())
    waiting, winner, reviewer = await env.account(), await env.account(), await env.account()
    submitted = await reviewed.submit_natural(await natural(env, waiting))
    assert (await env.flow().submit_natural(await natural(env, winner))).state is State.VERIFIED
    await reviewed.apply_review(
        submitted.submission_id, approved=True, reason="ok", reviewer_account_id=reviewer
    )
    status = await reviewed.status(waiting)
    assert (status.state, status.level, status.reason) == (State.REJECTED, 0, CONFLICT_REASON)


async def test_an_upload_needs_the_separate_consent(env: RealNameEnv) -> None:
    """I2: without a consent on record and without one in the header: CONSENT_REQUIRED before
    any byte; with it: one ledger row (purpose identity_documents), then no more needed."""
    account = await env.account()
    flow = env.flow()
    header = UploadHeader(
        kind="id_scan", file_name="a.png", declared_size=0, separate_consent=False, phone_ticket=""
    )
    with pytest.raises(ConsentRequired):
        await flow.start_upload(header, account_id=account, client_id="bff", ip="203.0.113.9")
    permit = await flow.start_upload(
        replace(header, separate_consent=True),
        account_id=account,
        client_id="bff",
        ip="203.0.113.9",
    )
    from tests.document_samples import png_sample

    info = await flow.finish_upload(permit, png_sample())
    assert info.owner == account
    consents = [c for c in await env.consents.of_account(account) if c.purpose != "privacy_policy"]
    assert [(c.purpose, c.channel, c.ip_masked, c.client_id) for c in consents] == [
        ("identity_documents", "document_upload", "203.0.113.*", "bff")
    ]
    later = await flow.start_upload(header, account_id=account, client_id="bff", ip="203.0.113.9")
    await flow.finish_upload(later, png_sample())
    assert len(await env.consents.of_account(account)) == 1


async def test_a_failed_upload_records_no_consent(env: RealNameEnv) -> None:
    """I2: the consent given with an upload commits with the document, or not at all."""
    account = await env.account()
    flow = env.flow()
    permit = await flow.start_upload(
        UploadHeader(
            kind="id_scan",
            file_name="a.png",
            declared_size=0,
            separate_consent=True,
            phone_ticket="",
        ),
        account_id=account,
        client_id="bff",
        ip="",
    )
    from tests.document_samples import png_sample

    async with failing_writes(env.database, "documents"):
        with pytest.raises(Exception, match=INJECTED):
            await flow.finish_upload(permit, png_sample())
    assert await env.consents.of_account(account) == []
    assert list(env.store_dir.glob("*")) == []


async def test_a_dump_of_every_table_holds_no_raw_identity(env: RealNameEnv) -> None:
    """I1, D1: after uploads, a verified and an in-review submission, a dump of every table
    (as `pg_dump` would read them) holds no ID number, name, address or document bytes."""
    from tests.document_samples import MARKER
    from xiaohe.identity.server.storage.schema import metadata

    verified, reviewed = await env.account(), await env.account()
    await env.flow().submit_natural(await natural(env, verified))
    passport = await natural(env, reviewed, id_type=2, id_number="E12345678")
    await env.flow().submit_natural(passport)
    dump = []
    async with env.database.connect() as conn:
        for table in metadata.sorted_tables:
            for row in (await conn.execute(sa.select(table))).all():
                for value in row:
                    dump.append(value if isinstance(value, bytes) else str(value).encode())
    blob = b"\x00".join(dump)
    for secret in (ID_NUMBER, "E12345678", NAME, "胜利路", MARKER.decode()):
        assert secret.encode() not in blob, secret


async def test_an_authoritative_match_earns_level_2_and_an_outage_stores_nothing(
    env: RealNameEnv,
) -> None:
    """X2, I1: with the HTTP verifier (a local service checking signatures) a match is level
    2, a mismatch REJECTED, "no record" IN_REVIEW; a service that does not answer is
    UNAVAILABLE and nothing is stored."""
    from tests.fakes.identity_check import IdentityCheckService
    from xiaohe.identity.server.errors import Unavailable
    from xiaohe.identity.server.realname.verifiers import HttpVerifier, HttpVerifierConfig

    service = IdentityCheckService("key", "secret-0123456789", lambda: int(env.clock.now() * 1000))
    service.people[ID_NUMBER] = NAME
    service.people["440524188001010014"] = "王五"
    base = await service.start()
    try:
        config = HttpVerifierConfig(base_url=base, app_key="key", app_secret="secret-0123456789")
        flow = env.flow(verifier=HttpVerifier(config, env.clock))
        matched, mismatched = await env.account(), await env.account()
        phone = (await env.accounts.get_personal_data(matched)).phone
        service.phones[ID_NUMBER] = phone.removeprefix("+86")  # a three-element check
        done = await flow.submit_natural(await natural(env, matched))
        assert done.state is State.VERIFIED
        assert await level_of(env, matched) == 2
        wrong = await flow.submit_natural(
            await natural(env, mismatched, name="李四", id_number="440524188001010014")
        )
        assert wrong.state is State.REJECTED
        assert "do not match" in wrong.reason
        unknown = await flow.submit_natural(await natural(env, mismatched, id_number=THIRD_ID))
        assert unknown.state is State.IN_REVIEW
        assert service.refused == []
        assert service.requests[0][0].endswith("/three-elements")
    finally:
        await service.close()
    down = HttpVerifierConfig(base_url=base, app_key="key", app_secret="x", timeout_seconds=1)
    nobody = await env.account()
    with pytest.raises(Unavailable):
        await env.flow(verifier=HttpVerifier(down, env.clock)).submit_natural(
            await natural(env, nobody, id_number=THIRD_ID)
        )
    assert (await env.flow().status(nobody)).state is None
