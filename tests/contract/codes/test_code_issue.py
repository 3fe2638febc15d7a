"""CodeService.issue on real Redis (embedded and system): codes, limits, validation, rollback."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import pytest

from tests.contract.codes.conftest import (
    EMAIL,
    OTHER_PHONE,
    PHONE,
    CodeHarness,
    MakeHarness,
    digits_from,
)
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    Purpose,
)
from xiaohe.identity.server.errors import CodeInvalid, InvalidArgument, RateLimited, Unavailable

HOUR = 3600
DAY = 86400


async def test_code_is_six_digits_and_only_its_hmac_is_stored(h: CodeHarness) -> None:
    """C1, C4: a 6-digit code; Redis holds neither the code nor the destination; not returned."""
    issued = await h.codes.issue(
        IssueCodeCommand(Channel.SMS, "138 1234 5678", Purpose.REGISTER),
        client_id="bff",
        end_user_ip="203.0.113.7",
    )
    code = h.queue.last_code()
    assert len(code) == 6
    assert code.isdigit()
    assert h.queue.messages[-1].destination == PHONE
    assert h.queue.messages[-1].channel == "SMS"
    assert h.queue.messages[-1].purpose == "REGISTER"
    assert (issued.expires_in, issued.resend_after) == (300, 60)
    assert code not in repr(issued)
    everything = b"\n".join(await h.dump())
    assert everything, "something was stored"
    assert code.encode() not in everything
    assert b"13812345678" not in everything
    assert b"203.0.113.7" not in everything
    mac_keys = [k async for k in h.redis.scan_iter(match="xh:code:*")]
    assert len(mac_keys) == 1
    stored = await h.redis.hgetall(mac_keys[0])
    assert len(stored[b"mac"]) == 64
    assert stored[b"tries"] == b"0"


async def test_code_never_appears_in_metrics_audit_or_logs(
    h: CodeHarness, caplog: pytest.LogCaptureFixture
) -> None:
    """C4: only the message text carries the code."""
    caplog.set_level(logging.DEBUG)
    issued = await h.codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN))
    code = h.queue.last_code()
    assert code not in issued.code_id
    observed = repr(h.metrics) + repr(h.audit.records) + caplog.text
    assert code not in observed
    assert "13812345678" not in observed
    wrong = "000000" if code != "000000" else "111111"
    with pytest.raises(CodeInvalid) as caught:
        await h.verify(wrong, purpose=Purpose.LOGIN)
    assert code not in str(caught.value)
    assert wrong not in str(caught.value)
    assert code not in caplog.text


async def test_code_ids_are_random_and_distinct(h: CodeHarness) -> None:
    """C4: the code id is random, not derived from the code."""
    ids = set()
    for i in range(5):
        issued = await h.codes.issue(
            IssueCodeCommand(Channel.SMS, f"+86139000000{i:02d}", Purpose.REGISTER)
        )
        ids.add(issued.code_id)
        assert h.queue.last_code() not in issued.code_id
    assert len(ids) == 5


async def test_a_new_code_replaces_the_old_one(make_codes: MakeHarness) -> None:
    """C3: after a re-issue (past the cooldown) the old code fails and the new one works."""
    h = make_codes(random_digits=digits_from("111111", "222222"))
    old = await h.issue()
    h.clock.advance(61)
    new = await h.issue()
    assert (old, new) == ("111111", "222222")
    with pytest.raises(CodeInvalid):
        await h.verify(old)
    assert (await h.verify(new)).startswith("vt1.")


async def test_queue_receives_normalised_email(h: CodeHarness) -> None:
    """C2: email codes go to the normalised address."""
    await h.issue("  ZhangSan@Example.CN ", Purpose.BIND_EMAIL, Channel.EMAIL)
    assert h.queue.messages[-1].destination == EMAIL
    assert h.queue.messages[-1].channel == "EMAIL"
    assert h.queue.messages[-1].subject == "[BIND_EMAIL] code"  # what compose made of it


async def test_plus_tags_of_one_mailbox_share_its_send_limits(h: CodeHarness) -> None:
    """C6: `zhangsan+1@…`, `zhangsan+2@…` and `zhangsan@…` are one mailbox: one cooldown and
    one hourly budget, refused as the destination's limit; nothing extra is sent."""
    await h.issue("zhangsan+1@example.cn", Purpose.BIND_EMAIL, Channel.EMAIL)
    for variant in ("zhangsan+2@example.cn", EMAIL, "ZhangSan+news@Example.CN"):
        with pytest.raises(RateLimited) as caught:
            await h.issue(variant, Purpose.BIND_EMAIL, Channel.EMAIL)
        assert caught.value.policy == "code.issue.destination"
        assert caught.value.retry_after == pytest.approx(60)
    assert [m.destination for m in h.queue.messages] == ["zhangsan+1@example.cn"]
    await h.issue("lisi+1@example.cn", Purpose.BIND_EMAIL, Channel.EMAIL)  # another mailbox
    for i in range(2, 6):
        h.clock.advance(61)
        await h.issue(f"zhangsan+{i}@example.cn", Purpose.BIND_EMAIL, Channel.EMAIL)
    h.clock.advance(61)
    with pytest.raises(RateLimited) as caught:  # the mailbox's 5 per hour are used
        await h.issue("zhangsan+99@example.cn", Purpose.BIND_EMAIL, Channel.EMAIL)
    assert caught.value.policy == "code.issue.destination"
    assert len(h.queue.messages) == 6


async def test_100_concurrent_issues_for_one_number_send_exactly_one_message(
    h: CodeHarness,
) -> None:
    """C6: 100 simultaneous issues for one number → one message, 99 RateLimited with a wait."""
    results = await asyncio.gather(
        *(
            h.codes.issue(
                IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN),
                client_id="bff",
                end_user_ip=f"198.51.100.{i % 50}",
            )
            for i in range(100)
        ),
        return_exceptions=True,
    )
    limited = [r for r in results if isinstance(r, RateLimited)]
    assert len(h.queue.messages) == 1
    assert len(limited) == 99
    assert all(r.retry_after > 0 for r in limited)
    assert all(r.policy == "code.issue.destination" for r in limited)


async def test_cooldown_applies_across_purposes_and_tells_the_wait(h: CodeHarness) -> None:
    """C6: 60 s between two codes to one destination, whatever the purpose."""
    await h.issue(purpose=Purpose.LOGIN)
    h.clock.advance(20)
    with pytest.raises(RateLimited) as caught:
        await h.issue(purpose=Purpose.RESET_PASSWORD)
    assert caught.value.policy == "code.issue.destination"
    assert caught.value.retry_after == pytest.approx(40)
    await h.issue(OTHER_PHONE, purpose=Purpose.LOGIN)  # another destination is unaffected
    h.clock.advance(40)
    await h.issue(purpose=Purpose.RESET_PASSWORD)
    assert len(h.queue.messages) == 3


async def test_hour_and_day_windows_per_destination(h: CodeHarness) -> None:
    """C6: 5 per hour and 10 per day per destination, with exact retry-after values."""
    for _ in range(5):
        await h.issue()
        h.clock.advance(61)
    # The 6th within the hour waits until the first issue leaves the hour window.
    with pytest.raises(RateLimited) as caught:
        await h.issue()
    assert caught.value.policy == "code.issue.destination"
    assert caught.value.retry_after == pytest.approx(HOUR - 5 * 61)
    h.clock.advance(HOUR)
    for _ in range(5):
        await h.issue()
        h.clock.advance(61)
    with pytest.raises(RateLimited) as caught:
        await h.issue()
    # 10 in the last day: the first one leaves the day window at t0 + DAY.
    elapsed = 10 * 61 + HOUR
    assert caught.value.retry_after == pytest.approx(DAY - elapsed)
    h.clock.advance(DAY - elapsed)
    await h.issue()
    assert len(h.queue.messages) == 11


async def test_refused_issues_do_not_extend_the_windows(h: CodeHarness) -> None:
    """C6: hammering a closed window records nothing, so the wait does not grow."""
    await h.issue()
    for _ in range(10):
        h.clock.advance(5)
        with pytest.raises(RateLimited):
            await h.issue()
    h.clock.advance(10)
    await h.issue()


async def test_per_ip_window_and_release_when_destination_refuses(h: CodeHarness) -> None:
    """C6: 30 per hour per IP; a request refused by the destination is not charged to the IP."""
    ip = "192.0.2.10"
    await h.issue(PHONE, ip=ip)
    for _ in range(40):  # refused by the cooldown: must not use up the IP's budget
        with pytest.raises(RateLimited):
            await h.issue(PHONE, ip=ip)
    for i in range(29):
        await h.issue(f"+861370000{i:04d}", ip=ip)
    with pytest.raises(RateLimited) as caught:
        await h.issue(OTHER_PHONE, ip=ip)
    assert caught.value.policy == "code.issue.ip"
    assert 0 < caught.value.retry_after <= HOUR
    await h.issue(OTHER_PHONE, ip="192.0.2.11")  # another IP is fine
    assert h.metrics.rejected.count("code.issue.destination") == 40
    assert h.metrics.rejected.count("code.issue.ip") == 1


async def test_ipv6_addresses_share_their_64_prefix(make_codes: MakeHarness) -> None:
    """C6: an IPv6 user cannot escape the IP limit by rotating addresses inside a /64."""
    h = make_codes(CodePolicy(per_ip_hour=2))
    await h.issue(PHONE, ip="2001:db8:1:2::1")
    await h.issue(OTHER_PHONE, ip="2001:db8:1:2::ffff")
    with pytest.raises(RateLimited) as caught:
        await h.issue("+8613700000001", ip="2001:db8:1:2:abcd::9")
    assert caught.value.policy == "code.issue.ip"
    await h.issue("+8613700000001", ip="2001:db8:1:3::1")


async def test_per_client_window_and_refund_of_the_ip(make_codes: MakeHarness) -> None:
    """C6: the per-client budget per minute; a client refusal refunds the IP reservation."""
    h = make_codes(CodePolicy(per_client_minute=3, per_ip_hour=4))
    for i in range(3):
        await h.issue(f"+861370000{i:04d}", client_id="bff-1", ip="192.0.2.20")
    with pytest.raises(RateLimited) as caught:
        await h.issue(OTHER_PHONE, client_id="bff-1", ip="192.0.2.20")
    assert caught.value.policy == "code.issue.client"
    assert caught.value.retry_after == pytest.approx(60)
    # The refused request did not use the IP's 4th slot.
    await h.issue(OTHER_PHONE, client_id="bff-2", ip="192.0.2.20")
    with pytest.raises(RateLimited) as caught:
        await h.issue("+8613600000000", client_id="bff-2", ip="192.0.2.20")
    assert caught.value.policy == "code.issue.ip"
    h.clock.advance(60)
    await h.issue("+8613600000000", client_id="bff-1", ip="192.0.2.21")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (IssueCodeCommand(Channel.SMS, "+1 415 555 0100", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.SMS, "12345", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.SMS, "+86 12345678901", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.EMAIL, "not-an-email", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.EMAIL, "a@b", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.SMS, "", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.SMS, "   ", Purpose.REGISTER), "destination"),
        (IssueCodeCommand(Channel.SMS, "1" * 5000, Purpose.REGISTER), "destination"),
        (IssueCodeCommand(None, PHONE, Purpose.REGISTER), "channel"),
        (IssueCodeCommand(Channel.SMS, PHONE, None), "purpose"),
        (IssueCodeCommand("FAX", PHONE, Purpose.REGISTER), "channel"),  # type: ignore[arg-type]
        (IssueCodeCommand(Channel.SMS, PHONE, "UNSPECIFIED"), "purpose"),  # type: ignore[arg-type]
        (IssueCodeCommand(Channel.EMAIL, EMAIL, Purpose.BIND_PHONE), "channel"),
        (IssueCodeCommand(Channel.SMS, PHONE, Purpose.BIND_EMAIL), "channel"),
    ],
)
async def test_malformed_requests_are_refused_before_any_limit_is_spent(
    make_codes: MakeHarness, command: IssueCodeCommand, field: str
) -> None:
    """C7, F3: InvalidArgument naming the field; no limit spent, nothing sent or stored."""
    h = make_codes(CodePolicy(per_ip_hour=1, per_client_minute=1))
    with pytest.raises(InvalidArgument) as caught:
        await h.codes.issue(command, client_id="bff", end_user_ip="192.0.2.30")
    assert field in [v.field for v in caught.value.violations]
    assert PHONE not in caught.value.message
    assert "13812345678" not in caught.value.message
    assert h.queue.messages == []
    assert await h.dump() == []
    # The IP and client budgets (1 each) are untouched: a valid request still succeeds.
    await h.issue(PHONE, client_id="bff", ip="192.0.2.30")


async def test_all_bad_fields_are_reported_together(h: CodeHarness) -> None:
    """F3: one InvalidArgument lists every bad field."""
    with pytest.raises(InvalidArgument) as caught:
        await h.codes.issue(IssueCodeCommand(None, "", None))
    assert {v.field for v in caught.value.violations} == {"channel", "purpose", "destination"}


async def test_queue_unavailable_deletes_the_code_and_refunds_every_window(
    make_codes: MakeHarness,
) -> None:
    """F1: when nothing could be queued, the code is gone and no limit was spent."""
    h = make_codes(CodePolicy(per_ip_hour=1, per_client_minute=1))
    h.queue.unavailable = True
    with pytest.raises(Unavailable):
        await h.codes.issue(
            IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN),
            client_id="bff",
            end_user_ip="192.0.2.40",
        )
    assert [k async for k in h.redis.scan_iter(match="xh:code:*")] == []
    h.queue.unavailable = False
    # No cooldown, IP or client charge is left over.
    code = await h.issue(PHONE, Purpose.LOGIN, client_id="bff", ip="192.0.2.40")
    assert (await h.verify(code, purpose=Purpose.LOGIN)).startswith("vt1.")


async def test_a_broken_composer_kills_the_code_but_keeps_the_charge(
    make_codes: MakeHarness,
) -> None:
    """C6: an unexpected delivery failure deletes the code; the send still counts (fail safe)."""

    def broken(channel: str, purpose: str, code: str, ttl: int) -> str:
        raise RuntimeError("template missing")

    h = make_codes(composer=broken)
    with pytest.raises(RuntimeError):
        await h.issue()
    assert [k async for k in h.redis.scan_iter(match="xh:code:*")] == []
    with pytest.raises(RateLimited):
        await h.issue()


async def test_recipient_filter_silences_delivery_but_not_the_limits(
    make_codes: MakeHarness,
) -> None:
    """B4: a filtered destination gets the same response and the same limits; nothing is sent."""
    seen: list[tuple[Channel, str, Purpose]] = []

    async def only_registered(channel: Channel, destination: str, purpose: Purpose) -> bool:
        seen.append((channel, destination, purpose))
        return destination == PHONE

    h = make_codes(recipient_filter=only_registered)
    known = await h.codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.RESET_PASSWORD))
    unknown = await h.codes.issue(
        IssueCodeCommand(Channel.SMS, OTHER_PHONE, Purpose.RESET_PASSWORD)
    )
    assert len(h.queue.messages) == 1
    assert h.queue.withheld == [("SMS", "RESET_PASSWORD")]  # the same write, without a payload
    assert seen[-1] == (Channel.SMS, OTHER_PHONE, Purpose.RESET_PASSWORD)
    assert dataclasses.replace(unknown, code_id="") == dataclasses.replace(known, code_id="")
    assert len(unknown.code_id) == len(known.code_id)
    with pytest.raises(RateLimited) as caught:
        await h.codes.issue(IssueCodeCommand(Channel.SMS, OTHER_PHONE, Purpose.RESET_PASSWORD))
    assert caught.value.policy == "code.issue.destination"
    assert len([k async for k in h.redis.scan_iter(match="xh:code:*")]) == 2


async def test_policy_reads_the_settings() -> None:
    """The policy comes from the code_* settings."""
    from xiaohe.identity.server.config import Settings
    from xiaohe.identity.server.container import code_policy

    settings = Settings(
        code_ttl_seconds=120,
        code_max_attempts=3,
        ticket_ttl_seconds=90,
        code_cooldown_seconds=30,
        code_per_destination_hour=4,
        code_per_destination_day=8,
        code_per_ip_hour=20,
        code_per_client_minute=100,
        code_failures_per_destination_hour=9,
        allowed_country_codes=("86", "852"),
    )
    assert code_policy(settings) == CodePolicy(
        ttl=120,
        max_attempts=3,
        ticket_ttl=90,
        cooldown=30,
        per_destination_hour=4,
        per_destination_day=8,
        per_ip_hour=20,
        per_client_minute=100,
        failures_per_destination_hour=9,
        allowed_country_codes=("86", "852"),
    )
    assert code_policy(Settings()) == CodePolicy()


async def test_allowed_country_codes_come_from_the_policy(make_codes: MakeHarness) -> None:
    """C7: +852 is refused by default and accepted when the policy allows it."""
    with pytest.raises(InvalidArgument):
        await make_codes().issue("+852 9123 4567")
    h = make_codes(CodePolicy(allowed_country_codes=("86", "852")))
    await h.issue("+852 9123 4567")
    assert h.queue.messages[-1].destination == "+85291234567"


async def test_limit_refusals_are_metrics_not_audit_rows(h: CodeHarness) -> None:
    """I7, C6: a bombing burst costs one audit row, not one per refusal."""
    await asyncio.gather(
        *(h.codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN)) for _ in range(20)),
        return_exceptions=True,
    )
    assert [(a, o) for a, _, o in h.audit.records] == [("code.issue", "ok")]
    assert h.metrics.rejected == ["code.issue.destination"] * 19
    assert h.metrics.issued == [("SMS", "LOGIN")]
