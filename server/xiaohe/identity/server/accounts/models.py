"""Accounts: commands, results and views (frozen dataclasses).

Fields holding personal data, passwords, hashes or tickets are left out of
`repr`, so a command or a record that ends up in a log line or a traceback
does not carry them along.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    # -- issue 14: deactivation --
    DEACTIVATION_PENDING = "deactivation_pending"
    """Deactivation asked for: no sessions, and in its cooling-off period a sign-in cancels it."""
    DEACTIVATED = "deactivated"
    """Deactivation completed: data key destroyed, identifiers released; the row is a tombstone."""
    # -- end deactivation --


class IdentifierTaken(Exception):
    """An identifier of `kind` (`login_name`, `phone`, ...) already belongs to an account."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"{kind} is already taken")
        self.kind = kind


@dataclass(frozen=True)
class IdentifierKey:
    """One lookup key: the identifier kind and the blind index of its normalised value."""

    kind: str
    blind_index: str


@dataclass(frozen=True)
class NewAccount:
    """An account to create: everything but what the store generates (data key, times).

    `profile` is the identity profile as stored (encrypted): for a natural person
    `name`, `id_type`, `id_number`; for a legal person `organization_name`,
    `uscc` and the optional organisation and representative fields.
    """

    account_id: str
    subject_type: SubjectType
    login_name: str
    password_hash: str = field(repr=False)
    accepted_policy_version: int
    phone: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    profile: Mapping[str, str] = field(default_factory=dict, repr=False)


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
    phone_changed_at: float | None = None
    """When the phone was last bound or changed (epoch seconds); None if never since 0003."""
    email_changed_at: float | None = None
    """When the email was last bound, replaced or removed; None if never since 0004."""
    created_at: float = 0.0
    """When the account was created (epoch seconds)."""
    phone_stale_at: float | None = None
    """When the bound phone was reported recycled (二次号); None while it is current."""

    @property
    def phone_bound_at(self) -> float:
        """When the phone held now was bound: its last change, else the account's creation."""
        return self.created_at if self.phone_changed_at is None else self.phone_changed_at


@dataclass(frozen=True)
class PersonalData:
    """An account's decrypted personal data (for export, recovery and real-name checks).

    Empty strings mean "not given"; an account whose data key was destroyed
    (crypto-shredded) reads as all empty. `id_number` and `uscc` are normalised.
    A phone reported recycled (stale) reads as empty: it now reaches a stranger,
    so no flow may send to it or accept it as the account's phone.
    """

    account_id: str
    phone: str = field(default="", repr=False)
    email: str = field(default="", repr=False)
    name: str = field(default="", repr=False)
    id_type: IdType = IdType.UNSPECIFIED
    id_number: str = field(default="", repr=False)
    organization_name: str = ""
    uscc: str = ""
    organization_type: str = ""
    representative_type: str = ""
    representative_name: str = field(default="", repr=False)
    representative_id_type: IdType = IdType.UNSPECIFIED
    representative_id_number: str = field(default="", repr=False)


__all__ = [
    "AccountCredentials",
    "AccountStatus",
    "AccountView",
    "IdentifierKey",
    "IdentifierTaken",
    "NewAccount",
    "PersonalData",
    "SubjectType",
]
