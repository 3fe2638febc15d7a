"""Local verification of access tokens for business systems, with a JWKS cache."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from nacl.signing import VerifyKey

from xiaohe.identity.client.revocations import (
    DEFAULT_MAX_STALENESS,
    DEFAULT_MAX_TOKEN_LIFETIME,
    DEFAULT_RECONNECT_AFTER_SILENCE,
    Revocations,
    RevocationWatcher,
    follow,
)
from xiaohe.identity.tokens.jwt import (
    CONSENT_RESTRICTION,
    Claims,
    InvalidToken,
    UnknownKeyId,
    decode_verified,
    keys_from_jwks,
)


class TokenVerifier:
    """Verifies Xiaohe Identity access tokens locally, against keys from `GetSigningKeys`.

    Keys are fetched with `fetch_jwks` (a coroutine returning the JWKS JSON text)
    on first need and again when a token names a `kid` the cached set lacks, which
    is how a key rotation reaches business systems. Refetches are single-flight
    (concurrent verifications of new-key tokens share one fetch) and happen at
    most once per `min_refetch_interval`, counting failed attempts too, so tokens
    with invented `kid`s cannot turn the verifier into a flood of `GetSigningKeys`
    calls. A fetched set replaces the old one, so a key withdrawn by the server
    stops verifying; the claims cache is then cleared as well.

    A verified token's claims are kept until its `exp` in a bounded LRU map keyed
    by the exact token string, so verifying the same token again is a dict lookup
    plus an expiry check (with the same leeway). Only tokens whose signature
    verified enter the map, so an attacker cannot fill it.

    Local verification alone cannot see revocation: a token of a session revoked by
    logout, password change or deactivation stays valid here until it expires
    (at most the access-token lifetime, 10 minutes by default). Run
    `follow_revocations(identity_client)` as a background task and the verifier
    refuses such tokens (`InvalidToken("revoked")`) within a second of the
    revocation, without a call per token (see `revocations.py` for resync and
    staleness); or call `AuthService.ValidateToken`, which checks revocation.

    `required_auth_methods` (e.g. `("otp",)`) refuses tokens of sessions that did not
    use every one of those methods (their `amr`), as `InvalidToken("auth_methods")`:
    a system that must only serve users signed in with a second factor says so here.
    """

    def __init__(
        self,
        fetch_jwks: Callable[[], Awaitable[str]],
        *,
        audience: str,
        issuer: str | None = None,
        leeway: float = 30.0,
        clock: Callable[[], float] = time.time,
        min_refetch_interval: float = 30.0,
        cache_size: int = 10000,
        allow_restricted: bool = False,
        required_auth_methods: Sequence[str] = (),
    ) -> None:
        """`allow_restricted` accepts sessions restricted for consent only (see `_unrestricted`);
        `required_auth_methods` refuses sessions that lack one of those `amr` methods."""
        self._fetch_jwks = fetch_jwks
        self._required = frozenset(required_auth_methods)
        self._allow_restricted = allow_restricted
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._clock = clock
        self._min_refetch_interval = min_refetch_interval
        self._cache_size = cache_size
        self._keys: dict[str, VerifyKey] = {}
        self._generation = 0
        self._last_fetch_attempt: float | None = None
        self._fetch_lock = asyncio.Lock()
        self._claims: OrderedDict[str, Claims] = OrderedDict()
        self._header_cache: dict[str, str] = {}
        self._revocations: Revocations | None = None

    @property
    def revocations(self) -> Revocations | None:
        """What is known of ended sessions once `follow_revocations` was called (`ready`,
        `cursor`, `current`); None before."""
        return self._revocations

    def follow_revocations(
        self,
        watcher: RevocationWatcher,
        *,
        max_token_lifetime: float = DEFAULT_MAX_TOKEN_LIFETIME,
        max_staleness: float | None = DEFAULT_MAX_STALENESS,
        reconnect_after_silence: float = DEFAULT_RECONNECT_AFTER_SILENCE,
        refuse_tokens_before_start: bool = False,
        since_cursor: str = "",
    ) -> Coroutine[Any, Any, None]:
        """Start refusing revoked sessions' tokens; returns the coroutine that follows the feed.

        `watcher` is an `IdentityClient` (with the `validate` grant). Run the result as
        a background task (`asyncio.create_task(verifier.follow_revocations(identity))`)
        and wait for `verifier.revocations.ready` before serving: from this call on,
        `verify` refuses every token with `InvalidToken("revocations_stale")` while the
        feed has been silent for more than `max_staleness` seconds (None: never),
        including before its first heartbeat. `max_token_lifetime` bounds how long a
        revoked session is remembered (at least the server's access-token lifetime);
        `since_cursor` resumes from a cursor kept across a restart
        (`revocations.cursor`). Callable once per verifier.
        """
        if self._revocations is not None:
            raise RuntimeError("this TokenVerifier already follows revocations")
        self._revocations = Revocations(
            clock=self._clock,
            leeway=self._leeway,
            max_token_lifetime=max_token_lifetime,
            max_staleness=max_staleness,
            refuse_tokens_before_start=refuse_tokens_before_start,
            since_cursor=since_cursor,
        )
        return follow(self._revocations, watcher, reconnect_after_silence=reconnect_after_silence)

    async def verify(self, token: str) -> Claims:
        """Verify `token` and return its claims; raises `InvalidToken` (with a `reason`).

        On an unknown `kid` the key set is refetched (see the class docstring) and
        the token is tried once more. Errors of `fetch_jwks` itself propagate, so a
        caller can tell "the identity service is unreachable" from "bad token".
        """
        generation = self._generation
        try:
            return self.verify_cached_keys(token)
        except UnknownKeyId:
            if not await self._refresh(generation, force=False):
                raise
        return self.verify_cached_keys(token)

    def verify_cached_keys(self, token: str) -> Claims:
        """Verify `token` with the keys already cached, never fetching; sync fast path.

        Raises `UnknownKeyId` when the token's key is not cached yet; `await
        verify(token)` then fetches it.
        """
        now = self._clock()
        cached = self._claims.get(token)
        if cached is not None:
            if now - self._leeway >= cached.exp:
                del self._claims[token]
                raise InvalidToken("expired")
            self._claims.move_to_end(token)
            return self._unrevoked(token, self._unrestricted(cached))
        claims = decode_verified(
            token,
            self._keys,
            audience=self._audience,
            now=now,
            leeway=self._leeway,
            issuer=self._issuer,
            header_cache=self._header_cache,
        )
        if self._cache_size > 0:
            if len(self._claims) >= self._cache_size:
                # Least recently used first; expired entries age out the same way.
                self._claims.popitem(last=False)
            self._claims[token] = claims
        return self._unrevoked(token, self._unrestricted(claims))

    def _unrevoked(self, token: str, claims: Claims) -> Claims:
        """The claims, unless revocations are followed and refuse them (`Revocations.check`).

        A revoked session's token also leaves the claims cache, so it costs no memory
        after it was last presented.
        """
        if self._revocations is None:
            return claims
        try:
            self._revocations.check(claims)
        except InvalidToken as exc:
            if exc.reason == "revoked":
                self._claims.pop(token, None)
            raise
        return claims

    def _unrestricted(self, claims: Claims) -> Claims:
        """The claims, unless their session is restricted and restricted ones are refused.

        A session restricted for consent (the user has not accepted the current
        privacy policy) may only be used to accept it, so a business system refuses
        its tokens (`InvalidToken("restricted")`) unless built with
        `allow_restricted=True` (a consent page). Any other restriction (`phone_reverify`:
        the account's phone was recycled and must be bound again) is refused always:
        such a session may only bind a phone, which no business system does.
        """
        if not self._required <= set(claims.amr):
            raise InvalidToken("auth_methods")
        if not claims.restriction:
            return claims
        if self._allow_restricted and claims.restriction == CONSENT_RESTRICTION:
            return claims
        raise InvalidToken("restricted")

    async def refresh_keys(self) -> None:
        """Fetch the key set now, regardless of `min_refetch_interval` (e.g. at startup)."""
        await self._refresh(self._generation, force=True)

    async def _refresh(self, seen_generation: int, *, force: bool) -> bool:
        """Refetch the JWKS unless another task already did; True if the keys changed since."""
        async with self._fetch_lock:
            if self._generation != seen_generation:
                return True  # another task refetched while this one waited
            now = self._clock()
            if (
                not force
                and self._last_fetch_attempt is not None
                and now - self._last_fetch_attempt < self._min_refetch_interval
            ):
                return False
            self._last_fetch_attempt = now
            keys = keys_from_jwks(await self._fetch_jwks())
            if not self._keys.keys() <= keys.keys() or any(
                keys[kid] != key for kid, key in self._keys.items()
            ):
                # A key was withdrawn or replaced: claims it vouched for must not linger.
                self._claims.clear()
                self._header_cache.clear()
            self._keys = keys
            self._generation += 1
            return True
