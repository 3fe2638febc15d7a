"""TicketService.consume against real Redis: single use, expiry, binding, malformed tickets."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract.codes.conftest import EMAIL, OTHER_PHONE, PHONE, CodeHarness
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.codes.tickets import parse_ticket, seal_destination
from xiaohe.identity.server.errors import TicketInvalid


async def ticket_for(
    h: CodeHarness,
    destination: str = PHONE,
    purpose: Purpose = Purpose.REGISTER,
    channel: Channel = Channel.SMS,
) -> str:
    """Issue and verify a code; return the ticket."""
    code = await h.issue(destination, purpose, channel)
    return await h.verify(code, destination, purpose, channel)


async def test_ticket_says_what_it_proves(h: CodeHarness) -> None:
    """C5: the ticket alone tells the consumer the channel, normalised destination and purpose."""
    issued_at = h.clock.now()
    ticket = await ticket_for(h, "138 1234 5678", Purpose.LOGIN)
    claims = await h.tickets.consume(ticket, purpose=Purpose.LOGIN)
    assert claims.channel is Channel.SMS
    assert claims.destination == PHONE
    assert claims.purpose is Purpose.LOGIN
    assert claims.issued_at == pytest.approx(issued_at, abs=0.001)
    assert PHONE not in repr(claims)


async def test_ticket_works_exactly_once(h: CodeHarness) -> None:
    """C5: single use."""
    ticket = await ticket_for(h)
    await h.tickets.consume(ticket, purpose=Purpose.REGISTER)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER)


async def test_concurrent_consumption_succeeds_once(h: CodeHarness) -> None:
    """C5: 20 concurrent uses of one ticket → exactly one success."""
    ticket = await ticket_for(h)
    results = await asyncio.gather(
        *(h.tickets.consume(ticket, purpose=Purpose.REGISTER) for _ in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert sum(isinstance(r, TicketInvalid) for r in results) == 19


async def test_expired_ticket_is_refused(h: CodeHarness) -> None:
    """C5: tickets are short-lived (10 minutes by the injected clock)."""
    ticket = await ticket_for(h)
    h.clock.advance(600)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER)
    assert [k async for k in h.redis.scan_iter(match="xh:ticket:*")] == []


async def test_ticket_valid_until_its_expiry(h: CodeHarness) -> None:
    """C5: a ticket works until its last moment."""
    ticket = await ticket_for(h)
    h.clock.advance(599.9)
    await h.tickets.consume(ticket, purpose=Purpose.REGISTER)


async def test_register_ticket_is_refused_for_reset_and_not_consumed(h: CodeHarness) -> None:
    """C2, C5: a REGISTER ticket cannot reset a password; the mismatch does not burn it."""
    ticket = await ticket_for(h, purpose=Purpose.REGISTER)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.RESET_PASSWORD)
    claims = await h.tickets.consume(ticket, purpose=Purpose.REGISTER)
    assert claims.purpose is Purpose.REGISTER


async def test_ticket_is_bound_to_destination_and_channel(h: CodeHarness) -> None:
    """C5: a ticket for phone A is refused for phone B, and for the right phone in another form."""
    ticket = await ticket_for(h)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER, destination=OTHER_PHONE)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER, channel=Channel.EMAIL)
    claims = await h.tickets.consume(
        ticket, purpose=Purpose.REGISTER, channel=Channel.SMS, destination="13812345678"
    )
    assert claims.destination == PHONE


async def test_email_ticket_binding(h: CodeHarness) -> None:
    """C5: email tickets compare normalised addresses."""
    ticket = await ticket_for(h, EMAIL, Purpose.BIND_EMAIL, Channel.EMAIL)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.BIND_EMAIL, destination="lisi@example.cn")
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.BIND_EMAIL, destination="not an email")
    claims = await h.tickets.consume(
        ticket, purpose=Purpose.BIND_EMAIL, destination=" ZhangSan@EXAMPLE.cn"
    )
    assert (claims.channel, claims.destination) == (Channel.EMAIL, EMAIL)


async def test_three_mismatches_destroy_the_ticket(h: CodeHarness) -> None:
    """C5: a stolen ticket cannot be probed against many destinations."""
    ticket = await ticket_for(h)
    for guess in ("+8613900000001", "+8613900000002", "+8613900000003"):
        with pytest.raises(TicketInvalid):
            await h.tickets.consume(ticket, purpose=Purpose.REGISTER, destination=guess)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER, destination=PHONE)


@pytest.mark.parametrize(
    "ticket",
    [
        "",
        "vt1.",
        "vt1.abc.def",
        "vt2." + "0" * 32 + "." + "A" * 43,
        "vt1." + "0" * 32 + "." + "A" * 43,  # well formed, but never issued
        "vt1." + "G" * 32 + "." + "A" * 43,
        "vt1." + "0" * 32 + "." + "A" * 42 + "=",
        "vt1." + "0" * 32 + "." + "A" * 43 + "\n",
        "x" * 100_000,
        "vt1.{d:x}." + "A" * 43,
    ],
)
async def test_malformed_or_unknown_tickets_are_ticket_invalid(h: CodeHarness, ticket: str) -> None:
    """C5, F3: anything that is not a live ticket is TicketInvalid, never INTERNAL."""
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER)


async def test_tampered_tag_is_refused(h: CodeHarness) -> None:
    """C5: a ticket whose tag is swapped for another destination's is unknown."""
    ticket = await ticket_for(h)
    other = await ticket_for(h, OTHER_PHONE)
    forged = ".".join([*other.split(".")[:2], ticket.split(".")[2]])
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(forged, purpose=Purpose.REGISTER)
    await h.tickets.consume(ticket, purpose=Purpose.REGISTER)


async def test_ticket_is_stored_only_as_a_hash(h: CodeHarness) -> None:
    """C5, T4: the ticket string is not in Redis; its key holds only a SHA-256."""
    ticket = await ticket_for(h)
    everything = b"\n".join(await h.dump())
    assert ticket.encode() not in everything
    assert ticket.split(".")[2].encode() not in everything


async def test_consume_is_audited_with_the_pseudonym(h: CodeHarness) -> None:
    """I7: ticket use is audited by tag, with its outcome."""
    ticket = await ticket_for(h)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.LOGIN)
    await h.tickets.consume(ticket, purpose=Purpose.REGISTER)
    consumes = [(a, t, o) for a, t, o in h.audit.records if a == "ticket.consume"]
    assert [o for _, _, o in consumes] == ["invalid", "ok"]
    assert consumes[0][1] == ticket.split(".")[1]


async def test_redis_drops_the_ticket_soon_after_its_expiry(h: CodeHarness) -> None:
    """C5, I1: a ticket (and its sealed destination) leaves Redis within ticket TTL + 1 minute."""
    await ticket_for(h)
    (key,) = [k async for k in h.redis.scan_iter(match="xh:ticket:*")]
    ttl_ms = await h.redis.pttl(key)
    assert 600_000 < ttl_ms <= 660_000


@pytest.mark.parametrize(
    ("destination", "channel", "needles"),
    [
        (PHONE, Channel.SMS, [PHONE, "13812345678", "8613812345678", "1234 5678"]),
        (EMAIL, Channel.EMAIL, [EMAIL, "zhangsan", "example.cn"]),
    ],
)
async def test_redis_holds_no_destination_after_issue_and_verify(
    h: CodeHarness, destination: str, channel: Channel, needles: list[str]
) -> None:
    """I1: no key, field, member or value in Redis contains the destination; consume still works."""
    ticket = await ticket_for(h, destination, Purpose.LOGIN, channel)
    dump = await h.dump()
    assert any(item.startswith(b"xh:ticket:") for item in dump)  # the dump sees the ticket
    everything = b"\n".join(dump)
    for needle in needles:
        assert needle.encode() not in everything
    claims = await h.tickets.consume(ticket, purpose=Purpose.LOGIN)
    assert (claims.channel, claims.destination) == (channel, destination)


async def test_sealed_destination_that_does_not_open_is_ticket_invalid(h: CodeHarness) -> None:
    """I1, C5: a stored destination altered in Redis makes the ticket TicketInvalid."""
    ticket = await ticket_for(h)
    (key,) = [k async for k in h.redis.scan_iter(match="xh:ticket:*")]
    raw = await h.redis.hget(key, "dx")
    assert isinstance(raw, bytes)
    assert raw
    sealed = raw.decode()
    flipped = sealed[:20] + ("A" if sealed[20] != "A" else "B") + sealed[21:]
    await h.redis.hset(key, "dx", flipped)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER)
    assert [k async for k in h.redis.scan_iter(match="xh:ticket:*")] == []


async def test_sealed_destination_must_match_the_ticket_tag(h: CodeHarness) -> None:
    """C5: a destination sealed correctly but not the one the ticket's tag names is refused."""
    ticket = await ticket_for(h)
    parsed = parse_ticket(ticket)
    assert parsed is not None
    (key,) = [k async for k in h.redis.scan_iter(match="xh:ticket:*")]
    forged = seal_destination(parsed.secret, parsed.ticket_hash, OTHER_PHONE, bytes(12))
    await h.redis.hset(key, "dx", forged)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(ticket, purpose=Purpose.REGISTER)


async def test_a_grant_names_its_account_and_works_once(h: CodeHarness) -> None:
    """C5: a grant (recovery's reset grant) is a ticket bound to an account, single use,
    short-lived, refused for another purpose or another account; Redis holds no account id."""
    grant = await h.tickets.grant("acc_0123456789abcdef01234567", Purpose.RESET_PASSWORD)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(grant, purpose=Purpose.LOGIN)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(
            grant,
            purpose=Purpose.RESET_PASSWORD,
            channel=Channel.ACCOUNT,
            destination="acc_ffffffffffffffffffffffff",
        )
    dump = b"".join([str(await h.redis.hgetall(k)).encode() for k in await h.redis.keys("*")])
    assert b"acc_0123456789abcdef01234567" not in dump
    claims = await h.tickets.consume(
        grant,
        purpose=Purpose.RESET_PASSWORD,
        channel=Channel.ACCOUNT,
        destination="acc_0123456789abcdef01234567",
    )
    assert (claims.channel, claims.destination) == (Channel.ACCOUNT, "acc_0123456789abcdef01234567")
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(grant, purpose=Purpose.RESET_PASSWORD)

    expiring = await h.tickets.grant("acc_0123456789abcdef01234567", Purpose.RESET_PASSWORD, 60)
    h.clock.advance(61)
    with pytest.raises(TicketInvalid):
        await h.tickets.consume(expiring, purpose=Purpose.RESET_PASSWORD)
