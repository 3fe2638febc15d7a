"""The directory (`DirectoryService.GetIdentity`, `BatchGetIdentities`) and the person's
list of disclosures (`PrivacyService.ListDisclosures`); privacy policy 三.(一).4, PIPL Art. 23.

A business system asks for some identity fields of one account, or of up to
100, and states why. In order:

1. The request's shape: 1 to `MAX_BATCH` account ids (duplicates answered
   once), at least one field, a purpose (InvalidArgument naming the field).
2. The purpose must be one declared for the client (`purpose:NAME` grant),
   else InvalidArgument on `purpose`: a business system cannot invent a reason
   after the fact.
3. Every field asked for needs a field grant (`field:NAME` masked,
   `field:NAME:full` in full), else PermissionDenied naming the first field
   refused and the grant that would allow it. All or nothing: a client never
   gets part of what it asked for without noticing.
4. The accounts are read (identifiers from the account row, name, ID and
   organisation from the account's encrypted profile, see docs/decisions.md).
   GetIdentity of an unknown id is NotFound; a batch lists such ids in
   `not_found`.
5. One unit of work: a disclosure row per account found (field names, which of
   them masked, purpose) and an audit record `directory.release` per account.
   If it cannot be written, nothing is released: Unavailable, never the fields.

Masking (`MASKS`): subject type, login name, real-name level, ID type and
organisation name are never masked (they are not sensitive or are public in the
business register); name, ID number, phone, email and USCC are, with the
helpers of `shared/identifiers`, unless the grant is `full`. No field value
reaches a log, an error or the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    AccountStatus,
    PersonalData,
)
from xiaohe.identity.server.audit.sink import AuditSink
from xiaohe.identity.server.callers.grants import (
    FIELD_PREFIX,
    FULL_SUFFIX,
    IDENTITY_FIELDS,
    declared_purposes,
    field_access,
)
from xiaohe.identity.server.errors import (
    FieldViolation,
    IdentityError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from xiaohe.identity.server.privacy.disclosures import (
    Disclosure,
    DisclosureLog,
    NewDisclosure,
)
from xiaohe.identity.server.shared.identifiers import (
    mask_email,
    mask_id_number,
    mask_person_name,
    mask_phone,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

MAX_BATCH: Final = 100
RELEASE_ACTION: Final = "directory.release"
"""Audit action of a release of identity fields (target: the account id)."""

PERSONAL_FIELDS: Final = frozenset(
    {"name", "id_type", "id_number", "phone", "email", "organization_name", "uscc"}
)
"""Fields read from the encrypted personal data (the rest come from the account row)."""

MASKS: Final[Mapping[str, Callable[[str], str]]] = {
    "name": mask_person_name,
    "id_number": mask_id_number,
    "phone": mask_phone,
    "email": mask_email,
    "uscc": mask_id_number,
}
"""How a sensitive field is masked; a field not listed is released as it is."""

Value = str | int
"""A field's value: `real_name_level` is a number, every other field text (`id_type`,
`subject_type`: the enum's name)."""


class AccountReader(Protocol):
    """What the directory needs of the accounts capability."""

    async def get_credentials(self, account_id: str) -> AccountCredentials: ...

    async def get_personal_data(self, account_id: str) -> PersonalData: ...


class ClientNames(Protocol):
    """What the disclosure listing needs of the client registry."""

    async def names(self, client_ids: Sequence[str]) -> dict[str, str]: ...


@dataclass(frozen=True)
class IdentityQuery:
    """A client asks for fields of accounts, for a purpose; `grants` are the client's."""

    client_id: str
    grants: frozenset[str]
    account_ids: tuple[str, ...]
    fields: tuple[str, ...]
    purpose: str


@dataclass(frozen=True)
class ReleasedIdentity:
    """What one account's answer holds: the released fields, the masked ones, their values."""

    account_id: str
    released: tuple[str, ...]
    masked: tuple[str, ...]
    values: Mapping[str, Value] = field(repr=False)


@dataclass(frozen=True)
class IdentityAnswer:
    """The identities found, in the order asked, and the ids with no account."""

    identities: tuple[ReleasedIdentity, ...]
    not_found: tuple[str, ...]


@dataclass(frozen=True)
class ListedDisclosure:
    """A disclosure as the person sees it: with the client's name."""

    client_id: str
    client_name: str
    fields: tuple[str, ...]
    purpose: str
    at: float


@dataclass(frozen=True)
class DisclosureListing:
    """One page of the person's disclosures, newest first."""

    disclosures: tuple[ListedDisclosure, ...]
    next_page_token: str


def _invalid(field_name: str, description: str) -> InvalidArgument:
    return InvalidArgument(FieldViolation(field_name, description))


def check_shape(query: IdentityQuery, ids_field: str) -> tuple[str, ...]:
    """Step 1: the distinct account ids, in order; InvalidArgument on a malformed request."""
    if not query.account_ids:
        raise _invalid(ids_field, "at least one account id is required")
    if len(query.account_ids) > MAX_BATCH:
        raise _invalid(ids_field, f"at most {MAX_BATCH} account ids per call")
    if any(not a or len(a) > 64 for a in query.account_ids):
        raise _invalid(ids_field, "account ids must be 1 to 64 characters")
    if not query.fields:
        raise _invalid("fields", "name at least one identity field")
    unknown = [f for f in query.fields if f not in IDENTITY_FIELDS]
    if unknown:
        raise _invalid("fields", f"unknown identity field; known: {', '.join(IDENTITY_FIELDS)}")
    if not query.purpose:
        raise _invalid("purpose", "state the purpose of the request (a declared purpose)")
    return tuple(dict.fromkeys(query.account_ids))


def check_purpose(query: IdentityQuery) -> None:
    """Step 2: the purpose is one declared for the client."""
    declared = declared_purposes(query.grants)
    if query.purpose not in declared:
        hint = ", ".join(sorted(declared)) if declared else "none; an operator declares them"
        raise _invalid("purpose", f"is not a purpose declared for this client (declared: {hint})")


def access_of(query: IdentityQuery) -> dict[str, bool]:
    """Step 3: field -> whether it is masked; PermissionDenied naming a field not granted."""
    masked: dict[str, bool] = {}
    for name in dict.fromkeys(query.fields):
        access = field_access(query.grants, name)
        if access is None:
            grant = FIELD_PREFIX + name
            raise PermissionDenied(
                f"the client holds no grant for the identity field {name!r}"
                f" ({grant!r} masked or {grant + FULL_SUFFIX!r} in full)",
                grant=grant,
            )
        masked[name] = access == "masked" and name in MASKS
    return masked


def _values(creds: AccountCredentials, data: PersonalData | None) -> dict[str, Value]:
    values: dict[str, Value] = {
        "subject_type": creds.subject_type.value,
        "login_name": creds.login_name,
        "real_name_level": creds.real_name_level,
    }
    if data is not None:
        values.update(
            name=data.name,
            id_type=data.id_type.name if data.id_type.value else "",
            id_number=data.id_number,
            phone=data.phone,
            email=data.email,
            organization_name=data.organization_name,
            uscc=data.uscc,
        )
    return values


class DirectoryFlow:
    """Releases granted identity fields, logged; lists a person's disclosures."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountReader,
        disclosures: DisclosureLog,
        clients: ClientNames,
        audit: AuditSink | None = None,
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._disclosures = disclosures
        self._clients = clients
        self._audit = audit

    def __repr__(self) -> str:
        return "DirectoryFlow()"

    async def get_identity(self, query: IdentityQuery) -> ReleasedIdentity:
        """One account's granted fields (steps in the module docstring); NotFound if none."""
        answer = await self._release(query, "account_id")
        if not answer.identities:
            raise NotFound("no account with this id")
        return answer.identities[0]

    async def batch_get_identities(self, query: IdentityQuery) -> IdentityAnswer:
        """Up to `MAX_BATCH` accounts' granted fields; unknown ids in `not_found`."""
        return await self._release(query, "account_ids")

    async def list_disclosures(
        self, account_id: str, *, page_size: int, page_token: str
    ) -> DisclosureListing:
        """The account's disclosures newest first, with each client's name."""
        page = await self._disclosures.page(account_id, page_size=page_size, page_token=page_token)
        names = await self._clients.names([d.client_id for d in page.disclosures])
        return DisclosureListing(
            tuple(_listed(d, names.get(d.client_id, "")) for d in page.disclosures),
            page.next_page_token,
        )

    async def _release(self, query: IdentityQuery, ids_field: str) -> IdentityAnswer:
        account_ids = check_shape(query, ids_field)
        check_purpose(query)
        masked = access_of(query)
        found: list[ReleasedIdentity] = []
        missing: list[str] = []
        for account_id in account_ids:
            identity = await self._read(account_id, masked)
            if identity is None:
                missing.append(account_id)
            else:
                found.append(identity)
        await self._log(query, found)
        return IdentityAnswer(tuple(found), tuple(missing))

    async def _read(self, account_id: str, masked: Mapping[str, bool]) -> ReleasedIdentity | None:
        """Step 4: the account's released fields, or None if there is no active account."""
        try:
            creds = await self._accounts.get_credentials(account_id)
            wants_personal = any(f in PERSONAL_FIELDS for f in masked)
            data = await self._accounts.get_personal_data(account_id) if wants_personal else None
        except NotFound:
            return None
        if creds.status != AccountStatus.ACTIVE:
            return None
        values = _values(creds, data)
        released: dict[str, Value] = {}
        for name, hide in masked.items():
            value = values[name]
            released[name] = (
                MASKS[name](value) if hide and isinstance(value, str) and value else value
            )
        return ReleasedIdentity(
            account_id=account_id,
            released=tuple(masked),
            masked=tuple(n for n, hide in masked.items() if hide),
            values=released,
        )

    async def _log(self, query: IdentityQuery, found: Sequence[ReleasedIdentity]) -> None:
        """Step 5: disclosure rows and audit records in one unit of work, or Unavailable."""
        if not found:
            return
        rows = [
            NewDisclosure(i.account_id, query.client_id, i.released, i.masked, query.purpose)
            for i in found
        ]
        try:
            async with self._uow.begin():
                await self._disclosures.record(rows)
                if self._audit is not None:
                    for identity in found:
                        await self._audit.record(RELEASE_ACTION, identity.account_id, "ok")
        except IdentityError:
            raise  # Unavailable from the store already says what happened
        except Exception as exc:
            logger.error("disclosure log not written (%s): nothing released", type(exc).__name__)
            raise Unavailable(
                "the disclosure log could not be written; nothing was released"
            ) from exc


def _listed(d: Disclosure, client_name: str) -> ListedDisclosure:
    return ListedDisclosure(d.client_id, client_name, d.fields, d.purpose, d.at)


__all__ = [
    "MASKS",
    "MAX_BATCH",
    "RELEASE_ACTION",
    "DirectoryFlow",
    "DisclosureListing",
    "IdentityAnswer",
    "IdentityQuery",
    "ListedDisclosure",
    "ReleasedIdentity",
]
