"""Accounts: commands, results and views (frozen dataclasses).

Fields holding personal data, passwords, hashes or tickets are left out of
`repr`, so a command or a record that ends up in a log line or a traceback
does not carry them along.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from xiaohe.identity.server.shared.identifiers import IdType


class SubjectType(StrEnum):
    """Who an account belongs to: a natural person or a legal person (an organization)."""

    NATURAL_PERSON = "NATURAL_PERSON"
    LEGAL_PERSON = "LEGAL_PERSON"


class AccountStatus(StrEnum):
    """Lifecycle state of an account; new accounts are ACTIVE."""

    ACTIVE = "active"


@dataclass(frozen=True)
class RegisterCommand:
    """Create an account.

    `subject_type` is None when the request left it unspecified (the service
    refuses that with a field violation). `phone_ticket` is the REGISTER ticket
    (SMS channel) from `CodeService.verify` for `phone`. A natural person may give
    `name`, `id_type` and `id_number`; a legal person may give `organization_name`
    and `uscc`. Giving the other kind's fields is a violation.
    """

    subject_type: SubjectType | None
    login_name: str
    password: str = field(repr=False)
    phone: str = field(repr=False)
    phone_ticket: str = field(repr=False)
    accepted_policy_version: int
    name: str = field(default="", repr=False)
    id_type: IdType = IdType.UNSPECIFIED
    id_number: str = field(default="", repr=False)
    organization_name: str = ""
    uscc: str = ""


@dataclass(frozen=True)
class RegisteredAccount:
    """The account that `register` created."""

    account_id: str


@dataclass(frozen=True)
class AccountView:
    """What an account may see of itself (and callers granted it): contact points masked."""

    account_id: str
    subject_type: SubjectType
    login_name: str
    phone_masked: str
    email_masked: str
    accepted_policy_version: int
    real_name_level: int
    created_at: float


@dataclass(frozen=True)
class AccountCredentials:
    """What the login service needs to authenticate an account.

    `status` is the stored value (compare with `AccountStatus`); it is a plain
    string so that states added later do not break readers built before them.
    """

    account_id: str
    login_name: str
    password_hash: str = field(repr=False)
    status: str
    subject_type: SubjectType
    accepted_policy_version: int
    real_name_level: int


@dataclass(frozen=True)
class PersonalData:
    """An account's decrypted personal data (for export, recovery and real-name checks).

    Empty strings mean "not given"; an account whose data key was destroyed
    (crypto-shredded) reads as all empty. `id_number` and `uscc` are normalised.
    """

    account_id: str
    phone: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    name: str = field(default="", repr=False)
    id_type: IdType = IdType.UNSPECIFIED
    id_number: str = field(default="", repr=False)
    organization_name: str = ""
    uscc: str = ""


__all__ = [
    "AccountCredentials",
    "AccountStatus",
    "AccountView",
    "PersonalData",
    "RegisterCommand",
    "RegisteredAccount",
    "SubjectType",
]
