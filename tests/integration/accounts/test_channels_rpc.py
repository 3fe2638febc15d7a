"""AccountService.BindPhone, BindEmail and UnbindEmail over real gRPC (SECURITY H1, H2, T3, B1).

Accounts without a phone do not come out of registration today; the tests make
one by clearing the phone of a registered account through
`AccountService.replace_contact`, as an account from before phones were
required would be. Codes arrive in the dev outbox and are verified into tickets
through the real RPCs; the code limits are opened (`OPEN_LIMITS`) so that a test
may ask for as many as it needs.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.accounts.channel_steps import (
    ADDRESS,
    BIND_EMAIL,
    BIND_PHONE,
    CHANGE_PHONE,
    EMAIL,
    NEW_PHONE,
    OTHER_ADDRESS,
    REGISTER,
    THIRD_PHONE,
    TICKET_TTL,
    assert_no_secret,
    bearer,
    delivered,
    login_as,
    me,
    notices,
    open_harness,
    phone_of,
    phoneless,
    refused,
    refused_within_a_second,
    register,
    same_answer,
    sms_login,
    ticket,
    ticket_refusal,
    valid,
)
from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import (
    LOGIN_NAME,
    OTHER_LOGIN_NAME,
    OTHER_PHONE,
    PASSWORD,
    PHONE,
    stubs,
)
from xiaohe.identity.server.shared.identifiers import IdentifierKind
from xiaohe.identity.v1 import accounts_pb2, auth_pb2

WRONG_PASSWORD = "Not-The-Password-2026"


@pytest.fixture
async def h(harness_factory: HarnessFactory) -> Harness:
    """A server with open code limits."""
    return await open_harness(harness_factory)


async def bind_phone(
    h: Harness,
    phone_ticket: str,
    *,
    phone: str = NEW_PHONE,
    login_name: str = LOGIN_NAME,
    password: str = PASSWORD,
) -> accounts_pb2.BindPhoneResponse:
    """BindPhone with the all-grants client."""
    return await stubs(h).accounts.BindPhone(
        accounts_pb2.BindPhoneRequest(
            login_name=login_name, password=password, phone=phone, phone_ticket=phone_ticket
        ),
        metadata=h.metadata,
    )


async def bind_email(
    h: Harness,
    session: auth_pb2.Session,
    email_ticket: str,
    *,
    email: str = ADDRESS,
    current_email_ticket: str = "",
    password: str = PASSWORD,
) -> accounts_pb2.BindEmailResponse:
    """BindEmail for the session's account (with the account's password unless told)."""
    return await stubs(h).accounts.BindEmail(
        accounts_pb2.BindEmailRequest(
            email=email,
            email_ticket=email_ticket,
            current_email_ticket=current_email_ticket,
            password=password,
        ),
        metadata=h.metadata + bearer(session),
    )


async def unbind_email(
    h: Harness, session: auth_pb2.Session, password: str = PASSWORD
) -> accounts_pb2.UnbindEmailResponse:
    """UnbindEmail for the session's account."""
    return await stubs(h).accounts.UnbindEmail(
        accounts_pb2.UnbindEmailRequest(password=password), metadata=h.metadata + bearer(session)
    )


async def email_of(h: Harness, account_id: str) -> str:
    """The account's bound email, read from the store."""
    return (await h.container.accounts.get_personal_data(account_id)).email


# -- BindPhone -------------------------------------------------------------------------------


async def test_bind_phone_binds_a_first_phone_and_tells_the_email(h: Harness) -> None:
    """H1, H2, T3: login name + password + a BIND_PHONE ticket bind a first phone; the bound
    email gets the `phone_bound` notice (masked, no code), the account's sessions end, and the
    new phone logs in by SMS."""
    account_id = await phoneless(h, LOGIN_NAME)
    session = await login_as(h, LOGIN_NAME)
    await bind_email(h, session, await ticket(h, ADDRESS, BIND_EMAIL, EMAIL))
    session = await login_as(h, LOGIN_NAME)
    emails_before = len(await notices(h, "email"))

    bound = await bind_phone(h, await ticket(h, NEW_PHONE, BIND_PHONE))

    assert bound.phone_masked == "137****1111"
    assert await phone_of(h, account_id) == NEW_PHONE
    await refused_within_a_second(h, session)
    told = (await notices(h, "email"))[emails_before:]
    assert [n["to"] for n in told] == [ADDRESS]
    assert "137****1111" in told[0]["text"]
    assert_no_secret(told[0]["text"], NEW_PHONE)
    assert (await sms_login(h, NEW_PHONE)).account_id == account_id
    assert (await login_as(h, NEW_PHONE)).account_id == account_id


async def test_bind_phone_with_a_wrong_password_counts_toward_the_lock(h: Harness) -> None:
    """B1, B2: a wrong password at BindPhone is a failed login: ten from one address lock the
    account there, for BindPhone and Login alike, until the lock runs out."""
    account_id = await phoneless(h, LOGIN_NAME)
    phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    for _ in range(10):
        wrong = await refused(bind_phone(h, phone_ticket, password=WRONG_PASSWORD))
        assert (wrong.code, wrong.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_CREDENTIALS",
        )
    locked = await refused(bind_phone(h, phone_ticket))
    assert same_answer(locked, wrong)
    assert same_answer(await refused(login_as(h, LOGIN_NAME)), await refused(login_as(h, "x_no")))
    assert await phone_of(h, account_id) == ""
    h.clock.advance(60)
    assert (await bind_phone(h, phone_ticket)).phone_masked == "137****1111"


async def test_bind_phone_for_an_unknown_login_name_answers_like_a_wrong_password(
    h: Harness,
) -> None:
    """B3: an unknown or malformed login name gets exactly the wrong-password answer, and
    nothing is bound or sent."""
    await phoneless(h, LOGIN_NAME)
    phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    before = await delivered(h)
    wrong = await refused(bind_phone(h, phone_ticket, password=WRONG_PASSWORD))
    unknown = await refused(bind_phone(h, phone_ticket, login_name="nobody.here"))
    malformed = await refused(bind_phone(h, phone_ticket, login_name="1x"))
    assert same_answer(wrong, unknown)
    assert same_answer(wrong, malformed)
    assert await delivered(h) == before
    assert await h.container.accounts.find_by_phone(NEW_PHONE) is None


async def test_bind_phone_to_a_phone_bound_elsewhere_is_already_exists(h: Harness) -> None:
    """H1: a phone another account holds is ALREADY_EXISTS on `phone`, saying nothing of whose;
    the account stays without a phone and the ticket stays usable."""
    account_id = await phoneless(h, LOGIN_NAME)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    phone_ticket = await ticket(h, OTHER_PHONE, BIND_PHONE)
    taken = await refused(bind_phone(h, phone_ticket, phone=OTHER_PHONE))
    assert (taken.code, taken.reason) == (grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS")
    assert list(taken.violations) == ["phone"]
    for secret in (OTHER_LOGIN_NAME, other_id, OTHER_PHONE, OTHER_PHONE[3:]):
        assert secret not in taken.message
        assert secret not in str(taken.violations)
    assert await phone_of(h, account_id) == ""
    # Once the other account gives the number up, the same ticket binds it.
    await h.container.accounts.replace_contact(other_id, "phone", expected=OTHER_PHONE, new="")
    assert (await bind_phone(h, phone_ticket, phone=OTHER_PHONE)).phone_masked == "139****4321"


async def test_bind_phone_to_an_account_with_a_phone_points_to_change_phone(h: Harness) -> None:
    """H1: an account that has a phone changes it with ChangePhone (which asks for proof of the
    old one); BindPhone answers FAILED_PRECONDITION, but only to the password's holder."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    wrong = await refused(bind_phone(h, phone_ticket, password=WRONG_PASSWORD))
    assert wrong.reason == "INVALID_CREDENTIALS"
    has_one = await refused(bind_phone(h, phone_ticket))
    assert has_one.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "ChangePhone" in has_one.message
    assert await phone_of(h, account_id) == PHONE


@pytest.mark.parametrize("case", ["wrong purpose", "other destination", "expired", "reused"])
async def test_bind_phone_refuses_a_ticket_that_proves_nothing(h: Harness, case: str) -> None:
    """C2, C5: a REGISTER ticket, a BIND_PHONE ticket for another number, an expired one and a
    used one are TICKET_INVALID on `phone_ticket`, before the password is looked at."""
    account_id = await phoneless(h, LOGIN_NAME)
    if case == "wrong purpose":
        phone_ticket = await ticket(h, NEW_PHONE, REGISTER)
    elif case == "other destination":
        phone_ticket = await ticket(h, THIRD_PHONE, BIND_PHONE)
    elif case == "expired":
        phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
        h.clock.advance(TICKET_TTL + 1)
    else:
        phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
        other_id = await phoneless(h, OTHER_LOGIN_NAME, OTHER_PHONE)
        await bind_phone(h, phone_ticket, login_name=OTHER_LOGIN_NAME)
        await h.container.accounts.replace_contact(other_id, "phone", expected=NEW_PHONE, new="")
    details = await refused(bind_phone(h, phone_ticket, password=WRONG_PASSWORD))
    ticket_refusal(details, "phone_ticket")
    assert await phone_of(h, account_id) == ""


async def test_bind_phone_malformed_requests_name_every_field(h: Harness) -> None:
    """F3: empty and malformed fields are INVALID_ARGUMENT naming each, before any work."""
    details = await refused(bind_phone(h, "", phone="12345", login_name=" ", password=""))
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(details.violations) == {"login_name", "password", "phone", "phone_ticket"}


# -- BindEmail and UnbindEmail ------------------------------------------------------------------


async def test_bind_replace_and_unbind_an_email(h: Harness) -> None:
    """H1, H2, T3: a first email needs its BIND_EMAIL ticket, replacing it also needs a ticket of
    the bound address, and removing it the password; each change tells the old channels (masked,
    no code), ends the other sessions and keeps the caller's."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    caller = await login_as(h, LOGIN_NAME)
    other = await login_as(h, PHONE)

    bound = await bind_email(h, caller, await ticket(h, ADDRESS, BIND_EMAIL, EMAIL))
    assert bound.email_masked == "z***@example.cn"
    assert (await me(h, caller)).email_masked == "z***@example.cn"
    await refused_within_a_second(h, other)
    assert await valid(h, caller)
    told = (await notices(h, "sms"))[-1]
    assert told["to"] == PHONE
    assert "z***@example.cn" in told["text"]
    assert_no_secret(told["text"], ADDRESS)
    assert (await login_as(h, ADDRESS)).account_id == account_id

    # Replacing: the new address's ticket alone is not enough.
    other = await login_as(h, PHONE)
    new_ticket = await ticket(h, OTHER_ADDRESS, BIND_EMAIL, EMAIL)
    missing = await refused(bind_email(h, caller, new_ticket, email=OTHER_ADDRESS))
    assert missing.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "current_email_ticket" in missing.message
    assert list(missing.violations) == ["current_email_ticket"]
    wrong = await refused(
        bind_email(
            h,
            caller,
            new_ticket,
            email=OTHER_ADDRESS,
            current_email_ticket=await ticket(h, OTHER_ADDRESS, BIND_EMAIL, EMAIL),
        )
    )
    ticket_refusal(wrong, "current_email_ticket")
    assert await email_of(h, account_id) == ADDRESS
    sms_before, emails_before = len(await notices(h)), len(await notices(h, "email"))
    replaced = await bind_email(
        h,
        caller,
        await ticket(h, OTHER_ADDRESS, BIND_EMAIL, EMAIL),
        email=OTHER_ADDRESS,
        current_email_ticket=await ticket(h, ADDRESS, BIND_EMAIL, EMAIL),
    )
    assert replaced.email_masked == "w***@example.com.cn"
    await refused_within_a_second(h, other)
    assert await valid(h, caller)
    told_sms = (await notices(h))[sms_before:]
    told_email = (await notices(h, "email"))[emails_before:]
    assert [n["to"] for n in told_sms] == [PHONE]
    assert [n["to"] for n in told_email] == [ADDRESS]  # the old address, not the new one
    for notice in told_sms + told_email:
        assert "w***@example.com.cn" in notice["text"]
        assert_no_secret(notice["text"], OTHER_ADDRESS)
    assert await h.container.accounts.find_credentials(IdentifierKind.EMAIL, ADDRESS) is None

    # Removing: the password is required and a wrong one is a failed login.
    other = await login_as(h, PHONE)
    wrong_password = await refused(unbind_email(h, caller, WRONG_PASSWORD))
    assert wrong_password.reason == "INVALID_CREDENTIALS"
    assert await email_of(h, account_id) == OTHER_ADDRESS
    sms_before, emails_before = len(await notices(h)), len(await notices(h, "email"))
    await unbind_email(h, caller)
    assert (await me(h, caller)).email_masked == ""
    await refused_within_a_second(h, other)
    assert await valid(h, caller)
    assert [n["to"] for n in (await notices(h))[sms_before:]] == [PHONE]
    assert [n["to"] for n in (await notices(h, "email"))[emails_before:]] == [OTHER_ADDRESS]
    assert (await refused(login_as(h, OTHER_ADDRESS))).reason == "INVALID_CREDENTIALS"
    none_left = await refused(unbind_email(h, caller))
    assert none_left.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_session_alone_cannot_bind_a_first_email(h: Harness) -> None:
    """H1, B1: BindEmail needs the current password for a first email as for a replacement, so
    a stolen access token cannot add the address that would then prove ChangePhone or
    ResetPassword. A missing password is INVALID_ARGUMENT on `password`; a wrong one is
    INVALID_CREDENTIALS, binds nothing, sends nothing and ends no session."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    caller = await login_as(h, LOGIN_NAME)
    other = await login_as(h, PHONE)
    email_ticket = await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)
    before = await delivered(h)

    missing = await refused(bind_email(h, caller, email_ticket, password=""))
    assert (missing.code, list(missing.violations)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["password"],
    )
    wrong = await refused(bind_email(h, caller, email_ticket, password=WRONG_PASSWORD))
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    assert await email_of(h, account_id) == ""
    assert await h.container.accounts.find_credentials(IdentifierKind.EMAIL, ADDRESS) is None
    assert await delivered(h) == before
    assert await valid(h, other)
    outcomes = [r.outcome for r in await h.container.audit.query(action="account.email.bind")]
    assert outcomes == ["invalid_credentials"]

    # The ticket was only checked: with the password it binds the address.
    assert (await bind_email(h, caller, email_ticket)).email_masked == "z***@example.cn"
    assert await email_of(h, account_id) == ADDRESS


async def test_bind_email_with_a_wrong_password_counts_toward_the_lock(h: Harness) -> None:
    """B1, B2: a wrong password at BindEmail is a failed login for the account and address:
    ten lock the account there, for BindEmail and Login alike, until the lock runs out. A
    request whose ticket proves nothing is refused before the password is looked at."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    caller = await login_as(h, LOGIN_NAME)
    email_ticket = await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)
    for _ in range(10):  # bad tickets cost no password attempt
        bad = await refused(bind_email(h, caller, "vt1.nothing", password=WRONG_PASSWORD))
        ticket_refusal(bad, "email_ticket")
    for _ in range(10):
        wrong = await refused(bind_email(h, caller, email_ticket, password=WRONG_PASSWORD))
        assert wrong.reason == "INVALID_CREDENTIALS"
    locked = await refused(bind_email(h, caller, email_ticket))
    assert same_answer(locked, wrong)
    assert (await refused(login_as(h, LOGIN_NAME))).reason == "INVALID_CREDENTIALS"
    assert await email_of(h, account_id) == ""
    h.clock.advance(60)
    assert (await bind_email(h, caller, email_ticket)).email_masked == "z***@example.cn"


async def test_replacing_an_email_needs_the_password_too(h: Harness) -> None:
    """H1: both tickets without the password do not replace the bound address."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    caller = await login_as(h, LOGIN_NAME)
    await bind_email(h, caller, await ticket(h, ADDRESS, BIND_EMAIL, EMAIL))
    new_ticket = await ticket(h, OTHER_ADDRESS, BIND_EMAIL, EMAIL)
    current_ticket = await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)
    wrong = await refused(
        bind_email(
            h,
            caller,
            new_ticket,
            email=OTHER_ADDRESS,
            current_email_ticket=current_ticket,
            password=WRONG_PASSWORD,
        )
    )
    assert wrong.reason == "INVALID_CREDENTIALS"
    assert await email_of(h, account_id) == ADDRESS
    await bind_email(
        h, caller, new_ticket, email=OTHER_ADDRESS, current_email_ticket=current_ticket
    )
    assert await email_of(h, account_id) == OTHER_ADDRESS


async def test_an_email_bound_elsewhere_is_already_exists(h: Harness) -> None:
    """H1: an address another account holds is ALREADY_EXISTS on `email`, not saying whose."""
    first_id = await register(h, LOGIN_NAME, PHONE)
    first = await login_as(h, LOGIN_NAME)
    await bind_email(h, first, await ticket(h, ADDRESS, BIND_EMAIL, EMAIL))
    await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    second = await login_as(h, OTHER_LOGIN_NAME)
    taken = await refused(bind_email(h, second, await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)))
    assert (taken.code, list(taken.violations)) == (grpc.StatusCode.ALREADY_EXISTS, ["email"])
    assert LOGIN_NAME not in taken.message
    assert first_id not in taken.message
    assert (await me(h, second)).email_masked == ""


@pytest.mark.parametrize("case", ["wrong purpose", "other destination", "expired", "reused"])
async def test_bind_email_refuses_a_ticket_that_proves_nothing(h: Harness, case: str) -> None:
    """C2, C5: a CHANGE_PHONE ticket, a BIND_EMAIL ticket for another address, an expired one
    and a used one are TICKET_INVALID on `email_ticket`; nothing is bound."""
    await register(h, LOGIN_NAME, PHONE)
    if case == "wrong purpose":
        email_ticket = await ticket(h, ADDRESS, CHANGE_PHONE, EMAIL)
    elif case == "other destination":
        email_ticket = await ticket(h, OTHER_ADDRESS, BIND_EMAIL, EMAIL)
    elif case == "expired":
        email_ticket = await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)
        h.clock.advance(TICKET_TTL + 1)
    else:
        email_ticket = await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)
        await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
        other = await login_as(h, OTHER_LOGIN_NAME)
        await bind_email(h, other, email_ticket)
        await unbind_email(h, other)
    caller = await login_as(h, LOGIN_NAME)
    ticket_refusal(await refused(bind_email(h, caller, email_ticket)), "email_ticket")
    assert (await me(h, caller)).email_masked == ""


async def test_the_email_rpcs_need_a_signed_in_user(h: Harness) -> None:
    """H1: BindEmail and UnbindEmail act on the signed-in caller's own account only; without
    an access token they are USER_UNAUTHENTICATED."""
    await register(h, LOGIN_NAME, PHONE)
    email_ticket = await ticket(h, ADDRESS, BIND_EMAIL, EMAIL)
    no_user = await refused(
        stubs(h).accounts.BindEmail(
            accounts_pb2.BindEmailRequest(
                email=ADDRESS, email_ticket=email_ticket, password=PASSWORD
            ),
            metadata=h.metadata,
        )
    )
    assert no_user.reason == "USER_UNAUTHENTICATED"
    no_user = await refused(
        stubs(h).accounts.UnbindEmail(
            accounts_pb2.UnbindEmailRequest(password=PASSWORD), metadata=h.metadata
        )
    )
    assert no_user.reason == "USER_UNAUTHENTICATED"
