"""Password flows: change (`AccountService.ChangePassword`) and reset (`ResetPassword`).

Change (SECURITY.md P2, P3, B1–B3, T3, H2): the signed-in account gives its
current password, checked like a login (`credentials.reauth.PasswordCheck`: a
wrong one counts toward the brute-force lock), and a new one that passes the
registration policy. One unit of work stores the new hash (conditional on the
old one), ends the other sessions when asked, queues the `password_changed`
notice to the bound phone and email, and audits `account.password.change`.

Reset (privacy policy 一.2, P3, B4): the account is named by an identifier (login
name, phone, USCC, ID number, email); the ticket is a RESET_PASSWORD ticket for
a phone or email bound to that account, or a recovery grant
(`recovery.RecoveryFlow`) for it; a real-name verified natural person must also
give the real name. An unknown identifier, a ticket for another account's channel
and a name mismatch answer alike (TicketInvalid on `ticket`), send nothing, and
take as long (one Argon2 operation each); the ticket is spent either way. On
success every session ends, the `password_changed` notice is queued, and
`account.password.reset` is audited, in one unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xiaohe.identity.server.errors import Unimplemented
from xiaohe.identity.server.shared.identifiers import IdentifierKind


@dataclass(frozen=True)
class ChangePasswordCommand:
    """The signed-in account changes its password."""

    account_id: str
    session_id: str
    current_password: str = field(repr=False)
    new_password: str = field(repr=False)
    end_other_sessions: bool
    ip: str


@dataclass(frozen=True)
class ResetPasswordCommand:
    """Someone who proves a channel of the account (or holds a recovery grant) resets it."""

    identifier: str = field(repr=False)
    identifier_kind: IdentifierKind
    ticket: str = field(repr=False)
    new_password: str = field(repr=False)
    real_name: str = field(repr=False)
    ip: str


class PasswordFlow:
    """Changes and resets passwords (steps in the module docstring)."""

    async def change(self, cmd: ChangePasswordCommand) -> int:
        """Change the password; returns how many other sessions ended."""
        raise Unimplemented("this flow is being built")

    async def reset(self, cmd: ResetPasswordCommand) -> int:
        """Reset the password; returns how many sessions ended."""
        raise Unimplemented("this flow is being built")
