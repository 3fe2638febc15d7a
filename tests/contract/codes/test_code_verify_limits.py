"""CodeService.verify's caller windows against real Redis: `code.verify.ip` and `.client`.

A verification that finds no live code spends no destination budget (B2), so
these windows are what bounds the scripts a caller can make the server run.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.contract.codes.conftest import (
    HMAC_KEY,
    OTHER_PHONE,
    PHONE,
    CodeHarness,
    MakeHarness,
)
from xiaohe.identity.server.codes.digests import CodeDigests
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    Purpose,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.service import VERIFY_CLIENT_POLICY, VERIFY_IP_POLICY
from xiaohe.identity.server.codes.store import RedisCodeStore, VerifyResult, code_key
from xiaohe.identity.server.config import Settings, load_settings
from xiaohe.identity.server.container import code_policy
from xiaohe.identity.server.errors import CodeInvalid, InvalidArgument, RateLimited, Unavailable
from xiaohe.identity.server.ratelimit.callers import client_key, ip_key

BOGUS = "000000"


def other_than(code: str) -> str:
    """A 6-digit code that is not `code`."""
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def verify(
    h: CodeHarness,
    code: str = BOGUS,
    destination: str = OTHER_PHONE,
    *,
    ip: str | None = "198.51.100.7",
    client_id: str = "bff",
    purpose: Purpose = Purpose.REGISTER,
) -> str:
    """Verify `code` from (`client_id`, `ip`) and return the ticket."""
    verified = await h.codes.verify(
        VerifyCodeCommand(Channel.SMS, destination, purpose, code),
        client_id=client_id,
        end_user_ip=ip,
    )
    return verified.ticket


async def rl_keys(h: CodeHarness, kind: str) -> list[bytes]:
    """The verify rate-limit keys of one kind (`ip` or `cl`) present in Redis."""
    return [k async for k in h.redis.scan_iter(match=f"xh:rl:{{{kind}:*}}:code.verify")]


async def test_the_ip_window_refuses_the_next_verification(make_codes: MakeHarness) -> None:
    """C6, B5: the (limit+1)-th verify from one IP is RateLimited(code.verify.ip), retry > 0."""
    h = make_codes(CodePolicy(verify_per_ip_hour=3))
    for _ in range(3):
        with pytest.raises(CodeInvalid):
            await verify(h, ip="198.51.100.7")
    with pytest.raises(RateLimited) as caught:
        await verify(h, ip="198.51.100.7")
    assert caught.value.policy == VERIFY_IP_POLICY == "code.verify.ip"
    assert 0 < caught.value.retry_after <= 3600
    assert caught.value.retry_after == pytest.approx(3600)
    assert "198.51.100.7" not in str(caught.value)
    assert h.metrics.rejected == ["code.verify.ip"]
    assert h.metrics.outcomes() == ["missing", "missing", "missing", "rate_limited"]
    # Another IP is unaffected; refusals recorded nothing, so they do not extend the window.
    with pytest.raises(CodeInvalid):
        await verify(h, ip="198.51.100.8")
    for _ in range(5):
        with pytest.raises(RateLimited):
            await verify(h, ip="198.51.100.7")
    h.clock.advance(3600)
    with pytest.raises(CodeInvalid):
        await verify(h, ip="198.51.100.7")


async def test_the_ip_window_slides(make_codes: MakeHarness) -> None:
    """C6: the oldest verification leaves the window an hour after it was made, not in a block."""
    h = make_codes(CodePolicy(verify_per_ip_hour=3))
    for _ in range(3):
        with pytest.raises(CodeInvalid):
            await verify(h)
        h.clock.advance(600)
    # Verifications at 0, 600 and 1200 s; now is 1800 s.
    with pytest.raises(RateLimited) as caught:
        await verify(h)
    assert caught.value.retry_after == pytest.approx(1800)
    h.clock.advance(1800)
    with pytest.raises(CodeInvalid):
        await verify(h)  # the one at 0 s has left; this one is recorded at 3600 s
    with pytest.raises(RateLimited) as caught:
        await verify(h)
    assert caught.value.retry_after == pytest.approx(600)
    h.clock.advance(599)
    with pytest.raises(RateLimited):
        await verify(h)
    h.clock.advance(1)
    with pytest.raises(CodeInvalid):
        await verify(h)


async def test_an_ipv6_64_is_one_unit(make_codes: MakeHarness) -> None:
    """C6: IPv6 addresses of one /64 share the window; the next /64 has its own."""
    h = make_codes(CodePolicy(verify_per_ip_hour=2))
    with pytest.raises(CodeInvalid):
        await verify(h, ip="2001:db8:1:2::1")
    with pytest.raises(CodeInvalid):
        await verify(h, ip="2001:db8:1:2::ffff")
    with pytest.raises(RateLimited) as caught:
        await verify(h, ip="2001:db8:1:2:abcd::9")
    assert caught.value.policy == "code.verify.ip"
    with pytest.raises(CodeInvalid):
        await verify(h, ip="2001:db8:1:3::1")


async def test_the_check_comes_before_the_script_and_a_fresh_ip_still_verifies(
    make_codes: MakeHarness,
) -> None:
    """C6, B5: a refused verify does not touch the live code; the right code verifies elsewhere."""
    h = make_codes(CodePolicy(verify_per_ip_hour=2))
    code = await h.issue(PHONE, ip="203.0.113.1")
    for _ in range(2):
        with pytest.raises(CodeInvalid):
            await verify(h, BOGUS, OTHER_PHONE, ip="198.51.100.7")
    with pytest.raises(RateLimited) as caught:
        await verify(h, code, PHONE, ip="198.51.100.7")
    assert caught.value.policy == "code.verify.ip"
    stored = code_key(CodeDigests(HMAC_KEY).destination_tag(Channel.SMS, PHONE), "REGISTER")
    assert await h.redis.hget(stored, "tries") == b"0"
    assert h.metrics.outcomes() == ["missing", "missing", "rate_limited"]
    assert [a for a in h.audit.records if a[0] == "code.verify"] == []
    assert (await verify(h, code, PHONE, ip="198.51.100.9")).startswith("vt1.")
    assert h.metrics.outcomes()[-1] == "ok"


async def test_the_client_window_and_refund_of_the_ip(make_codes: MakeHarness) -> None:
    """C6: per-client budget per minute; a client refusal refunds the IP charge; it slides."""
    h = make_codes(CodePolicy(verify_per_client_minute=3, verify_per_ip_hour=4))
    for _ in range(3):
        with pytest.raises(CodeInvalid):
            await verify(h, client_id="bff-1", ip="192.0.2.20")
    with pytest.raises(RateLimited) as caught:
        await verify(h, client_id="bff-1", ip="192.0.2.21")
    assert caught.value.policy == VERIFY_CLIENT_POLICY == "code.verify.client"
    assert caught.value.retry_after == pytest.approx(60)
    assert h.metrics.rejected == ["code.verify.client"]
    # Another client is unaffected, and the refused request left no charge on 192.0.2.21.
    digests = CodeDigests(HMAC_KEY)
    assert await h.redis.zcard(ip_key(digests.ip_tag("192.0.2.21"), "code.verify")) == 0
    # 192.0.2.20 has used 3 of 4: one more from it (via another client), then its own refusal.
    with pytest.raises(CodeInvalid):
        await verify(h, client_id="bff-2", ip="192.0.2.20")
    with pytest.raises(RateLimited) as caught:
        await verify(h, client_id="bff-2", ip="192.0.2.20")
    assert caught.value.policy == "code.verify.ip"
    # The client window slides: 59 s later still full, 60 s later open again.
    h.clock.advance(59)
    with pytest.raises(RateLimited) as caught:
        await verify(h, client_id="bff-1", ip="192.0.2.22")
    assert caught.value.policy == "code.verify.client"
    assert caught.value.retry_after == pytest.approx(1)
    h.clock.advance(1)
    with pytest.raises(CodeInvalid):
        await verify(h, client_id="bff-1", ip="192.0.2.22")


async def test_concurrent_verifications_never_overshoot_the_ip_window(
    make_codes: MakeHarness,
) -> None:
    """C6: 20 simultaneous verifications from one IP, limit 5: exactly 5 reach the script."""
    h = make_codes(CodePolicy(verify_per_ip_hour=5))
    results = await asyncio.gather(
        *(verify(h, ip="198.51.100.50") for _ in range(20)), return_exceptions=True
    )
    assert sum(isinstance(r, CodeInvalid) for r in results) == 5
    assert sum(isinstance(r, RateLimited) for r in results) == 15
    assert h.metrics.outcomes().count("missing") == 5


async def test_no_ip_skips_the_ip_window_and_no_client_skips_the_client_window(
    make_codes: MakeHarness,
) -> None:
    """C6: as in issue, a window is skipped when the request does not name its IP or client."""
    h = make_codes(CodePolicy(verify_per_ip_hour=1, verify_per_client_minute=1))
    for _ in range(3):
        with pytest.raises(CodeInvalid):
            await verify(h, ip=None, client_id="")
    assert await rl_keys(h, "ip") == []
    assert await rl_keys(h, "cl") == []
    # No IP, but a client: only the client window counts.
    with pytest.raises(CodeInvalid):
        await verify(h, ip=None, client_id="bff-9")
    with pytest.raises(RateLimited) as caught:
        await verify(h, ip=None, client_id="bff-9")
    assert caught.value.policy == "code.verify.client"
    assert await rl_keys(h, "ip") == []
    # An IP, no client: only the IP window counts.
    with pytest.raises(CodeInvalid):
        await verify(h, ip="198.51.100.60", client_id="")
    with pytest.raises(RateLimited) as caught:
        await verify(h, ip="198.51.100.60", client_id="")
    assert caught.value.policy == "code.verify.ip"


@pytest.mark.parametrize(
    "command",
    [
        VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "12ab56"),
        VerifyCodeCommand(Channel.SMS, PHONE, Purpose.REGISTER, "1234567"),
        VerifyCodeCommand(Channel.SMS, "12345", Purpose.REGISTER, BOGUS),
        VerifyCodeCommand(None, PHONE, Purpose.REGISTER, BOGUS),
        VerifyCodeCommand(Channel.SMS, PHONE, None, BOGUS),
    ],
)
async def test_a_malformed_verification_spends_nothing(
    make_codes: MakeHarness, command: VerifyCodeCommand
) -> None:
    """C7, F3: InvalidArgument comes before the windows; the IP and client budgets stay whole."""
    h = make_codes(CodePolicy(verify_per_ip_hour=1, verify_per_client_minute=1))
    for _ in range(3):
        with pytest.raises(InvalidArgument):
            await h.codes.verify(command, client_id="bff", end_user_ip="192.0.2.30")
    assert await h.dump() == []
    assert h.metrics.rejected == []
    with pytest.raises(CodeInvalid):
        await verify(h, client_id="bff", ip="192.0.2.30")


async def test_issue_and_verify_windows_are_separate(make_codes: MakeHarness) -> None:
    """C6: issuing does not spend the verify budget of the IP or client, nor the reverse."""
    h = make_codes(
        CodePolicy(
            per_ip_hour=1, per_client_minute=1, verify_per_ip_hour=1, verify_per_client_minute=1
        )
    )
    code = await h.issue(PHONE, client_id="bff", ip="192.0.2.70")
    assert (await verify(h, code, PHONE, client_id="bff", ip="192.0.2.70")).startswith("vt1.")
    with pytest.raises(RateLimited) as caught:
        await verify(h, client_id="bff", ip="192.0.2.70")
    assert caught.value.policy == "code.verify.ip"
    digests = CodeDigests(HMAC_KEY)
    assert await h.redis.zcard(ip_key(digests.ip_tag("192.0.2.70"), "code.verify")) == 1
    assert await h.redis.zcard(ip_key(digests.ip_tag("192.0.2.70"))) == 1
    assert await h.redis.zcard(client_key("bff", "code.verify")) == 1
    assert await h.redis.zcard(client_key("bff")) == 1
    for key in await h.dump():
        assert b"192.0.2.70" not in key


async def test_a_destination_refusal_keeps_the_caller_charges(make_codes: MakeHarness) -> None:
    """B2, C6: a verify refused by the failure budget still ran a script, so it counts per IP."""
    h = make_codes(CodePolicy(failures_per_destination_hour=1, verify_per_ip_hour=3))
    code = await h.issue(PHONE, ip="203.0.113.2")
    with pytest.raises(CodeInvalid):
        await verify(h, other_than(code), PHONE, ip="198.51.100.80")
    for _ in range(2):
        with pytest.raises(RateLimited) as caught:
            await verify(h, code, PHONE, ip="198.51.100.80")
        assert caught.value.policy == "code.verify.destination"
    with pytest.raises(RateLimited) as caught:
        await verify(h, code, PHONE, ip="198.51.100.80")
    assert caught.value.policy == "code.verify.ip"
    assert h.metrics.rejected == [
        "code.verify.destination",
        "code.verify.destination",
        "code.verify.ip",
    ]


class BrokenVerifyStore(RedisCodeStore):
    """The Redis store, except that verification finds Redis unreachable."""

    async def verify(self, *args: object, **kwargs: object) -> VerifyResult:
        """Fail like an unreachable Redis."""
        raise Unavailable()


async def test_a_verification_that_could_not_run_is_refunded(make_codes: MakeHarness) -> None:
    """F1: when the script cannot run, the IP and client charges are given back."""
    h = make_codes(CodePolicy(verify_per_ip_hour=1, verify_per_client_minute=1))
    broken = make_codes(
        CodePolicy(verify_per_ip_hour=1, verify_per_client_minute=1),
        store=BrokenVerifyStore(h.redis),
    )
    for _ in range(3):
        with pytest.raises(Unavailable):
            await verify(broken, client_id="bff", ip="192.0.2.90")
    digests = CodeDigests(HMAC_KEY)
    assert await h.redis.zcard(ip_key(digests.ip_tag("192.0.2.90"), "code.verify")) == 0
    assert await h.redis.zcard(client_key("bff", "code.verify")) == 0
    with pytest.raises(CodeInvalid):
        await verify(h, client_id="bff", ip="192.0.2.90")


def test_policy_defaults_settings_and_environment() -> None:
    """C6: 120 per hour per IP unit, 3000 per minute per client; configurable by env."""
    p = CodePolicy()
    assert (p.verify_per_ip_hour, p.verify_per_client_minute) == (120, 3000)
    s = Settings()
    assert (s.code_verify_per_ip_hour, s.code_verify_per_client_minute) == (120, 3000)
    loaded = load_settings(
        {
            "XIAOHE_IDENTITY_CODE_VERIFY_PER_IP_HOUR": "60",
            "XIAOHE_IDENTITY_CODE_VERIFY_PER_CLIENT_MINUTE": "500",
        }
    )
    q = code_policy(loaded)
    assert (q.verify_per_ip_hour, q.verify_per_client_minute) == (60, 500)
    with pytest.raises(ValueError, match="must"):
        CodePolicy(verify_per_ip_hour=-1)
    with pytest.raises(ValueError, match="must"):
        CodePolicy(verify_per_client_minute=-1)
