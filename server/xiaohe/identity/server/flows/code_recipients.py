"""Who receives a code: the rule that joins codes to accounts (SECURITY.md B4, H3).

Codes that act on an existing account (login, password reset, recovery) go only
to destinations an account holds; for any other, the code service pretends: it
answers and counts limits exactly as if it had sent, so the response does not
reveal who is registered. Codes for every other purpose go to anyone.

A phone reported recycled is no longer held (its identifier row is gone), so no
code goes to it either. With a number-status check configured, a RESET_PASSWORD
or RECOVER_ACCOUNT code to a phone bound long ago is sent only if the check does
not say the number was re-issued since (`recycled_numbers.NumberStatusGuard`);
if it does, the binding is handled as a report and the code is withheld, with
the same answer.
"""

from __future__ import annotations

from typing import Final

from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.flows.recycled_numbers import NumberStatusGuard
from xiaohe.identity.server.shared.identifiers import IdentifierKind

ACCOUNT_BOUND_PURPOSES: Final = frozenset(
    {Purpose.LOGIN, Purpose.RESET_PASSWORD, Purpose.RECOVER_ACCOUNT, Purpose.EXPORT_DATA}
)
NUMBER_STATUS_PURPOSES: Final = frozenset({Purpose.RESET_PASSWORD, Purpose.RECOVER_ACCOUNT})
"""Codes that hand over an account: checked against the number-status service first."""


class RegisteredRecipients:
    """The code service's `RecipientFilter`: whether a code is really sent."""

    def __init__(self, accounts: AccountService, guard: NumberStatusGuard | None = None) -> None:
        self._accounts = accounts
        self._guard = guard

    async def __call__(self, channel: Channel, destination: str, purpose: Purpose) -> bool:
        """Whether a code for `purpose` goes out to this (normalised) destination."""
        if purpose not in ACCOUNT_BOUND_PURPOSES:
            return True
        if self._guard is not None and channel is Channel.SMS and purpose in NUMBER_STATUS_PURPOSES:
            account = await self._accounts.find_by_phone(destination)
            if account is None:
                return False
            return await self._guard.may_send(account, destination)
        kind = IdentifierKind.PHONE if channel is Channel.SMS else IdentifierKind.EMAIL
        return await self._accounts.holds(kind, destination)


__all__ = ["ACCOUNT_BOUND_PURPOSES", "NUMBER_STATUS_PURPOSES", "RegisteredRecipients"]
