"""Who receives a code: the rule that joins codes to accounts (SECURITY.md B4).

Codes that act on an existing account (login, password reset, recovery) go only
to destinations an account holds; for any other, the code service pretends: it
answers and counts limits exactly as if it had sent, so the response does not
reveal who is registered. Codes for every other purpose go to anyone.
"""

from __future__ import annotations

from typing import Final

from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.shared.identifiers import IdentifierKind

ACCOUNT_BOUND_PURPOSES: Final = frozenset(
    {Purpose.LOGIN, Purpose.RESET_PASSWORD, Purpose.RECOVER_ACCOUNT}
)


class RegisteredRecipients:
    """The code service's `RecipientFilter`: whether a code is really sent."""

    def __init__(self, accounts: AccountService) -> None:
        self._accounts = accounts

    async def __call__(self, channel: Channel, destination: str, purpose: Purpose) -> bool:
        """Whether a code for `purpose` goes out to this (normalised) destination."""
        if purpose not in ACCOUNT_BOUND_PURPOSES:
            return True
        kind = IdentifierKind.PHONE if channel is Channel.SMS else IdentifierKind.EMAIL
        return await self._accounts.holds(kind, destination)


__all__ = ["ACCOUNT_BOUND_PURPOSES", "RegisteredRecipients"]
