"""TokenVerifier: JWKS refetch on unknown kid, single flight, rate of refetch, claims cache (T1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from nacl.signing import SigningKey

import xiaohe.identity.client.verifier as verifier_module
import xiaohe.identity.tokens.jwt as jwt_module
from xiaohe.identity.client.verifier import TokenVerifier
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.tokens.jwt import (
    Claims,
    InvalidToken,
    UnknownKeyId,
    encode_eddsa,
    jwk_from_public_key,
)

AUDIENCE = "biz.orders"
ISSUER = "https://id.xiaohe.test"
SEEDS = {"k1": bytes(range(32)), "k2": bytes(range(1, 33)), "k3": bytes(range(2, 34))}


class FakeJwksEndpoint:
    """Serves the JWKS of the kids in `published`, counting fetches; may be made to fail."""

    def __init__(self, *published: str) -> None:
        self.published = list(published)
        self.fetches = 0
        self.fail = False

    async def __call__(self) -> str:
        self.fetches += 1
        for _ in range(3):  # let concurrent verifications pile up behind the fetch
            await asyncio.sleep(0)
        if self.fail:
            raise ConnectionError("identity service unreachable")
        keys = [
            jwk_from_public_key(kid, bytes(SigningKey(SEEDS[kid]).verify_key))
            for kid in self.published
        ]
        return json.dumps({"keys": keys})


def _token(clock: FakeClock, kid: str = "k1", ttl: int = 600, **extra: Any) -> str:
    now = int(clock.now())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "acc_1",
        "sid": "ses_1",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "amr": ["pwd"],
        "subject_type": "natural_person",
        "rn_level": 1,
        **extra,
    }
    return encode_eddsa(claims, kid, SEEDS[kid])


def _verifier(endpoint: FakeJwksEndpoint, clock: FakeClock, **kwargs: Any) -> TokenVerifier:
    return TokenVerifier(endpoint, audience=AUDIENCE, issuer=ISSUER, clock=clock.now, **kwargs)


@pytest.fixture
def decode_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every full decode the verifier performs (cache misses)."""
    calls: list[str] = []
    real: Callable[..., Claims] = jwt_module.decode_verified

    def counting(token: str, *args: Any, **kwargs: Any) -> Claims:
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(verifier_module, "decode_verified", counting)
    return calls


async def test_first_verify_fetches_keys_and_verifies(clock: FakeClock) -> None:
    """T1: keys come from the JWKS endpoint on first need."""
    endpoint = FakeJwksEndpoint("k1")
    claims = await _verifier(endpoint, clock).verify(_token(clock))
    assert claims.sub == "acc_1"
    assert claims.aud == (AUDIENCE,)
    assert endpoint.fetches == 1


async def test_unknown_kid_refetches_once_under_concurrency(clock: FakeClock) -> None:
    """T1: 20 concurrent verifications of a new key's tokens share exactly one JWKS fetch."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock)
    await verifier.verify(_token(clock))
    assert endpoint.fetches == 1

    endpoint.published = ["k1", "k2"]  # the server rotated in k2
    clock.advance(60)
    tokens = [_token(clock, "k2", sub=f"acc_{i}") for i in range(20)]
    results = await asyncio.gather(*(verifier.verify(token) for token in tokens))

    assert endpoint.fetches == 2
    assert sorted(claims.sub for claims in results) == sorted(f"acc_{i}" for i in range(20))


async def test_concurrent_unknown_kid_that_stays_unknown_fetches_once(clock: FakeClock) -> None:
    """T1: tokens with an invented kid cause one fetch, then fail as unknown_kid."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock)
    tokens = [_token(clock, "k3", sub=f"acc_{i}") for i in range(20)]
    results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
    assert endpoint.fetches == 1
    assert all(isinstance(result, UnknownKeyId) for result in results)


async def test_refetch_respects_min_interval(clock: FakeClock) -> None:
    """T1: unknown kids refetch at most once per min_refetch_interval."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock, min_refetch_interval=30.0)
    await verifier.verify(_token(clock))
    endpoint.published = ["k1", "k2"]

    clock.advance(10)
    with pytest.raises(UnknownKeyId):
        await verifier.verify(_token(clock, "k2"))
    assert endpoint.fetches == 1

    clock.advance(21)
    assert (await verifier.verify(_token(clock, "k2"))).sub == "acc_1"
    assert endpoint.fetches == 2

    with pytest.raises(UnknownKeyId):
        await verifier.verify(_token(clock, "k3"))
    assert endpoint.fetches == 2


async def test_fetch_failure_propagates_and_counts_against_the_interval(clock: FakeClock) -> None:
    """T1: an unreachable JWKS endpoint is an error, not a flood of retries."""
    endpoint = FakeJwksEndpoint("k1")
    endpoint.fail = True
    verifier = _verifier(endpoint, clock)
    with pytest.raises(ConnectionError):
        await verifier.verify(_token(clock))
    with pytest.raises(UnknownKeyId):
        await verifier.verify(_token(clock))
    assert endpoint.fetches == 1

    endpoint.fail = False
    clock.advance(31)
    assert (await verifier.verify(_token(clock))).sub == "acc_1"
    assert endpoint.fetches == 2


async def test_refresh_keys_ignores_the_interval(clock: FakeClock) -> None:
    """T1: refresh_keys primes or reloads keys on demand."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock)
    await verifier.refresh_keys()
    assert verifier.verify_cached_keys(_token(clock)).sub == "acc_1"
    endpoint.published = ["k2"]
    await verifier.refresh_keys()
    assert endpoint.fetches == 2
    assert verifier.verify_cached_keys(_token(clock, "k2")).sub == "acc_1"


async def test_verify_cached_keys_never_fetches(clock: FakeClock) -> None:
    """T1: the sync fast path raises UnknownKeyId instead of fetching."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock)
    with pytest.raises(UnknownKeyId):
        verifier.verify_cached_keys(_token(clock))
    assert endpoint.fetches == 0


async def test_claims_cached_until_exp(clock: FakeClock, decode_calls: list[str]) -> None:
    """T1: a verified token is a dict lookup afterwards, until exp plus leeway."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock, leeway=30.0)
    await verifier.refresh_keys()
    token = _token(clock, ttl=600)

    first = await verifier.verify(token)
    clock.advance(300)
    second = await verifier.verify(token)
    assert second is first
    assert decode_calls == [token]

    clock.advance(329)  # 629 s after iat: within exp + leeway
    assert await verifier.verify(token) is first
    clock.advance(1)  # now - leeway == exp
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(token)
    assert info.value.reason == "expired"
    with pytest.raises(InvalidToken) as again:
        await verifier.verify(token)  # now a full decode, which also says expired
    assert again.value.reason == "expired"
    assert decode_calls == [token, token]


async def test_failed_tokens_are_not_cached(clock: FakeClock, decode_calls: list[str]) -> None:
    """T1: only verified tokens enter the cache; a bad one is checked in full every time."""
    verifier = _verifier(FakeJwksEndpoint("k1"), clock)
    forged = encode_eddsa({"sub": "acc_1"}, "k1", SEEDS["k2"])
    for _ in range(2):
        with pytest.raises(InvalidToken) as info:
            await verifier.verify(forged)
        assert info.value.reason == "bad_signature"
    assert decode_calls.count(forged) == 3  # first call: before and after the initial fetch


async def test_cache_is_bounded_lru(clock: FakeClock, decode_calls: list[str]) -> None:
    """T1: the claims cache holds at most cache_size tokens, evicting the least recently used."""
    verifier = _verifier(FakeJwksEndpoint("k1"), clock, cache_size=2)
    await verifier.refresh_keys()
    a, b, c = (_token(clock, sub=name) for name in ("a", "b", "c"))
    verifier.verify_cached_keys(a)
    verifier.verify_cached_keys(b)
    verifier.verify_cached_keys(a)  # a is now the most recently used
    verifier.verify_cached_keys(c)  # evicts b
    assert decode_calls == [a, b, c]
    verifier.verify_cached_keys(a)
    verifier.verify_cached_keys(c)
    assert decode_calls == [a, b, c]
    verifier.verify_cached_keys(b)
    assert decode_calls == [a, b, c, b]


async def test_cache_disabled(clock: FakeClock, decode_calls: list[str]) -> None:
    """T1: cache_size=0 verifies every time."""
    verifier = _verifier(FakeJwksEndpoint("k1"), clock, cache_size=0)
    await verifier.refresh_keys()
    token = _token(clock)
    await verifier.verify(token)
    await verifier.verify(token)
    assert decode_calls.count(token) == 2


async def test_withdrawn_key_drops_cached_claims(clock: FakeClock) -> None:
    """T1: when a refetched JWKS no longer holds a key, its tokens stop verifying at once."""
    endpoint = FakeJwksEndpoint("k1")
    verifier = _verifier(endpoint, clock)
    old = _token(clock, "k1")
    await verifier.verify(old)

    endpoint.published = ["k2"]  # k1 withdrawn (e.g. compromised)
    clock.advance(31)
    await verifier.verify(_token(clock, "k2"))
    assert endpoint.fetches == 2

    with pytest.raises(UnknownKeyId):
        await verifier.verify(old)


async def test_audience_and_issuer_enforced(clock: FakeClock) -> None:
    """T1: the verifier's audience and issuer apply to every token."""
    verifier = _verifier(FakeJwksEndpoint("k1"), clock)
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(_token(clock, aud="biz.other"))
    assert info.value.reason == "wrong_audience"
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(_token(clock, iss="https://evil.test"))
    assert info.value.reason == "wrong_issuer"


@pytest.mark.parametrize("allow_restricted", [False, True])
async def test_a_session_that_must_bind_a_phone_again_is_refused_always(
    clock: FakeClock, allow_restricted: bool
) -> None:
    """H3: a phone_reverify session serves nothing; `allow_restricted` is for consent pages."""
    verifier = _verifier(FakeJwksEndpoint("k1"), clock, allow_restricted=allow_restricted)
    with pytest.raises(InvalidToken) as info:
        await verifier.verify(_token(clock, restriction="phone_reverify"))
    assert info.value.reason == "restricted"


async def test_a_consent_session_passes_only_a_verifier_built_for_consent_pages(
    clock: FakeClock,
) -> None:
    token = _token(clock, restriction="consent")
    with pytest.raises(InvalidToken):
        await _verifier(FakeJwksEndpoint("k1"), clock).verify(token)
    claims = await _verifier(FakeJwksEndpoint("k1"), clock, allow_restricted=True).verify(token)
    assert claims.restriction == "consent"


async def test_required_auth_methods_refuse_tokens_without_them() -> None:
    """D3: a verifier that requires "otp" refuses a password-only session's token (also from
    its claims cache) and accepts one signed in with password + TOTP."""
    clock = FakeClock()
    endpoint = FakeJwksEndpoint("k1")
    strict = _verifier(endpoint, clock, required_auth_methods=("otp",))
    lenient = _verifier(endpoint, clock)
    password_only = _token(clock)
    with_otp = _token(clock, amr=["pwd", "otp"])
    assert (await lenient.verify(password_only)).amr == ("pwd",)
    for _ in range(2):  # the second time the claims come from the cache
        with pytest.raises(InvalidToken) as refused:
            await strict.verify(password_only)
        assert refused.value.reason == "auth_methods"
        assert list((await strict.verify(with_otp)).amr) == ["pwd", "otp"]
