"""Binding contact points: a phone to an account without one, an email, and removing it.

BindPhone (privacy policy 一.4): login name + password + a BIND_PHONE ticket for
the phone, for an account that has no phone (one that has uses ChangePhone).
The password is checked like a login (`credentials.reauth.PasswordCheck`).

BindEmail: the signed-in account proves the new address with a BIND_EMAIL ticket;
when an email is bound already, it also proves the current one with a BIND_EMAIL
ticket for it (SECURITY.md H1). UnbindEmail needs the current password.

A phone or email bound to another account is ALREADY_EXISTS, never saying whose.
Each change ends the account's other sessions (T3), notifies the old channels
(H2: `email_changed` to the old address and the phone; `phone_changed`-style
wording for a first phone) and is audited, in one unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xiaohe.identity.server.errors import Unimplemented


@dataclass(frozen=True)
class BindPhoneCommand:
    """Bind a first phone to an account, proven by login name and password."""

    login_name: str
    password: str = field(repr=False)
    phone: str = field(repr=False)
    phone_ticket: str = field(repr=False)
    ip: str


@dataclass(frozen=True)
class BindEmailCommand:
    """The signed-in account binds (or replaces) its email."""

    account_id: str
    session_id: str
    email: str = field(repr=False)
    email_ticket: str = field(repr=False)
    current_email_ticket: str = field(repr=False)


@dataclass(frozen=True)
class UnbindEmailCommand:
    """The signed-in account removes its email, re-authenticated by password."""

    account_id: str
    session_id: str
    password: str = field(repr=False)
    ip: str


class ChannelFlow:
    """Binds and unbinds phones and emails (steps in the module docstring)."""

    async def bind_phone(self, cmd: BindPhoneCommand) -> str:
        """Bind the phone; returns it masked."""
        raise Unimplemented("this flow is being built")

    async def bind_email(self, cmd: BindEmailCommand) -> str:
        """Bind the email; returns it masked."""
        raise Unimplemented("this flow is being built")

    async def unbind_email(self, cmd: UnbindEmailCommand) -> None:
        """Remove the email."""
        raise Unimplemented("this flow is being built")
