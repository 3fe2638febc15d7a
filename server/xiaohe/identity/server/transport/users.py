"""The end user behind an RPC about "me": `authorization: Bearer <access token>`."""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import grpc

from xiaohe.identity.server import context
from xiaohe.identity.server.errors import (
    ConsentRequired,
    FailedPrecondition,
    TokenInvalid,
    UserUnauthenticated,
)
from xiaohe.identity.tokens.jwt import PHONE_REVERIFY_RESTRICTION, Claims


class TokenValidation(Protocol):
    """Validates access tokens (signature, expiry, audience, revocation)."""

    def validate(
        self, access_token: str, audience: str = "", *, allow_restricted: bool = False
    ) -> Claims:
        """The token's claims, or TokenInvalid."""
        ...


def bearer_token(ctx: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The bearer token of the call, or "" when there is none."""
    for key, value in ctx.invocation_metadata() or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def require_user(
    ctx: grpc.aio.ServicerContext[Any, Any],
    tokens: TokenValidation,
    *,
    allow_restricted: bool = False,
) -> Claims:
    """The signed-in user's claims, or UserUnauthenticated (ConsentRequired when restricted).

    A session restricted until the user accepts the current privacy policy
    (SECURITY I3) may only read and accept the policy and log out: every other
    RPC about "me" answers FAILED_PRECONDITION `CONSENT_REQUIRED`, which tells the
    client what to do. A session restricted because the account's phone was
    reported recycled (SECURITY H3) may do nothing about "me" at all, the
    policy RPCs included: FAILED_PRECONDITION tells it to bind a phone.

    A valid token also binds its account to the request context, so audit
    records of this RPC name the end user as well as the client; the
    interceptor restores the previous context when the RPC ends.
    """
    token = bearer_token(ctx)
    if not token:
        raise UserUnauthenticated("an access token is required (authorization: Bearer …)")
    try:
        claims = tokens.validate(token, allow_restricted=True)
    except TokenInvalid:
        raise UserUnauthenticated("the access token is invalid or has expired") from None
    if claims.restriction == PHONE_REVERIFY_RESTRICTION:
        # The account's phone was reported recycled: nothing about "me" until it binds one.
        raise FailedPrecondition(
            "the account's phone must be verified again: bind a phone with "
            "AccountService.BindPhone, then log in again"
        )
    if claims.restriction and not allow_restricted:
        raise ConsentRequired()
    context.bind(dataclasses.replace(context.current(), account_id=claims.sub))
    return claims
