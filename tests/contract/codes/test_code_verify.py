"""CodeService.verify against real Redis: binding, attempts, the failure budget, expiry."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract.codes.conftest import (
    EMAIL,
    HMAC_KEY,
    OTHER_PHONE,
    PHONE,
    CodeHarness,
    MakeHarness,
    digits_from,
)
from xiaohe.identity.server.codes.digests import CodeDigests
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    Purpose,
    VerifyCodeCommand,
)
from xiaohe.identity.server.errors import CodeInvalid, InvalidArgument, RateLimited


def other_than(code: str) -> str:
    """A 6-digit code that is not `code`."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def test_right_code_yields_a_ticket_and_is_single_use(h: CodeHarness) -> None:
    """C1, C2: the right code gives a `vt1.` ticket once; the code is then gone."""
    code = await h.issue()
    verified = await h.codes.verify(VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, code))
    assert verified.ticket.startswith("vt1.")
    assert verified.expires_in == 600
    assert verified.ticket not in repr(verified)
    with pytest.raises(CodeInvalid):
        await h.verify(code)
    assert h.metrics.outcomes() == ["ok", "missing"]


async def test_wrong_code_is_compared_and_refused(h: CodeHarness) -> None:
    """C1: a wrong code goes through the constant-time comparison (outcome `mismatch`)."""
    code = await h.issue()
    with pytest.raises(CodeInvalid) as caught:
        await h.verify(other_than(code))
    assert h.metrics.outcomes() == ["mismatch"]
    # One character off in the last position and in the first: same answer.
    with pytest.raises(CodeInvalid) as caught_first:
        await h.verify(f"{(int(code[0]) + 1) % 10}{code[1:]}")
    assert str(caught.value) == str(caught_first.value)
    assert (await h.verify(code)).startswith("vt1.")


async def test_full_width_and_padded_codes_are_accepted(h: CodeHarness) -> None:
    """C1: the code is NFKC-normalised and trimmed (full-width digits from an IME)."""
    code = await h.issue()
    full_width = "".join(chr(ord("０") + int(d)) for d in code)
    assert (await h.verify(f" {full_width}\u200b ")).startswith("vt1.")


async def test_register_code_cannot_reset_a_password(h: CodeHarness) -> None:
    """C2: a code is bound to its purpose."""
    code = await h.issue(purpose=Purpose.REGISTER)
    with pytest.raises(CodeInvalid):
        await h.verify(code, purpose=Purpose.RESET_PASSWORD)
    assert (await h.verify(code, purpose=Purpose.REGISTER)).startswith("vt1.")


async def test_code_for_phone_a_does_not_verify_phone_b(h: CodeHarness) -> None:
    """C2: a code is bound to its destination."""
    code = await h.issue(PHONE)
    with pytest.raises(CodeInvalid):
        await h.verify(code, OTHER_PHONE)
    assert (await h.verify(code, "+86 138-1234-5678")).startswith("vt1.")


async def test_email_code_does_not_verify_over_sms_and_back(h: CodeHarness) -> None:
    """C2: a code is bound to its channel: an email code is refused over SMS and vice versa."""
    code = await h.issue(EMAIL, Purpose.LOGIN, Channel.EMAIL)
    with pytest.raises(InvalidArgument):  # an email is not a phone number
        await h.verify(code, EMAIL, Purpose.LOGIN, Channel.SMS)
    sms_code = await h.issue(PHONE, Purpose.LOGIN, Channel.SMS)
    with pytest.raises(CodeInvalid):
        await h.verify(sms_code, "x@example.cn", Purpose.LOGIN, Channel.EMAIL)
    assert (await h.verify(code, EMAIL, Purpose.LOGIN, Channel.EMAIL)).startswith("vt1.")


async def test_expired_code_is_refused(h: CodeHarness) -> None:
    """C1: the TTL is 5 minutes by the injected clock."""
    code = await h.issue()
    h.clock.advance(300)
    with pytest.raises(CodeInvalid):
        await h.verify(code)
    assert h.metrics.outcomes() == ["missing"]


async def test_code_still_valid_just_before_expiry(h: CodeHarness) -> None:
    """C1: the code is accepted up to its last millisecond."""
    code = await h.issue()
    h.clock.advance(299.9)
    assert (await h.verify(code)).startswith("vt1.")


async def test_five_wrong_tries_kill_the_code(h: CodeHarness) -> None:
    """B5: after max_attempts wrong tries even the right code fails."""
    code = await h.issue()
    for _ in range(5):
        with pytest.raises(CodeInvalid):
            await h.verify(other_than(code))
    with pytest.raises(CodeInvalid):
        await h.verify(code)
    assert h.metrics.outcomes() == ["mismatch"] * 5 + ["missing"]


async def test_50_concurrent_wrong_codes_evaluate_at_most_5(make_codes: MakeHarness) -> None:
    """B5: 50 concurrent wrong codes are 50 tries: at most 5 compared, then the right one fails."""
    h = make_codes(CodePolicy(failures_per_destination_hour=1000))
    code = await h.issue()
    wrong = other_than(code)
    results = await asyncio.gather(*(h.verify(wrong) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, CodeInvalid) for r in results)
    assert h.metrics.outcomes().count("mismatch") == 5
    with pytest.raises(CodeInvalid):
        await h.verify(code)


async def test_50_concurrent_wrong_codes_with_the_default_budget(h: CodeHarness) -> None:
    """B5, B2: 5 compared and counted as failures; the other 45 find no live code, spend nothing."""
    code = await h.issue()
    wrong = other_than(code)
    results = await asyncio.gather(*(h.verify(wrong) for _ in range(50)), return_exceptions=True)
    assert all(isinstance(r, CodeInvalid) for r in results)
    assert h.metrics.outcomes().count("mismatch") == 5
    assert await _failures(h) == 5
    with pytest.raises(CodeInvalid):
        await h.verify(code)
    assert await _failures(h) == 5


async def test_failure_budget_is_not_reset_by_a_new_code(make_codes: MakeHarness) -> None:
    """C3: re-issuing a code does not reset the budget (operator raised the issue limit)."""
    codes = [f"{n}{n}{n}{n}{n}{n}" for n in range(1, 8)]
    h = make_codes(CodePolicy(per_destination_hour=10), random_digits=digits_from(*codes))
    for code in codes[:6]:
        assert await h.issue() == code
        for _ in range(5):
            with pytest.raises(CodeInvalid):
                await h.verify("999999")
        h.clock.advance(61)
    assert await _failures(h) == 30
    # 30 wrong guesses at live codes in the last hour: even a fresh code cannot be tried now.
    assert await h.issue() == codes[6]
    with pytest.raises(RateLimited) as caught:
        await h.verify(codes[6])
    assert caught.value.policy == "code.verify.destination"
    # The oldest failure leaves the hour window after 3600 - 6 * 61 seconds.
    assert caught.value.retry_after == pytest.approx(3600 - 6 * 61)
    h.clock.advance(caught.value.retry_after)
    with pytest.raises(CodeInvalid):  # the budget has room again, but the code has expired
        await h.verify(codes[6])


async def test_bogus_verifications_without_a_live_code_spend_no_budget(h: CodeHarness) -> None:
    """B2: 100 verifications with no live code cannot block the owner's SMS login."""
    for i in range(100):
        with pytest.raises(CodeInvalid):
            await h.verify(f"{i:06d}", purpose=Purpose.LOGIN)
    assert h.metrics.outcomes() == ["missing"] * 100
    assert await _failures(h) == 0
    code = await h.issue(purpose=Purpose.LOGIN)
    assert (await h.verify(code, purpose=Purpose.LOGIN)).startswith("vt1.")


async def test_expired_used_and_used_up_codes_spend_no_budget(make_codes: MakeHarness) -> None:
    """B2, C3: only wrong guesses at a live code count, and they still count."""
    h = make_codes(CodePolicy(failures_per_destination_hour=6))
    code = await h.issue()
    h.clock.advance(301)  # expired
    for _ in range(20):
        with pytest.raises(CodeInvalid):
            await h.verify(other_than(code))
    assert await _failures(h) == 0
    code = await h.issue()
    for _ in range(5):  # five wrong guesses at the live code: counted, and the code dies
        with pytest.raises(CodeInvalid):
            await h.verify(other_than(code))
    for _ in range(20):  # used up: spends nothing
        with pytest.raises(CodeInvalid):
            await h.verify(code)
    assert await _failures(h) == 5
    h.clock.advance(61)
    code = await h.issue()
    assert (await h.verify(code)).startswith("vt1.")
    for _ in range(20):  # used: spends nothing
        with pytest.raises(CodeInvalid):
            await h.verify(code)
    h.clock.advance(61)
    code = await h.issue()  # a new code does not reset the budget: one more wrong guess fills it
    with pytest.raises(CodeInvalid):
        await h.verify(other_than(code))
    with pytest.raises(RateLimited):
        await h.verify(code)


async def test_failure_budget_is_per_destination(make_codes: MakeHarness) -> None:
    """C3: one number's exhausted budget does not block another number."""
    h = make_codes(CodePolicy(failures_per_destination_hour=2))
    await h.issue(PHONE)
    other = await h.issue(OTHER_PHONE)
    for _ in range(2):
        with pytest.raises(CodeInvalid):
            await h.verify("000000" if other != "000000" else "111111", PHONE)
    with pytest.raises(RateLimited):
        await h.verify("123456", PHONE)
    assert (await h.verify(other, OTHER_PHONE)).startswith("vt1.")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "12345"), "code"),
        (VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "1234567"), "code"),
        (VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "12a456"), "code"),
        (VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "١٢٣٤٥٦"), "code"),
        (VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, ""), "code"),
        (VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "1" * 10_000), "code"),
        (VerifyCodeCommand(Channel.SMS, "", Purpose.REGISTER, "123456"), "destination"),
        (
            VerifyCodeCommand(Channel.SMS, "+1 415 555 0100", Purpose.REGISTER, "123456"),
            "destination",
        ),
        (VerifyCodeCommand(None, PHONE, Purpose.REGISTER, "123456"), "channel"),
        (VerifyCodeCommand(Channel.SMS, PHONE, None, "123456"), "purpose"),
    ],
)
async def test_malformed_verifications_spend_nothing(
    h: CodeHarness, command: VerifyCodeCommand, field: str
) -> None:
    """C7, F3, B5: InvalidArgument naming the field; no try and no failure is counted."""
    code = await h.issue()
    for _ in range(20):
        with pytest.raises(InvalidArgument) as caught:
            await h.codes.verify(command)
        assert field in [v.field for v in caught.value.violations]
    assert await h.redis.hget(f"xh:code:{{d:{await _tag(h)}}}:REGISTER", "tries") == b"0"
    assert (await h.verify(code)).startswith("vt1.")


async def _failures(h: CodeHarness, destination: str = PHONE) -> int:
    """How many failures the destination's budget holds (its window set's size)."""
    tag = CodeDigests(HMAC_KEY).destination_tag(Channel.SMS, destination)
    return int(await h.redis.zcard(f"xh:fail:{{d:{tag}}}"))


async def _tag(h: CodeHarness) -> str:
    keys = [k.decode() async for k in h.redis.scan_iter(match="xh:code:*")]
    assert len(keys) == 1
    return str(keys[0]).split("{d:")[1].split("}")[0]


async def test_same_error_for_wrong_expired_used_and_unknown(h: CodeHarness) -> None:
    """C2, B5: wrong, expired, used and never-issued codes all give the same CodeInvalid."""
    messages = set()
    code = await h.issue()
    with pytest.raises(CodeInvalid) as wrong:
        await h.verify(other_than(code))
    messages.add((wrong.value.reason, str(wrong.value)))
    await h.verify(code)
    with pytest.raises(CodeInvalid) as used:
        await h.verify(code)
    messages.add((used.value.reason, str(used.value)))
    with pytest.raises(CodeInvalid) as unknown:
        await h.verify("123456", OTHER_PHONE)
    messages.add((unknown.value.reason, str(unknown.value)))
    h.clock.advance(61)
    code = await h.issue()
    h.clock.advance(301)
    with pytest.raises(CodeInvalid) as expired:
        await h.verify(code)
    messages.add((expired.value.reason, str(expired.value)))
    assert len(messages) == 1


async def test_audit_records_use_the_pseudonym(h: CodeHarness) -> None:
    """I7, C4: audit targets are destination tags, never the raw destination."""
    code = await h.issue()
    await h.verify(code)
    with pytest.raises(CodeInvalid):
        await h.verify(code)  # no live code any more: metrics only, no audit row
    with pytest.raises(CodeInvalid):
        await h.verify(other_than(code), OTHER_PHONE)
    h.clock.advance(61)
    code = await h.issue(PHONE, Purpose.LOGIN)
    with pytest.raises(CodeInvalid):
        await h.verify(other_than(code), PHONE, Purpose.LOGIN)  # a wrong guess: audited
    actions = [(a, o) for a, _, o in h.audit.records]
    assert actions == [
        ("code.issue", "ok"),
        ("code.verify", "ok"),
        ("code.issue", "ok"),
        ("code.verify", "invalid"),
    ]
    targets = {t for _, t, _ in h.audit.records}
    assert len(targets) == 1
    (target,) = targets
    assert len(target) == 32
    assert PHONE not in target
    assert "13812345678" not in target
