"""Changing the bound phone (`AccountService.ChangePhone`, privacy policy 一.6, SECURITY.md H1).

The account is named by login name, USCC or ID number (or is the signed-in
caller's). The new phone is proven by a BIND_PHONE ticket, and the person by one
of: (a) a CHANGE_PHONE ticket of the bound phone; (b) a CHANGE_PHONE ticket of the
bound email; (c) manual review with documents, answered Unimplemented until the
review service exists. An unknown identifier and a proof for another account's
channel answer alike (TicketInvalid). A new phone bound to another account is
ALREADY_EXISTS without saying whose; two concurrent changes of one account:
exactly one wins (`AccountService.replace_contact`).

Afterwards, in the same unit of work: the old phone and the email get the
`phone_changed` notice (no code, the new number masked), every other session ends
(T3), the change is audited; and for `phone_change_cooling_off_seconds` (24 h by
default) another phone change, and recovery through the new phone, are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from xiaohe.identity.server.errors import Unimplemented
from xiaohe.identity.server.shared.identifiers import IdentifierKind


class PhoneProof(StrEnum):
    """How the person proves they hold the account today."""

    OLD_PHONE = "old_phone"
    EMAIL = "email"
    MANUAL_REVIEW = "manual_review"


@dataclass(frozen=True)
class ChangePhoneCommand:
    """Change the bound phone of the account named by `identifier` (or of `account_id`)."""

    identifier: str = field(repr=False)
    identifier_kind: IdentifierKind
    account_id: str
    """The signed-in caller's account, or "" (then `identifier` names it)."""
    session_id: str
    new_phone: str = field(repr=False)
    new_phone_ticket: str = field(repr=False)
    proof: PhoneProof
    proof_ticket: str = field(repr=False)
    ip: str


@dataclass(frozen=True)
class PhoneChanged:
    """The outcome of a phone change."""

    phone_masked: str
    sessions_ended: int


class PhoneChangeFlow:
    """Changes bound phones (steps in the module docstring)."""

    async def change(self, cmd: ChangePhoneCommand) -> PhoneChanged:
        """Change the phone."""
        raise Unimplemented("this flow is being built")
