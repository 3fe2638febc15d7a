"""AccountService.Register over real gRPC: refusals name the field, store nothing (P2, I1).

A refused registration must leave no account behind and, when the request was
refused before the ticket was looked at (shapes, password policy, policy
version, a taken login name), must leave the ticket usable, so that the user
only corrects the form and submits again.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
import sqlalchemy as sa

from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, OTHER_PHONE, PASSWORD, PHONE, register_ticket
from tests.rpc_errors import Details, details_of
from xiaohe.identity.server.flows.registration import ORGANIZATION_TYPES, REPRESENTATIVE_TYPES
from xiaohe.identity.server.storage.schema import accounts, identifiers
from xiaohe.identity.v1 import (
    accounts_pb2,
    accounts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
)

ID_NUMBER = "11010519491231002X"
BAD_ID_NUMBER = "110105194912310021"  # check character should be X
USCC = "91350100M000100Y43"
BAD_USCC = "91350100M000100Y44"  # check character should be 3

Request = accounts_pb2.RegisterRequest
Edit = Callable[[Request], None]


def natural(ticket: str, **changes: str | int) -> Request:
    """A valid natural-person request (resident ID card) with `changes` applied.

    `id_number=""` leaves the ID document out altogether (it is optional).
    """
    request = Request(
        subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
        login_name=LOGIN_NAME,
        password=PASSWORD,
        phone=PHONE,
        phone_ticket=ticket,
        accepted_policy_version=1,
        natural_person=accounts_pb2.NaturalPersonProfile(
            name="张伟", id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=ID_NUMBER
        ),
    )
    for name, value in changes.items():
        if name == "id_number":
            request.natural_person.id_number = str(value)
            if not value:
                request.natural_person.id_type = common_pb2.ID_TYPE_UNSPECIFIED
        else:
            setattr(request, name, value)
    return request


def legal(ticket: str, **changes: str | int) -> Request:
    """A valid legal-person request with `changes` applied."""
    request = Request(
        subject_type=common_pb2.SUBJECT_TYPE_LEGAL_PERSON,
        login_name="fuzhou-tech",
        password=PASSWORD,
        phone=PHONE,
        phone_ticket=ticket,
        accepted_policy_version=1,
        legal_person=accounts_pb2.LegalPersonProfile(
            organization_name="福州示例科技有限公司", uscc=USCC
        ),
    )
    for name, value in changes.items():
        if name == "uscc":
            request.legal_person.uscc = str(value)
        else:
            setattr(request, name, value)
    return request


async def call_register(h: Harness, request: Request) -> accounts_pb2.RegisterResponse:
    """Register with the all-grants client."""
    return await accounts_pb2_grpc.AccountServiceStub(h.channel).Register(
        request, metadata=h.metadata
    )


async def refused(h: Harness, request: Request) -> Details:
    """The decoded error of a Register call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call_register(h, request)
    return details_of(caught.value)


async def stored(h: Harness) -> tuple[int, int]:
    """How many rows `accounts` and `identifiers` hold."""
    async with h.container.database.connect() as conn:
        n_accounts = (await conn.execute(sa.select(sa.func.count()).select_from(accounts))).scalar()
        n_identifiers = (
            await conn.execute(sa.select(sa.func.count()).select_from(identifiers))
        ).scalar()
    return int(n_accounts or 0), int(n_identifiers or 0)


async def login_ok(h: Harness, identifier: str, password: str = PASSWORD) -> str:
    """Sign in and return the account id (the registration really took effect)."""
    response = await auth_pb2_grpc.AuthServiceStub(h.channel).Login(
        auth_pb2.LoginRequest(
            password=auth_pb2.PasswordCredential(identifier=identifier, password=password)
        ),
        metadata=h.metadata,
    )
    return response.session.account_id


# -- shapes and the password policy: INVALID_ARGUMENT, nothing stored, ticket kept ------------


@pytest.mark.parametrize(
    ("make", "field", "why", "secret"),
    [
        pytest.param(
            lambda t: legal(t, uscc=BAD_USCC),
            "legal_person.uscc",
            "check digit",
            BAD_USCC,
            id="uscc-check-digit",
        ),
        pytest.param(
            lambda t: natural(t, id_number=BAD_ID_NUMBER),
            "natural_person.id_number",
            "check digit",
            BAD_ID_NUMBER,
            id="id-number-check-digit",
        ),
        pytest.param(
            lambda t: natural(t, password="password123"),
            "password",
            "common",
            "password123",
            id="common-password",
        ),
        pytest.param(
            lambda t: natural(t, password="12345678"),
            "password",
            "common",
            "12345678",
            id="common-digits",
        ),
        pytest.param(
            lambda t: natural(t, password="zhang.wei-Qingshan-2026"),
            "password",
            "login name",
            "zhang.wei-Qingshan-2026",
            id="password-with-login-name",
        ),
        pytest.param(
            lambda t: natural(t, password="Qingshan-ZhangWei-2026"),
            "password",
            "login name",
            "Qingshan-ZhangWei-2026",
            id="password-with-login-name-recased",
        ),
        pytest.param(
            lambda t: natural(t, password="Qingshan-13812345678"),
            "password",
            "phone",
            "13812345678",
            id="password-with-phone-digits",
        ),
        pytest.param(
            lambda t: natural(t, password="Xiaohe-Qingshan-2026"),
            "password",
            "platform name",
            "Xiaohe-Qingshan-2026",
            id="password-with-platform-name",
        ),
    ],
)
async def test_invalid_fields_are_named_and_nothing_is_stored(
    h: Harness, make: Callable[[str], Request], field: str, why: str, secret: str
) -> None:
    """P2 and identifier checks: INVALID_ARGUMENT names the (nested) field and says why."""
    ticket = await register_ticket(h, PHONE)
    request = make(ticket)
    d = await refused(h, request)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.reason == "INVALID_ARGUMENT"
    assert set(d.violations) == {field}
    assert why in d.violations[field]
    assert secret not in d.message
    assert secret not in d.violations[field]
    assert await stored(h) == (0, 0)

    # Corrected, the same ticket registers.
    corrected = make(ticket)
    corrected.password = PASSWORD
    if corrected.HasField("legal_person"):
        corrected.legal_person.uscc = USCC
    else:
        corrected.natural_person.id_number = ID_NUMBER
    account_id = (await call_register(h, corrected)).account_id
    assert account_id.startswith("acc_")
    assert await stored(h) == (1, 3)  # login name, phone and the USCC or ID number
    assert await login_ok(h, corrected.login_name) == account_id


async def test_all_violations_are_reported_at_once(h: Harness) -> None:
    """Every bad field is listed in one BadRequest, not just the first."""
    ticket = await register_ticket(h, PHONE)
    d = await refused(h, legal(ticket, uscc=BAD_USCC, password="12345678"))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(d.violations) == {"legal_person.uscc", "password"}
    assert await stored(h) == (0, 0)
    await call_register(h, legal(ticket))
    assert (await stored(h))[0] == 1


async def test_an_outdated_policy_version_is_a_failed_precondition(h: Harness) -> None:
    """Consent must be to the current policy: v1 after v2 is published is refused."""
    published = await h.container.policies.publish("# 隐私政策 第二版\n\n新的条款。\n")
    assert published.version == 2
    ticket = await register_ticket(h, PHONE)
    d = await refused(h, natural(ticket, accepted_policy_version=1))
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    assert d.reason == "FAILED_PRECONDITION"
    assert set(d.violations) == {"accepted_policy_version"}
    assert "2" in d.violations["accepted_policy_version"]
    assert await stored(h) == (0, 0)

    d = await refused(h, natural(ticket, accepted_policy_version=3))
    assert d.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await stored(h) == (0, 0)

    account_id = (await call_register(h, natural(ticket, accepted_policy_version=2))).account_id
    assert await login_ok(h, LOGIN_NAME) == account_id
    assert (await stored(h))[0] == 1


# -- identifiers already taken: ALREADY_EXISTS naming the field, revealing no owner ----------


async def test_a_taken_login_name_is_already_exists_and_keeps_the_ticket(h: Harness) -> None:
    """Login names are checked before the ticket is spent; the message names no account."""
    first = (await call_register(h, natural(await register_ticket(h, PHONE)))).account_id
    before = await stored(h)
    ticket = await register_ticket(h, OTHER_PHONE)
    for taken in (LOGIN_NAME, "ZHANG.WEI", "ｚｈａｎｇ.ｗｅｉ"):
        d = await refused(h, natural(ticket, login_name=taken, phone=OTHER_PHONE, id_number=""))
        assert d.code == grpc.StatusCode.ALREADY_EXISTS, taken
        assert d.reason == "ALREADY_EXISTS"
        assert set(d.violations) == {"login_name"}
        for leak in (first, PHONE, PHONE[3:], ID_NUMBER):
            assert leak not in d.message
            assert leak not in d.violations["login_name"]
    assert await stored(h) == before
    second = (
        await call_register(h, natural(ticket, login_name="li.na", phone=OTHER_PHONE, id_number=""))
    ).account_id
    assert second != first
    assert await login_ok(h, OTHER_PHONE) == second


async def test_a_taken_phone_is_already_exists_naming_the_field(h: Harness) -> None:
    """The caller has just proven control of the phone: ALREADY_EXISTS on `phone`, no owner."""
    owner = (await call_register(h, natural(await register_ticket(h, PHONE)))).account_id
    before = await stored(h)
    h.clock.advance(61)  # the per-destination resend cooldown
    d = await refused(h, natural(await register_ticket(h, PHONE), login_name="li.na", id_number=""))
    assert d.code == grpc.StatusCode.ALREADY_EXISTS
    assert d.reason == "ALREADY_EXISTS"
    assert set(d.violations) == {"phone"}
    for leak in (owner, LOGIN_NAME, PHONE, PHONE[3:], ID_NUMBER):
        assert leak not in d.message, leak
        assert leak not in d.violations["phone"], leak
    assert await stored(h) == before


@pytest.mark.parametrize(
    ("first", "second", "identifier"),
    [
        pytest.param(
            lambda t: natural(t),
            lambda t: natural(t, login_name="li.na", phone=OTHER_PHONE),
            ID_NUMBER,
            id="id-number",
        ),
        pytest.param(
            lambda t: legal(t),
            lambda t: legal(t, login_name="another-co", phone=OTHER_PHONE),
            USCC,
            id="uscc",
        ),
    ],
)
async def test_a_taken_id_number_or_uscc_is_not_confirmed(
    h: Harness,
    first: Callable[[str], Request],
    second: Callable[[str], Request],
    identifier: str,
) -> None:
    """F5 (I6's spirit, PIPL): registering with a stranger's ID number or USCC answers exactly
    like a free one; the document stays unbound (it neither logs in nor moves), and its
    holder, not the caller, is pointed to recovery or review on their own phone."""
    owner = (await call_register(h, first(await register_ticket(h, PHONE)))).account_id
    h.clock.advance(61)
    squatter_request = second(await register_ticket(h, OTHER_PHONE))
    answer = await call_register(h, squatter_request)
    assert answer.account_id.startswith("acc_")
    assert answer.account_id != owner
    assert set(answer.DESCRIPTOR.fields_by_name) == {"account_id"}

    assert await login_ok(h, squatter_request.login_name) == answer.account_id
    assert await login_ok(h, identifier) == owner  # the document still logs in its holder
    await h.drain_outbox()
    notices = [m for m in h.outbox_lines() if m["purpose"] == "NOTICE"]
    assert [m["to"] for m in notices] == [PHONE]
    assert "找回账号" in notices[0]["text"]
    assert "人工审核" in notices[0]["text"]
    for leak in (identifier, OTHER_PHONE[3:], squatter_request.login_name):
        assert leak not in notices[0]["text"]
    assert not [m for m in h.outbox_lines() if m["to"] == OTHER_PHONE and m["purpose"] == "NOTICE"]
    claims = await h.container.audit.query(action="account.identity_claimed")
    assert [(r.target, r.outcome) for r in claims] == [(owner, "notified")]


async def test_without_a_live_ticket_login_names_are_not_answered(h: Harness) -> None:
    """F6: a taken and a free login name get the same TICKET_INVALID without a ticket."""
    await call_register(h, natural(await register_ticket(h, PHONE)))
    answers = []
    for name in (LOGIN_NAME, "nobody.yet"):
        for ticket in ("bogus", "vt1.0123456789abcdef0123456789abcdef.xxxx"):
            d = await refused(h, natural(ticket, login_name=name, phone=OTHER_PHONE, id_number=""))
            answers.append((d.code, d.reason, d.message, tuple(d.violations)))
    assert len(set(answers)) == 1
    assert answers[0][:2] == (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID")


async def test_login_name_checks_are_limited_per_end_user(harness_factory: HarnessFactory) -> None:
    """F6: even with a live ticket, name checks from one address are bounded (per hour)."""
    h = await harness_factory(login_name_checks_per_ip_hour=3)
    await call_register(h, natural(await register_ticket(h, PHONE)))  # the first check
    ticket = await register_ticket(h, OTHER_PHONE)
    for _ in range(2):
        d = await refused(h, natural(ticket, phone=OTHER_PHONE, id_number=""))
        assert d.code == grpc.StatusCode.ALREADY_EXISTS
    d = await refused(h, natural(ticket, login_name="nobody.yet", phone=OTHER_PHONE, id_number=""))
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert d.quota_subjects == ["account.login_name.ip"]
    assert d.retry_after is not None


async def test_login_name_checks_are_limited_per_client(harness_factory: HarnessFactory) -> None:
    """F6: a client relaying many end users is bounded too (per minute)."""
    h = await harness_factory(login_name_checks_per_client_minute=2)
    ticket = await register_ticket(h, OTHER_PHONE)
    for _ in range(2):
        d = await refused(h, natural(ticket, phone=PHONE, id_number=""))
        assert d.reason == "TICKET_INVALID"  # a mismatch: refused before any name check
    await call_register(h, natural(ticket, login_name="li.na", phone=OTHER_PHONE, id_number=""))
    other = await register_ticket(h, "+8613700001111")
    await call_register(
        h, natural(other, login_name="wang.fang", phone="+8613700001111", id_number="")
    )
    third = await register_ticket(h, "+8613700002222")
    d = await refused(
        h, natural(third, login_name="zhao.lei", phone="+8613700002222", id_number="")
    )
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert d.quota_subjects == ["account.login_name.client"]


# -- tickets --------------------------------------------------------------------------------------


async def test_a_ticket_for_another_phone_is_ticket_invalid(h: Harness) -> None:
    """The REGISTER ticket is bound to its phone: TICKET_INVALID on `phone_ticket`."""
    ticket = await register_ticket(h, OTHER_PHONE)
    d = await refused(h, natural(ticket, phone=PHONE))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert d.reason == "TICKET_INVALID"
    assert set(d.violations) == {"phone_ticket"}
    assert PHONE not in d.message
    assert OTHER_PHONE not in d.message
    assert await stored(h) == (0, 0)

    # A mismatch does not spend the ticket: with its own phone it registers, once.
    account_id = (await call_register(h, natural(ticket, phone=OTHER_PHONE))).account_id
    assert await login_ok(h, OTHER_PHONE) == account_id
    d = await refused(h, natural(ticket, login_name="li.na", phone=OTHER_PHONE, id_number=""))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID")
    assert set(d.violations) == {"phone_ticket"}


@pytest.mark.parametrize("ticket", ["", "vt1.forged.ticket", "not a ticket"])
async def test_a_missing_or_forged_ticket_is_refused(h: Harness, ticket: str) -> None:
    """No account without a ticket; the error names `phone_ticket`."""
    d = await refused(h, natural(ticket))
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "phone_ticket" in d.violations
    assert await stored(h) == (0, 0)


# -- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phone", ["１３８１２３４５６７８", "＋８６ １３８ １２３４ ５６７８", "138 1234 5678"]
)
async def test_a_phone_in_full_width_digits_normalises_and_registers(
    h: Harness, phone: str
) -> None:
    """The phone is NFKC-normalised before the ticket binding is checked."""
    ticket = await register_ticket(h, PHONE)
    account_id = (await call_register(h, natural(ticket, phone=phone))).account_id
    assert await login_ok(h, PHONE) == account_id
    assert await login_ok(h, "13812345678") == account_id


# -- a legal person's representative (privacy policy 一.3, 一.5) -----------------------------------

REPRESENTATIVE_ID = "440524188001010014"


def with_representative(request: Request, **changes: str | int) -> Request:
    """`request` (a legal person) with its organisation type and representative."""
    org = request.legal_person
    org.organization_type = common_pb2.ORGANIZATION_TYPE_SOCIAL_ORGANIZATION
    org.representative_type = common_pb2.REPRESENTATIVE_TYPE_PERSON_IN_CHARGE
    org.representative_name = "欧阳 娜娜"
    org.representative_id_type = common_pb2.ID_TYPE_RESIDENT_ID_CARD
    org.representative_id_number = REPRESENTATIVE_ID
    for name, value in changes.items():
        setattr(org, name, value)
    return request


async def test_a_legal_person_registers_its_representative(h: Harness) -> None:
    """I1: organisation type and representative are stored in the encrypted profile; the
    representative's ID number is no identifier (it does not log in to the organisation)."""
    request = with_representative(legal(await register_ticket(h, PHONE)))
    account_id = (await call_register(h, request)).account_id
    data = await h.container.accounts.get_personal_data(account_id)
    assert (data.organization_type, data.representative_type) == (
        "SOCIAL_ORGANIZATION",
        "PERSON_IN_CHARGE",
    )
    assert (data.representative_name, data.representative_id_number) == (
        "欧阳 娜娜",
        REPRESENTATIVE_ID,
    )
    assert await stored(h) == (1, 3)  # login name, phone and USCC only
    assert await login_ok(h, "fuzhou-tech") == account_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await login_ok(h, REPRESENTATIVE_ID)
    assert details_of(caught.value).reason == "INVALID_CREDENTIALS"


@pytest.mark.parametrize(
    ("changes", "field", "why"),
    [
        pytest.param(
            {"representative_id_number": "440524188001010015"},
            "legal_person.representative_id_number",
            "check digit",
            id="id-number-check-digit",
        ),
        pytest.param(
            {"representative_id_type": common_pb2.ID_TYPE_UNSPECIFIED},
            "legal_person.representative_id_type",
            "must be specified",
            id="id-type-missing",
        ),
        pytest.param(
            {"representative_id_type": 99},
            "legal_person.representative_id_type",
            "unknown",
            id="id-type-unknown",
        ),
        pytest.param(
            {"organization_type": 99},
            "legal_person.organization_type",
            "unknown",
            id="organization-type-unknown",
        ),
        pytest.param(
            {"representative_type": 99},
            "legal_person.representative_type",
            "unknown",
            id="representative-type-unknown",
        ),
        pytest.param(
            {"representative_name": "欧阳\u0000娜娜"},
            "legal_person.representative_name",
            "control characters",
            id="name-control-character",
        ),
    ],
)
async def test_representative_fields_are_validated_by_path(
    h: Harness, changes: dict[str, str | int], field: str, why: str
) -> None:
    """F3: a bad representative field is INVALID_ARGUMENT naming its nested path, repeating
    no value; nothing is stored and the corrected request registers with the same ticket."""
    ticket = await register_ticket(h, PHONE)
    d = await refused(h, with_representative(legal(ticket), **changes))
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert set(d.violations) == {field}
    assert why in d.violations[field]
    assert "440524188001010015" not in d.message
    assert await stored(h) == (0, 0)
    assert (await call_register(h, with_representative(legal(ticket)))).account_id


def test_organisation_and_representative_types_match_the_api() -> None:
    """The flow's lists of organisation and representative types are the proto enums'."""
    organization = {
        k.removeprefix("ORGANIZATION_TYPE_") for k, _ in common_pb2.OrganizationType.items()
    }
    representative = {
        k.removeprefix("REPRESENTATIVE_TYPE_") for k, _ in common_pb2.RepresentativeType.items()
    }
    assert organization - {"UNSPECIFIED"} == ORGANIZATION_TYPES
    assert representative - {"UNSPECIFIED"} == REPRESENTATIVE_TYPES
