"""AccountService.ChangePhone over real gRPC (SECURITY H1, H2, T3; privacy policy 一.6).

The account is named by login name, USCC or ID number, or is the signed-in
caller's. The new phone is proven by a BIND_PHONE ticket and the person by a
CHANGE_PHONE ticket of the bound phone or of the bound email. Codes arrive in
the dev outbox and are verified into tickets through the real RPCs; the code
limits are opened (`OPEN_LIMITS`) so that a test may ask for as many as it needs.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from tests.integration.accounts.channel_steps import (
    ADDRESS,
    BIND_EMAIL,
    BIND_PHONE,
    CHANGE_PHONE,
    EMAIL,
    LOGIN,
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
    refused,
    refused_within_a_second,
    register,
    register_ticket,
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
from tests.rpc_errors import details_of
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.v1 import accounts_pb2, auth_pb2, codes_pb2, common_pb2

ID_NUMBER = "11010519491231002X"
DAY = 86400


@pytest.fixture
async def h(harness_factory: HarnessFactory) -> Harness:
    """A server with open code limits and the default cooling-off window (24 h)."""
    return await open_harness(harness_factory)


def by_old_phone(
    new_phone_ticket: str,
    old_phone_ticket: str,
    *,
    identifier: str = LOGIN_NAME,
    new_phone: str = NEW_PHONE,
) -> accounts_pb2.ChangePhoneRequest:
    """A ChangePhone request proven by the bound phone."""
    return accounts_pb2.ChangePhoneRequest(
        identifier=identifier,
        new_phone=new_phone,
        new_phone_ticket=new_phone_ticket,
        old_phone_ticket=old_phone_ticket,
    )


def by_email(
    new_phone_ticket: str, email_ticket: str, *, identifier: str = LOGIN_NAME
) -> accounts_pb2.ChangePhoneRequest:
    """A ChangePhone request proven by the bound email."""
    request = by_old_phone(new_phone_ticket, "", identifier=identifier)
    request.email_ticket = email_ticket  # the other member of the `proof` oneof: replaces it
    return request


async def change_phone(
    h: Harness,
    request: accounts_pb2.ChangePhoneRequest,
    metadata: tuple[tuple[str, str], ...] = (),
) -> accounts_pb2.ChangePhoneResponse:
    """ChangePhone with the all-grants client (and a bearer token when given)."""
    return await stubs(h).accounts.ChangePhone(request, metadata=h.metadata + metadata)


async def with_email(
    h: Harness, login_name: str = LOGIN_NAME, address: str = ADDRESS
) -> auth_pb2.Session:
    """Bind `address` to the account (through BindEmail, signed in); returns that session."""
    session = await login_as(h, login_name)
    await stubs(h).accounts.BindEmail(
        accounts_pb2.BindEmailRequest(
            email=address,
            email_ticket=await ticket(h, address, BIND_EMAIL, EMAIL),
            password=PASSWORD,
        ),
        metadata=h.metadata + bearer(session),
    )
    return session


@pytest.fixture
def work(h: Harness, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the server's account lookups, personal-data reads, data-key unwraps and ticket
    checks (wrapping the instances every flow uses), so tests compare work, not time."""
    count: Counter[str] = Counter()

    def counted(owner: object, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        if asyncio.iscoroutinefunction(inner):

            async def wrapper(*args: object, **kwargs: object) -> object:
                count[name] += 1
                return await inner(*args, **kwargs)

            monkeypatch.setattr(owner, name, wrapper)
        else:

            def plain(*args: object, **kwargs: object) -> object:
                count[name] += 1
                return inner(*args, **kwargs)

            monkeypatch.setattr(owner, name, plain)

    for name in ("find_credentials", "get_credentials", "get_personal_data"):
        counted(h.container.accounts, name)
    counted(h.container.cipher, "unwrap")
    for name in ("check", "consume"):
        counted(h.container.tickets, name)
    return count


# -- success ----------------------------------------------------------------------------------


async def test_change_by_the_old_phone_moves_login_notifies_and_ends_sessions(h: Harness) -> None:
    """H1, H2, T3: the old phone's CHANGE_PHONE ticket and the new phone's BIND_PHONE ticket
    change the phone: the new one logs in (password and SMS), the old one no longer does; the
    old phone and the email are told, with the new number masked and no code; every session
    ends within a second (nobody was signed in to keep one)."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    sessions = [await with_email(h), await login_as(h, LOGIN_NAME), await sms_login(h, PHONE)]
    sms_before, emails_before = len(await notices(h)), len(await notices(h, "email"))

    changed = await change_phone(
        h,
        by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), await ticket(h, PHONE, CHANGE_PHONE)),
    )

    assert changed.phone_masked == "137****1111"
    assert changed.sessions_ended == 3
    await refused_within_a_second(h, *sessions)
    told = (await notices(h))[sms_before:] + (await notices(h, "email"))[emails_before:]
    assert [n["to"] for n in told] == [PHONE, ADDRESS]
    for notice in told:
        assert "137****1111" in notice["text"]
        assert_no_secret(notice["text"], NEW_PHONE, PHONE)
    assert (await sms_login(h, NEW_PHONE)).account_id == account_id
    assert (await login_as(h, NEW_PHONE)).account_id == account_id
    assert (await refused(login_as(h, PHONE))).reason == "INVALID_CREDENTIALS"
    # B4: a LOGIN code for the old number is no longer sent (it belongs to nobody now).
    sms_before_code = (await delivered(h))[0]
    await stubs(h).codes.IssueCode(
        codes_pb2.IssueCodeRequest(
            channel=common_pb2.CHANNEL_SMS, destination=PHONE, purpose=LOGIN
        ),
        metadata=h.metadata,
    )
    assert (await delivered(h))[0] == sms_before_code


async def test_change_by_email_signed_in_keeps_the_callers_session(h: Harness) -> None:
    """H1, H2, T3: a signed-in caller proves the account by its email and names no identifier;
    the caller's session stays, the others end, the old phone and the email are told."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    await with_email(h)  # its session lives on: refresh tokens outlast the day below
    h.clock.advance(DAY)  # an email bound within the cooling-off window proves nothing (H1)
    first = await login_as(h, LOGIN_NAME)
    caller = await login_as(h, LOGIN_NAME)
    other = await login_as(h, PHONE)
    sms_before, emails_before = len(await notices(h)), len(await notices(h, "email"))

    changed = await change_phone(
        h,
        by_email(
            await ticket(h, NEW_PHONE, BIND_PHONE),
            await ticket(h, ADDRESS, CHANGE_PHONE, EMAIL),
            identifier="",
        ),
        bearer(caller),
    )

    assert changed.sessions_ended == 3  # the binding session, `first` and `other`
    await refused_within_a_second(h, first, other)
    assert await valid(h, caller)
    assert (await me(h, caller)).phone_masked == "137****1111"
    assert [n["to"] for n in (await notices(h))[sms_before:]] == [PHONE]
    assert [n["to"] for n in (await notices(h, "email"))[emails_before:]] == [ADDRESS]
    assert (await login_as(h, NEW_PHONE)).account_id == account_id


async def test_the_account_can_be_named_by_its_id_number(h: Harness) -> None:
    """一.6: login name, USCC or ID number name the account (an ID number here, any spelling)."""
    registered = await stubs(h).accounts.Register(
        accounts_pb2.RegisterRequest(
            subject_type=common_pb2.SUBJECT_TYPE_NATURAL_PERSON,
            login_name=LOGIN_NAME,
            password=PASSWORD,
            phone=PHONE,
            phone_ticket=await register_ticket(h, PHONE),
            accepted_policy_version=1,
            natural_person=accounts_pb2.NaturalPersonProfile(
                name="张伟", id_type=common_pb2.ID_TYPE_RESIDENT_ID_CARD, id_number=ID_NUMBER
            ),
        ),
        metadata=h.metadata,
    )
    await change_phone(
        h,
        by_old_phone(
            await ticket(h, NEW_PHONE, BIND_PHONE),
            await ticket(h, PHONE, CHANGE_PHONE),
            identifier=ID_NUMBER.lower(),
        ),
    )
    assert await phone_of(h, registered.account_id) == NEW_PHONE


async def test_a_phone_or_email_does_not_name_the_account(h: Harness) -> None:
    """一.6: the identifier is a login name, USCC or ID number, not the channel being proven."""
    await register(h, LOGIN_NAME, PHONE)
    for identifier, field in ((PHONE, "identifier"), (ADDRESS, "identifier")):
        details = await refused(change_phone(h, by_old_phone("t", "t", identifier=identifier)))
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert list(details.violations) == [field]
    request = by_old_phone("t", "t")
    request.identifier_kind = common_pb2.IDENTIFIER_KIND_PHONE
    details = await refused(change_phone(h, request))
    assert list(details.violations) == ["identifier_kind"]
    missing = await refused(change_phone(h, by_old_phone("", "", identifier="", new_phone="1")))
    assert set(missing.violations) == {
        "identifier",
        "new_phone",
        "new_phone_ticket",
        "old_phone_ticket",
    }


async def test_manual_review_with_an_unknown_document_keeps_the_ticket(h: Harness) -> None:
    """H1: the third proof opens a review case (tests/integration/review); a document nobody
    uploaded is INVALID_ARGUMENT on the document ids, and the new phone's ticket stays usable."""
    await register(h, LOGIN_NAME, PHONE)
    new_phone_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    details = await refused(
        change_phone(
            h,
            accounts_pb2.ChangePhoneRequest(
                identifier=LOGIN_NAME,
                new_phone=NEW_PHONE,
                new_phone_ticket=new_phone_ticket,
                manual_review=common_pb2.ManualReviewProof(document_ids=["doc_1"]),
            ),
        )
    )
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert list(details.violations) == ["manual_review.document_ids"]
    claims = await h.container.tickets.check(
        new_phone_ticket, purpose=Purpose.BIND_PHONE, channel=Channel.SMS
    )
    assert claims.destination == NEW_PHONE


# -- the cooling-off window -------------------------------------------------------------------


async def test_a_second_change_waits_for_the_cooling_off_window(
    harness_factory: HarnessFactory,
) -> None:
    """H1: within `phone_change_cooling_off_seconds` of a change another one is
    FAILED_PRECONDITION (tickets kept, nothing changed or sent); after it, it goes through."""
    h = await open_harness(harness_factory, phone_change_cooling_off_seconds=3600)
    account_id = await register(h, LOGIN_NAME, PHONE)
    await change_phone(
        h,
        by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), await ticket(h, PHONE, CHANGE_PHONE)),
    )
    h.clock.advance(3300)
    second = by_old_phone(
        await ticket(h, THIRD_PHONE, BIND_PHONE),
        await ticket(h, NEW_PHONE, CHANGE_PHONE),
        new_phone=THIRD_PHONE,
    )
    before = await delivered(h)
    details = await refused(change_phone(h, second))
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "changed" in details.message
    assert await phone_of(h, account_id) == NEW_PHONE
    assert await delivered(h) == before
    h.clock.advance(300)  # the window is over; the tickets were not spent
    await change_phone(h, second)
    assert await phone_of(h, account_id) == THIRD_PHONE


async def test_the_default_window_is_a_day(h: Harness) -> None:
    """H1: by default another change is refused for 24 h after one."""
    await register(h, LOGIN_NAME, PHONE)
    await change_phone(
        h,
        by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), await ticket(h, PHONE, CHANGE_PHONE)),
    )
    h.clock.advance(DAY - TICKET_TTL)
    second = by_old_phone(
        await ticket(h, THIRD_PHONE, BIND_PHONE),
        await ticket(h, NEW_PHONE, CHANGE_PHONE),
        new_phone=THIRD_PHONE,
    )
    assert (await refused(change_phone(h, second))).code == grpc.StatusCode.FAILED_PRECONDITION
    h.clock.advance(TICKET_TTL - 1)
    assert (await refused(change_phone(h, second))).code == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("case", ["bound", "replaced"])
async def test_an_email_bound_within_the_window_does_not_prove_a_change(
    harness_factory: HarnessFactory, case: str
) -> None:
    """H1: an email bound (or replaced) less than `phone_change_cooling_off_seconds` ago does
    not prove a ChangePhone: FAILED_PRECONDITION, but only once the proof matched (an unknown
    identifier with the same proof is still TICKET_INVALID); nothing is changed or sent and
    the tickets are kept, so once the window is over the same request goes through."""
    h = await open_harness(harness_factory, phone_change_cooling_off_seconds=3600)
    account_id = await register(h, LOGIN_NAME, PHONE)
    session = await with_email(h)
    address = ADDRESS
    if case == "replaced":
        h.clock.advance(3600)  # the first address is past the window; its replacement is not
        session = await login_as(h, LOGIN_NAME)
        await stubs(h).accounts.BindEmail(
            accounts_pb2.BindEmailRequest(
                email=OTHER_ADDRESS,
                email_ticket=await ticket(h, OTHER_ADDRESS, BIND_EMAIL, EMAIL),
                current_email_ticket=await ticket(h, ADDRESS, BIND_EMAIL, EMAIL),
                password=PASSWORD,
            ),
            metadata=h.metadata + bearer(session),
        )
        address = OTHER_ADDRESS
    h.clock.advance(3300)
    new_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    proof = await ticket(h, address, CHANGE_PHONE, EMAIL)
    before = await delivered(h)

    unknown = await refused(change_phone(h, by_email(new_ticket, proof, identifier="nobody.here")))
    ticket_refusal(unknown, "email_ticket")
    fresh = await refused(change_phone(h, by_email(new_ticket, proof)))
    assert (fresh.code, fresh.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "FAILED_PRECONDITION",
    )
    assert "email was changed less than 1 h ago" in fresh.message
    assert address not in fresh.message
    assert await phone_of(h, account_id) == PHONE
    assert await delivered(h) == before

    h.clock.advance(300)  # the window is over; the tickets were not spent
    await change_phone(h, by_email(new_ticket, proof))
    assert await phone_of(h, account_id) == NEW_PHONE


# -- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", ["wrong purpose", "other account's phone", "unbound destination", "expired", "reused"]
)
async def test_a_proof_that_proves_nothing_is_ticket_invalid(h: Harness, case: str) -> None:
    """H1, C2, C5: a LOGIN ticket of the bound phone, a CHANGE_PHONE ticket of another number,
    an expired one and a used one are TICKET_INVALID on `old_phone_ticket`; nothing changes."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    if case == "wrong purpose":
        proof = await ticket(h, PHONE, LOGIN)
    elif case == "other account's phone":
        await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
        proof = await ticket(h, OTHER_PHONE, CHANGE_PHONE)
    elif case == "unbound destination":
        proof = await ticket(h, THIRD_PHONE, CHANGE_PHONE)
    elif case == "expired":
        proof = await ticket(h, PHONE, CHANGE_PHONE)
        h.clock.advance(TICKET_TTL + 1)
    else:
        proof = await ticket(h, PHONE, CHANGE_PHONE)
        third = await ticket(h, THIRD_PHONE, BIND_PHONE)
        await change_phone(h, by_old_phone(third, proof, new_phone=THIRD_PHONE))
        await h.container.accounts.replace_contact(
            account_id, "phone", expected=THIRD_PHONE, new=PHONE
        )
        h.clock.advance(DAY)
    details = await refused(
        change_phone(h, by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), proof))
    )
    ticket_refusal(details, "old_phone_ticket")
    assert await phone_of(h, account_id) == PHONE


@pytest.mark.parametrize("case", ["wrong purpose", "other destination", "expired", "reused"])
async def test_a_new_phone_ticket_that_proves_nothing_is_ticket_invalid(
    h: Harness, case: str
) -> None:
    """H1, C2, C5: the new phone needs a live BIND_PHONE ticket for exactly that number; others
    are TICKET_INVALID on `new_phone_ticket` and leave the old-phone proof unspent."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    if case == "wrong purpose":
        new_ticket = await ticket(h, NEW_PHONE, REGISTER)
    elif case == "other destination":
        new_ticket = await ticket(h, THIRD_PHONE, BIND_PHONE)
    elif case == "expired":
        new_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
        h.clock.advance(TICKET_TTL + 1)
    else:
        new_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
        await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
        await change_phone(
            h,
            by_old_phone(
                new_ticket, await ticket(h, OTHER_PHONE, CHANGE_PHONE), identifier=OTHER_LOGIN_NAME
            ),
        )
        other = await h.container.accounts.find_by_phone(NEW_PHONE)
        assert other is not None
        await h.container.accounts.replace_contact(
            other.account_id, "phone", expected=NEW_PHONE, new=OTHER_PHONE
        )
    proof = await ticket(h, PHONE, CHANGE_PHONE)
    details = await refused(change_phone(h, by_old_phone(new_ticket, proof)))
    ticket_refusal(details, "new_phone_ticket")
    assert await phone_of(h, account_id) == PHONE
    # The proof was only checked: it still works with a good new-phone ticket.
    await change_phone(h, by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), proof))
    assert await phone_of(h, account_id) == NEW_PHONE


async def test_an_unknown_identifier_answers_like_another_accounts_proof(h: Harness) -> None:
    """H1, B4: an identifier nobody holds, or a malformed one, answers exactly like a proof of
    another account's channel (TICKET_INVALID on the proof field), and nothing is sent or
    changed; the proof stays usable by its own account."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    await with_email(h)
    caller = await login_as(h, OTHER_LOGIN_NAME)
    new_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    others_proof = await ticket(h, OTHER_PHONE, CHANGE_PHONE)
    spare_proof = await ticket(h, OTHER_PHONE, CHANGE_PHONE)
    strangers_email = await ticket(h, "someone@example.org", CHANGE_PHONE, EMAIL)
    before = await delivered(h)

    answers = [
        await refused(change_phone(h, by_old_phone(new_ticket, others_proof))),
        await refused(
            change_phone(h, by_old_phone(new_ticket, others_proof, identifier="nobody.here"))
        ),
    ]
    for identifier in ("91350100M000100Y43", "1x", ID_NUMBER):  # unknown USCC, malformed, ...
        answers.append(
            await refused(
                change_phone(h, by_old_phone(new_ticket, spare_proof, identifier=identifier))
            )
        )
    # A signed-in caller naming another account is answered as for an unknown one.
    answers.append(
        await refused(change_phone(h, by_old_phone(new_ticket, spare_proof), bearer(caller)))
    )
    assert all(same_answer(answers[0], a) for a in answers[1:]), answers
    ticket_refusal(answers[0], "old_phone_ticket")
    email_answers = [
        await refused(change_phone(h, by_email(new_ticket, strangers_email, identifier=name)))
        for name in (LOGIN_NAME, "nobody.here")
    ]
    assert same_answer(*email_answers)
    ticket_refusal(email_answers[0], "email_ticket")
    assert await delivered(h) == before
    assert await phone_of(h, account_id) == PHONE
    # Two mismatches so far (the third would destroy it): its own account can still use it.
    await change_phone(
        h, by_old_phone(new_ticket, others_proof, identifier=OTHER_LOGIN_NAME), bearer(caller)
    )
    assert await phone_of(h, other_id) == NEW_PHONE
    assert await valid(h, caller)


async def test_an_unknown_identifier_costs_the_work_of_another_accounts_proof(
    h: Harness, work: Counter[str]
) -> None:
    """B4: an identifier nobody holds and one whose account the proof does not prove do the
    same work (one identifier lookup, the ticket checks, one lookup of the ticket's holder)
    and decrypt nothing: no personal data is read and no data key unwrapped before the proof
    matched, so the time does not tell whether an identifier is registered. Counted, not
    timed."""
    await register(h, LOGIN_NAME, PHONE)
    await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    await with_email(h, OTHER_LOGIN_NAME, OTHER_ADDRESS)
    new_ticket = await ticket(h, NEW_PHONE, BIND_PHONE)
    cases = {
        "unknown login name, by phone": (by_old_phone, "nobody.here"),
        "unknown ID number, by phone": (by_old_phone, ID_NUMBER),
        "known, another account's phone": (by_old_phone, LOGIN_NAME),
        "known, another account's email": (by_email, LOGIN_NAME),
        "unknown login name, by email": (by_email, "nobody.here"),
    }
    spent: dict[str, Counter[str]] = {}
    for case, (request, identifier) in cases.items():
        if request is by_old_phone:
            proof = await ticket(h, OTHER_PHONE, CHANGE_PHONE)
        else:
            proof = await ticket(h, OTHER_ADDRESS, CHANGE_PHONE, EMAIL)
        await delivered(h)  # nothing else runs on the server while the call is counted
        work.clear()
        details = await refused(change_phone(h, request(new_ticket, proof, identifier=identifier)))
        assert details.reason == "TICKET_INVALID", case
        spent[case] = Counter(work)
    first = spent["known, another account's phone"]
    assert first["get_personal_data"] == 0
    assert first["unwrap"] == 0
    assert first["find_credentials"] == 2  # the identifier, then the ticket's holder
    for case, counted in spent.items():
        assert counted == first, case


async def test_a_new_phone_bound_elsewhere_is_already_exists(h: Harness) -> None:
    """H1: a new phone another account holds is ALREADY_EXISTS on `new_phone`, not saying whose;
    the proof stays usable for another number."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    other_id = await register(h, OTHER_LOGIN_NAME, OTHER_PHONE)
    proof = await ticket(h, PHONE, CHANGE_PHONE)
    taken = await refused(
        change_phone(
            h,
            by_old_phone(await ticket(h, OTHER_PHONE, BIND_PHONE), proof, new_phone=OTHER_PHONE),
        )
    )
    assert (taken.code, list(taken.violations)) == (grpc.StatusCode.ALREADY_EXISTS, ["new_phone"])
    for secret in (OTHER_LOGIN_NAME, other_id, OTHER_PHONE[3:]):
        assert secret not in taken.message
    assert await phone_of(h, account_id) == PHONE
    await change_phone(h, by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), proof))
    assert await phone_of(h, account_id) == NEW_PHONE


async def test_the_bound_phone_itself_is_no_change(h: Harness) -> None:
    """H1: asking for the phone bound already is FAILED_PRECONDITION on `new_phone`."""
    await register(h, LOGIN_NAME, PHONE)
    details = await refused(
        change_phone(
            h,
            by_old_phone(
                await ticket(h, PHONE, BIND_PHONE),
                await ticket(h, PHONE, CHANGE_PHONE),
                new_phone=PHONE,
            ),
        )
    )
    assert (details.code, list(details.violations)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        ["new_phone"],
    )


# -- concurrency ------------------------------------------------------------------------------


async def test_of_two_concurrent_changes_exactly_one_wins(h: Harness) -> None:
    """H1: two changes of one account to different phones, each with its own tickets: exactly
    one succeeds, the other is refused cleanly, and the account ends with exactly one new phone;
    the loser's number is bound to nobody. The loser gets ABORTED when both passed their checks
    before either committed (the row lock decides; forced every time in
    tests/contract/flows/test_channel_flows.py), or TICKET_INVALID on `old_phone_ticket` when its
    checks ran after the winner committed: its proof then names a phone the account no longer
    holds."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    requests = [
        by_old_phone(await ticket(h, NEW_PHONE, BIND_PHONE), await ticket(h, PHONE, CHANGE_PHONE)),
        by_old_phone(
            await ticket(h, THIRD_PHONE, BIND_PHONE),
            await ticket(h, PHONE, CHANGE_PHONE),
            new_phone=THIRD_PHONE,
        ),
    ]
    results = await asyncio.gather(*(change_phone(h, r) for r in requests), return_exceptions=True)
    won = [r for r in results if isinstance(r, accounts_pb2.ChangePhoneResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 1), results
    details = details_of(lost[0])
    assert (details.code, details.reason) in {
        (grpc.StatusCode.ABORTED, "CONFLICT"),
        (grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
        (grpc.StatusCode.INVALID_ARGUMENT, "TICKET_INVALID"),
    }, details
    if details.reason == "TICKET_INVALID":
        assert list(details.violations) == ["old_phone_ticket"]
    phone = await phone_of(h, account_id)
    assert phone in {NEW_PHONE, THIRD_PHONE}
    loser = THIRD_PHONE if phone == NEW_PHONE else NEW_PHONE
    assert await h.container.accounts.find_by_phone(loser) is None
    assert await h.container.accounts.find_by_phone(PHONE) is None
    winner = await h.container.accounts.find_by_phone(phone)
    assert winner is not None
    assert winner.account_id == account_id


async def test_one_ticket_used_by_two_concurrent_calls_works_once(h: Harness) -> None:
    """C5, H1: the same tickets sent by two concurrent calls change the phone once; the other
    call is TICKET_INVALID (or ABORTED when it lost inside the change)."""
    account_id = await register(h, LOGIN_NAME, PHONE)
    request = by_old_phone(
        await ticket(h, NEW_PHONE, BIND_PHONE), await ticket(h, PHONE, CHANGE_PHONE)
    )
    results = await asyncio.gather(
        change_phone(h, request), change_phone(h, request), return_exceptions=True
    )
    won = [r for r in results if isinstance(r, accounts_pb2.ChangePhoneResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert (len(won), len(lost)) == (1, 1)
    assert lost[0].code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ABORTED}
    assert await phone_of(h, account_id) == NEW_PHONE
