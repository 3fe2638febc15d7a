"""RecoveryService.RecoverAccount over real gRPC (privacy policy 一.5, issue 9 item 5).

Accounts are registered through the Register RPC, tickets come from IssueCode, the
dev SMS outbox and VerifyCode, and the reset grant is spent through
AccountService.ResetPassword, so every step a front end takes is the real one.
A match and a no-match must look the same in the response; only the bound phone
learns the difference, from the SMS that carries the full login name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
import sqlalchemy as sa

from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    code_ticket,
    register_ticket,
)
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.codes.tickets import parse_ticket
from xiaohe.identity.server.errors import TicketInvalid
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    recovery_pb2,
    recovery_pb2_grpc,
)

NAME = "张伟"
ID_NUMBER = "11010519491231002X"
LEGAL_LOGIN_NAME = "fuzhou-tech"
ORGANIZATION = "福州示例科技有限公司"
USCC = "91350100M000100Y43"
ORG_CODE = "M000100Y-4"  # characters 9-17 of USCC, as printed on an old certificate
OTHER_ORG_CODE = "666007217"  # a valid code of another organisation
REPRESENTATIVE = "王芳"
REPRESENTATIVE_ID = "440524188001010014"
THIRD_PHONE = "+8613700001111"
NEW_PASSWORD = "Chunfeng-Huayu-2031"
COOLING_OFF = 86400

Request = recovery_pb2.RecoverAccountRequest
Response = recovery_pb2.RecoverAccountResponse


# -- steps --------------------------------------------------------------------------------------


async def register_natural(
    h: Harness, login_name: str = LOGIN_NAME, phone: str = PHONE, *, id_number: str = ID_NUMBER
) -> str:
    """Register a natural person with name and (unless "") resident ID number."""
    profile = accounts_pb2.NaturalPersonProfile(name=NAME)
    if id_number:
        profile.id_type = common_pb2.ID_TYPE_RESIDENT_ID_CARD
        profile.id_number = id_number
    response = await accounts_pb2_grpc.AccountServiceStub(h.channel).Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=login_name,
            password=PASSWORD,
            phone=phone,
            phone_ticket=await register_ticket(h, phone),
            accepted_policy_version=1,
            natural_person=profile,
        ),
        metadata=h.metadata,
    )
    h.clock.advance(61)  # the next code to this phone may be sent
    await notices(h)  # a notice to the holder of a claimed ID number, if any
    return response.account_id


def legal_profile(*, representative: bool = True) -> accounts_pb2.LegalPersonProfile:
    """The organisation as registered: with its representative, or with the USCC only."""
    profile = accounts_pb2.LegalPersonProfile(organization_name=ORGANIZATION, uscc=USCC)
    if representative:
        profile.organization_type = common_pb2.ORGANIZATION_TYPE_ENTERPRISE
        profile.representative_type = common_pb2.REPRESENTATIVE_TYPE_LEGAL_REPRESENTATIVE
        profile.representative_name = REPRESENTATIVE
        profile.representative_id_type = common_pb2.ID_TYPE_RESIDENT_ID_CARD
        profile.representative_id_number = REPRESENTATIVE_ID
    return profile


async def register_legal(
    h: Harness, phone: str = OTHER_PHONE, *, representative: bool = True
) -> str:
    """Register the legal person (login name LEGAL_LOGIN_NAME)."""
    response = await accounts_pb2_grpc.AccountServiceStub(h.channel).Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_LEGAL_PERSON,
            login_name=LEGAL_LOGIN_NAME,
            password=PASSWORD,
            phone=phone,
            phone_ticket=await register_ticket(h, phone),
            accepted_policy_version=1,
            legal_person=legal_profile(representative=representative),
        ),
        metadata=h.metadata,
    )
    h.clock.advance(61)
    await notices(h)
    return response.account_id


async def recovery_ticket(h: Harness, phone: str) -> str:
    """A RECOVER_ACCOUNT ticket for `phone`; the clock then moves past the resend cooldown."""
    ticket = await code_ticket(h, phone, common_pb2.PURPOSE_RECOVER_ACCOUNT)
    h.clock.advance(61)
    return ticket


def natural(ticket: str, phone: str = PHONE, **changes: str | int) -> Request:
    """A recovery request of the natural person, `changes` applied to its identity."""
    person = recovery_pb2.NaturalPersonIdentity(
        name=NAME, id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=ID_NUMBER
    )
    for name, value in changes.items():
        setattr(person, name, value)
    return Request(natural_person=person, phone=phone, phone_ticket=ticket)


def legal(ticket: str, phone: str = OTHER_PHONE, **changes: str | int) -> Request:
    """A recovery request of the legal person, `changes` applied to its identity."""
    org = recovery_pb2.LegalPersonIdentity(
        organization_name=ORGANIZATION,
        organization_type=common_pb2.ORGANIZATION_TYPE_ENTERPRISE,
        uscc=USCC,
        representative_type=common_pb2.REPRESENTATIVE_TYPE_LEGAL_REPRESENTATIVE,
        representative_name=REPRESENTATIVE,
        representative_id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD,
        representative_id_number=REPRESENTATIVE_ID,
    )
    for name, value in changes.items():
        setattr(org, name, value)
    return Request(legal_person=org, phone=phone, phone_ticket=ticket)


async def recover(h: Harness, request: Request) -> Response:
    """RecoverAccount with the all-grants client; any notice it queued is delivered."""
    response = await recovery_pb2_grpc.RecoveryServiceStub(h.channel).RecoverAccount(
        request, metadata=h.metadata
    )
    await notices(h)
    return response


async def refused(h: Harness, request: Request) -> Details:
    """The decoded error of a RecoverAccount call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await recover(h, request)
    return details_of(caught.value)


async def notices(h: Harness) -> list[dict[str, str]]:
    """Every security notice delivered to the dev SMS outbox so far.

    Waits until no queued message is left undelivered: a notice is handed to the
    background dispatcher at commit, and must not land in the dev outbox later,
    between a test's count and its next code.
    """
    for _ in range(100):
        await h.drain_outbox()
        async with h.container.database.connect() as conn:
            open_rows = (
                await conn.execute(
                    sa.text("SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'sending')")
                )
            ).scalar_one()
        if not open_rows:
            break
        await asyncio.sleep(0.02)
    return [m for m in h.outbox_lines("sms") if m["purpose"] == "NOTICE"]


async def reset_password(h: Harness, identifier: str, grant: str) -> None:
    """AccountService.ResetPassword with a recovery grant."""
    await accounts_pb2_grpc.AccountServiceStub(h.channel).ResetPassword(
        accounts_pb2.ResetPasswordRequest(
            identifier=identifier, ticket=grant, new_password=NEW_PASSWORD
        ),
        metadata=h.metadata,
    )


async def login_account(h: Harness, identifier: str, password: str) -> str:
    """Sign in; the account id."""
    response = await auth_pb2_grpc.AuthServiceStub(h.channel).Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=identifier, password=password)
        ),
        metadata=h.metadata,
    )
    return response.session.account_id


async def recover_outcomes(h: Harness) -> list[tuple[str, str]]:
    """(target, outcome) of every `account.recover` audit record."""
    return [(r.target, r.outcome) for r in await h.container.audit.query(action="account.recover")]


def shape(response: Response) -> tuple[object, ...]:
    """What a caller can tell about a response without the phone: fields, lengths, forms."""
    grant = parse_ticket(response.reset_grant)
    return (
        tuple(f.name for f, _ in response.ListFields()),
        len(response.login_name_masked),
        response.login_name_masked[1:-1],
        response.login_name_masked[0].isalpha(),
        len(response.reset_grant),
        grant is not None and len(grant.tag),
        response.reset_grant_expires_in_seconds,
    )


def no_personal_data(d: Details, *values: str) -> None:
    """The error names nothing the request or the account holds."""
    text = d.message + " ".join(d.violations.values())
    for value in (PHONE, PHONE[3:], LOGIN_NAME, NAME, ID_NUMBER, USCC, REPRESENTATIVE, *values):
        assert value not in text, value


# -- a match ------------------------------------------------------------------------------------


async def test_a_natural_person_recovers_the_login_name_and_resets_the_password(
    h: Harness,
) -> None:
    """H2, C5: name and ID as held → the masked login name, the full one by SMS to the bound
    phone only, and a single-use grant that ResetPassword accepts with the login name."""
    account_id = await register_natural(h)
    before = len(await notices(h))
    ticket = await recovery_ticket(h, PHONE)
    response = await recover(h, natural(ticket, id_number=" 110105 19491231 002x "))

    assert response.login_name_masked == "z******i"
    assert response.reset_grant_expires_in_seconds == 600
    assert parse_ticket(response.reset_grant) is not None
    sent = (await notices(h))[before:]
    assert [m["to"] for m in sent] == [PHONE]
    assert LOGIN_NAME in sent[0]["text"]
    assert ID_NUMBER not in sent[0]["text"]
    assert await recover_outcomes(h) == [(account_id, "matched")]

    await reset_password(h, LOGIN_NAME, response.reset_grant)
    assert await login_account(h, LOGIN_NAME, NEW_PASSWORD) == account_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # single use
        await reset_password(h, LOGIN_NAME, response.reset_grant)
    assert details_of(caught.value).reason == "TICKET_INVALID"


async def test_a_legal_person_recovers_with_uscc_and_representative(h: Harness) -> None:
    """H2, C5: every held field (organisation name and type, USCC, representative type,
    name, ID type and number) given → masked name, SMS, and a grant for this account only."""
    await register_natural(h)
    account_id = await register_legal(h)
    before = len(await notices(h))
    ticket = await recovery_ticket(h, OTHER_PHONE)
    response = await recover(
        h, legal(ticket, organization_name=" 福州示例科技有限公司 ", representative_name="王　芳")
    )

    assert response.login_name_masked == "f******h"
    sent = (await notices(h))[before:]
    assert [m["to"] for m in sent] == [OTHER_PHONE]
    assert LEGAL_LOGIN_NAME in sent[0]["text"]
    assert (account_id, "matched") in await recover_outcomes(h)

    # The grant names this account: it resets no other account (and is spent trying).
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reset_password(h, LOGIN_NAME, response.reset_grant)
    assert details_of(caught.value).reason == "TICKET_INVALID"
    assert await login_account(h, LOGIN_NAME, PASSWORD)

    again = await recover(h, legal(await recovery_ticket(h, OTHER_PHONE)))
    await reset_password(h, LEGAL_LOGIN_NAME, again.reset_grant)
    assert await login_account(h, LEGAL_LOGIN_NAME, NEW_PASSWORD) == account_id


async def test_an_organisation_code_stands_for_the_uscc(h: Harness) -> None:
    """C5: the 9-character organisation code (GB 11714) matches characters 9-17 of the held
    USCC; another organisation's valid code does not."""
    account_id = await register_legal(h)
    before = len(await notices(h))
    wrong = await recover(h, legal(await recovery_ticket(h, OTHER_PHONE), uscc=OTHER_ORG_CODE))
    assert (await notices(h))[before:] == []
    right = await recover(h, legal(await recovery_ticket(h, OTHER_PHONE), uscc=ORG_CODE))
    assert [m["to"] for m in (await notices(h))[before:]] == [OTHER_PHONE]
    assert shape(wrong) == shape(right)
    grant = await h.container.tickets.consume(
        right.reset_grant,
        purpose=Purpose.RESET_PASSWORD,
        channel=Channel.ACCOUNT,
        destination=account_id,
    )
    assert grant.destination == account_id


# -- no match -----------------------------------------------------------------------------------


NATURAL_MISMATCHES: dict[str, Callable[[str], Request]] = {
    "name": lambda t: natural(t, name="张卫"),
    "id-number": lambda t: natural(t, id_number="440524188001010014"),
    "id-type": lambda t: natural(t, id_type=common_pb2.ID_TYPE_PASSPORT),
    "subject-type": lambda t: legal(t, phone=PHONE),
}
LEGAL_MISMATCHES: dict[str, Callable[[str], Request]] = {
    "organization-name": lambda t: legal(t, organization_name="福州另一家科技有限公司"),
    "organization-type": lambda t: legal(
        t, organization_type=common_pb2.ORGANIZATION_TYPE_PUBLIC_INSTITUTION
    ),
    "uscc": lambda t: legal(t, uscc="91310110666007217T"),
    "representative-type": lambda t: legal(
        t, representative_type=common_pb2.REPRESENTATIVE_TYPE_PERSON_IN_CHARGE
    ),
    "representative-name": lambda t: legal(t, representative_name="王芬"),
    "representative-id-type": lambda t: legal(
        t, representative_id_type=common_pb2.ID_TYPE_PASSPORT
    ),
    "representative-id-number": lambda t: legal(t, representative_id_number=ID_NUMBER),
}


@pytest.mark.parametrize(
    ("subject", "wrong"),
    [("natural", name) for name in NATURAL_MISMATCHES]
    + [("legal", name) for name in LEGAL_MISMATCHES],
)
async def test_no_match_answers_like_a_match_and_sends_nothing(
    h: Harness, subject: str, wrong: str
) -> None:
    """B4: any held field that differs answers with the shape of a match (fields, lengths,
    forms, lifetime), a decoy that stays the same for the phone and opens nothing; nothing is
    sent, the ticket is spent and the attempt is audited without the phone."""
    natural_id = await register_natural(h)
    legal_id = await register_legal(h)
    make = (NATURAL_MISMATCHES | LEGAL_MISMATCHES)[wrong]
    phone, account_id = (PHONE, natural_id) if subject == "natural" else (OTHER_PHONE, legal_id)
    right = natural if subject == "natural" else legal
    match = await recover(h, right(await recovery_ticket(h, phone)))
    before = len(await notices(h))

    ticket = await recovery_ticket(h, phone)
    first = await recover(h, make(ticket))
    second = await recover(h, make(await recovery_ticket(h, phone)))

    assert shape(first) == shape(second) == shape(match)
    assert first.login_name_masked == second.login_name_masked  # stable for the phone
    first_grant, second_grant = parse_ticket(first.reset_grant), parse_ticket(second.reset_grant)
    assert first_grant is not None
    assert second_grant is not None
    assert first_grant.tag == second_grant.tag
    assert first.reset_grant != second.reset_grant
    assert (await notices(h))[before:] == []

    for decoy in (first.reset_grant, second.reset_grant):
        with pytest.raises(TicketInvalid):
            await h.container.tickets.consume(
                decoy,
                purpose=Purpose.RESET_PASSWORD,
                channel=Channel.ACCOUNT,
                destination=account_id,
            )
    d = await refused(h, make(ticket))  # the ticket was spent
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID")

    outcomes = await recover_outcomes(h)
    assert outcomes[0] == (account_id, "matched")
    assert [o for _, o in outcomes[1:]] == ["no_match", "no_match"]
    tags = {t for t, _ in outcomes[1:]}
    assert len(tags) == 1
    assert not tags & {phone, phone[3:], account_id, natural_id, legal_id}


async def test_a_decoy_grant_is_refused_by_reset_password(h: Harness) -> None:
    """B4: ResetPassword answers a decoy grant exactly like a spent or expired ticket."""
    await register_natural(h)
    decoy = await recover(h, natural(await recovery_ticket(h, PHONE), name="张卫"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reset_password(h, LOGIN_NAME, decoy.reset_grant)
    d = details_of(caught.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID")
    assert await login_account(h, LOGIN_NAME, PASSWORD)  # unchanged


async def test_a_phone_changed_within_the_cooling_off_window_answers_like_no_match(
    h: Harness,
) -> None:
    """B4: the phone bound less than `phone_change_cooling_off_seconds` ago recovers
    nothing (the decoy of that phone, nothing sent); once the window has passed it does."""
    account_id = await register_natural(h)
    await h.container.accounts.replace_contact(account_id, "phone", expected=PHONE, new=THIRD_PHONE)
    before = len(await notices(h))

    changed = await recover(h, natural(await recovery_ticket(h, THIRD_PHONE), phone=THIRD_PHONE))
    wrong = await recover(
        h, natural(await recovery_ticket(h, THIRD_PHONE), phone=THIRD_PHONE, name="张卫")
    )
    assert changed.login_name_masked == wrong.login_name_masked  # the phone's decoy
    changed_grant, wrong_grant = parse_ticket(changed.reset_grant), parse_ticket(wrong.reset_grant)
    assert changed_grant is not None
    assert wrong_grant is not None
    assert changed_grant.tag == wrong_grant.tag
    assert (await notices(h))[before:] == []
    assert [o for _, o in await recover_outcomes(h)] == ["no_match", "no_match"]

    h.clock.advance(COOLING_OFF)
    after = await recover(h, natural(await recovery_ticket(h, THIRD_PHONE), phone=THIRD_PHONE))
    assert after.login_name_masked == "z******i"
    assert [m["to"] for m in (await notices(h))[before:]] == [THIRD_PHONE]


# -- tickets ------------------------------------------------------------------------------------


async def _login_ticket(h: Harness) -> str:
    ticket = await code_ticket(h, PHONE, common_pb2.PURPOSE_LOGIN)
    h.clock.advance(61)
    return ticket


async def _other_phone_ticket(h: Harness) -> str:
    return await recovery_ticket(h, OTHER_PHONE)


async def _expired_ticket(h: Harness) -> str:
    ticket = await recovery_ticket(h, PHONE)
    h.clock.advance(600)
    return ticket


async def _used_ticket(h: Harness) -> str:
    ticket = await recovery_ticket(h, PHONE)
    await recover(h, natural(ticket))
    return ticket


@pytest.mark.parametrize(
    "make_ticket",
    [
        pytest.param(_login_ticket, id="wrong-purpose"),
        pytest.param(_other_phone_ticket, id="other-destination"),
        pytest.param(_expired_ticket, id="expired"),
        pytest.param(_used_ticket, id="reused"),
    ],
)
async def test_a_ticket_that_proves_nothing_is_ticket_invalid(
    h: Harness, make_ticket: Callable[[Harness], Awaitable[str]]
) -> None:
    """C2, C5: a LOGIN ticket, another phone's ticket, an expired and a used ticket are
    TICKET_INVALID on `phone_ticket`; nothing is sent and nothing is matched."""
    await register_natural(h)
    await register_natural(h, OTHER_LOGIN_NAME, OTHER_PHONE, id_number="")
    ticket = await make_ticket(h)
    before = (len(await notices(h)), await recover_outcomes(h))

    d = await refused(h, natural(ticket))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID")
    assert set(d.violations) == {"phone_ticket"}
    no_personal_data(d, OTHER_PHONE)
    assert (len(await notices(h)), await recover_outcomes(h)) == before


async def test_two_concurrent_calls_with_one_ticket_one_wins(h: Harness) -> None:
    """C5: the same ticket in two concurrent recoveries: one answer, one TICKET_INVALID,
    one SMS."""
    await register_natural(h)
    before = len(await notices(h))
    ticket = await recovery_ticket(h, PHONE)
    results = await asyncio.gather(
        recover(h, natural(ticket)), recover(h, natural(ticket)), return_exceptions=True
    )
    answers = [r for r in results if isinstance(r, Response)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(answers) == len(errors) == 1
    assert details_of(errors[0]).reason == "TICKET_INVALID"
    assert len((await notices(h))[before:]) == 1


# -- limits -------------------------------------------------------------------------------------


async def test_recoveries_through_one_phone_are_limited_per_day(
    harness_factory: HarnessFactory,
) -> None:
    """B4: no-matches count like matches against `account.recover.phone`; past the limit the
    right details get RESOURCE_EXHAUSTED, nothing is sent, and the ticket is spent."""
    h = await harness_factory(recovery_per_phone_day=2)
    await register_natural(h)
    before = len(await notices(h))
    for _ in range(2):
        await recover(h, natural(await recovery_ticket(h, PHONE), name="张卫"))

    ticket = await recovery_ticket(h, PHONE)
    d = await refused(h, natural(ticket))
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert d.quota_subjects == ["account.recover.phone"]
    assert d.retry_after is not None
    assert d.retry_after > 0
    no_personal_data(d)
    assert (await notices(h))[before:] == []
    d = await refused(h, natural(ticket))
    assert d.reason == "TICKET_INVALID"

    h.clock.advance(86400)
    assert (await recover(h, natural(await recovery_ticket(h, PHONE)))).login_name_masked == (
        "z******i"
    )


async def test_recoveries_from_one_address_are_limited_per_hour(
    harness_factory: HarnessFactory,
) -> None:
    """B4: one end-user address may try `recovery_per_ip_hour` recoveries, across phones."""
    h = await harness_factory(recovery_per_ip_hour=2)
    await register_natural(h)
    await register_natural(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    await register_natural(h, "wang.fang", THIRD_PHONE)
    await recover(h, natural(await recovery_ticket(h, PHONE)))
    await recover(h, natural(await recovery_ticket(h, OTHER_PHONE), phone=OTHER_PHONE))
    before = len(await notices(h))

    d = await refused(h, natural(await recovery_ticket(h, THIRD_PHONE), phone=THIRD_PHONE))
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert d.quota_subjects == ["account.recover.ip"]
    assert (await notices(h))[before:] == []

    h.clock.advance(3600)
    recovered = await recover(h, natural(await recovery_ticket(h, THIRD_PHONE), phone=THIRD_PHONE))
    assert recovered.login_name_masked == "w******g"


# -- manual review ------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ["natural-without-id-number", "legal-without-representative"])
async def test_an_account_holding_too_little_is_pointed_at_manual_review(
    h: Harness, subject: str
) -> None:
    """B4: an account without an ID number, or an organisation without its representative,
    cannot be matched: FAILED_PRECONDITION naming manual review, revealing no data, sending
    nothing (the caller has proven the account's phone)."""
    if subject.startswith("natural"):
        account_id = await register_natural(h, id_number="")
        request = natural(await recovery_ticket(h, PHONE))
    else:
        account_id = await register_legal(h, representative=False)
        request = legal(await recovery_ticket(h, OTHER_PHONE))
    before = len(await notices(h))

    d = await refused(h, request)
    assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION")
    assert "manual review" in d.message
    no_personal_data(d, OTHER_PHONE, LEGAL_LOGIN_NAME, account_id)
    assert (await notices(h))[before:] == []
    assert await recover_outcomes(h) == [(account_id, "manual_review")]


async def test_manual_review_as_the_proof_needs_the_new_phone_and_documents(h: Harness) -> None:
    """Someone who lost the phone asks for manual review (tests/integration/review): without
    the phone they hold now, its ticket and documents, INVALID_ARGUMENT names each field and
    nothing is spent."""
    await register_natural(h)
    request = Request(
        natural_person=natural("").natural_person,
        phone=PHONE,
        manual_review=common_pb2.ManualReviewProof(),
    )
    d = await refused(h, request)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(d.violations) == {
        "manual_review.new_phone",
        "manual_review.new_phone_ticket",
        "manual_review.document_ids",
    }
    assert await recover_outcomes(h) == []


# -- malformed requests -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "fields"),
    [
        pytest.param(lambda t: Request(phone=PHONE, phone_ticket=t), {"subject"}, id="no-subject"),
        pytest.param(
            lambda t: natural(t, name="", id_number="110105194912310021"),
            {"natural_person.name", "natural_person.id_number"},
            id="natural-name-and-check-digit",
        ),
        pytest.param(
            lambda t: natural(t, id_type=common_pb2.ID_TYPE_UNSPECIFIED),
            {"natural_person.id_type"},
            id="natural-id-type",
        ),
        pytest.param(
            lambda t: legal(
                t,
                phone=PHONE,
                uscc="91350100M000100Y44",
                organization_type=common_pb2.ORGANIZATION_TYPE_UNSPECIFIED,
                representative_id_number="",
            ),
            {
                "legal_person.uscc",
                "legal_person.organization_type",
                "legal_person.representative_id_number",
            },
            id="legal-fields",
        ),
        pytest.param(lambda t: natural(t, phone="12345"), {"phone"}, id="phone"),
    ],
)
async def test_a_malformed_request_names_its_fields_and_keeps_the_ticket(
    h: Harness, make: Callable[[str], Request], fields: set[str]
) -> None:
    """F3: INVALID_ARGUMENT lists every bad field by its request path, repeats no value, and
    spends nothing: the corrected request recovers with the same ticket."""
    await register_natural(h)
    ticket = await recovery_ticket(h, PHONE)
    d = await refused(h, make(ticket))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(d.violations) == fields
    no_personal_data(d, "110105194912310021", "91350100M000100Y44")
    assert await recover_outcomes(h) == []
    assert (await recover(h, natural(ticket))).login_name_masked == "z******i"
