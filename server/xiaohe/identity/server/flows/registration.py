"""The registration flow (`AccountService.Register`).

In order, each step only if the previous one passed:

1. Shapes. Every field is normalised (NFKC: full-width digits and letters,
   spaces between groups, `x` → `X`) and validated, and the password is checked
   against the policy with the login name and phone as context words. All
   violations are collected into one InvalidArgument. Nothing has been spent yet:
   no ticket, no hash, no write.
2. Policy version. The accepted version must be the current one, or
   FailedPrecondition names the current version.
3. The phone ticket is checked, not yet consumed: a REGISTER ticket (SMS) for
   the normalised phone, or TicketInvalid.
4. The caller's budget for login-name checks (`account.login_name.ip` per hour,
   `account.login_name.client` per minute), or RateLimited.
5. Login name taken? (blind-index lookup) → AlreadyExists(`login_name`); the
   ticket stays usable, so a user who picked a taken name just picks another.
6. The ticket is consumed.
7. Phone taken? → AlreadyExists(`phone`).
8. The password is hashed (Argon2id, off the event loop).
9. One unit of work: the account, its identifier rows, the consent record, the
   audit record and, for a document number another account holds, the notice
   to that holder. A unique violation on the login name or the phone (two
   registrations racing past steps 5/7) → AlreadyExists(field); nothing of the
   loser stays behind, but its ticket is spent.

Why the ticket comes before the login name (steps 3-5). Answering "taken" or
"free" for a login name to anyone would hand out a list of targets for password
spraying. So only a caller holding a live ticket (which costs a real SMS code
under the per-number send limits) gets an answer, and even then a bounded
number per address and per client; checking the ticket without consuming it
keeps the name check friendly to a user who just has to pick another name.

Why a taken ID number or USCC is not refused. Answering ALREADY_EXISTS for it
would tell a stranger, who only needs a phone of their own, whether a given
person or company has an account here: an enumeration oracle for exactly the
data the platform must protect (PIPL). So the registration goes through
exactly as with a free one, and the document number stays an unverified claim
in the new account's encrypted profile, *not bound*: no identifier row, so it
neither logs in nor blocks anyone, and real-name verification later decides
who holds it. The person who does hold it is told on their bound phone that
their details were used, and pointed to recovery or manual review (audited as
`account.identity_claimed`). Only that person learns anything. A taken phone
is still ALREADY_EXISTS: the caller has just proven control of that phone.

A legal person's representative. The organisation type and the
representative's type, name, ID type and number (privacy policy 一.3) are
optional, validated like a natural person's, and kept only in the encrypted
profile, where account recovery (`flows/recovery.py`) compares them. The
representative's ID number never becomes an identifier row: it identifies a
person, not the organisation, so it must not log in to the organisation's
account, and one person may represent many organisations, so it is not unique.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import (
    IdentifierKey,
    IdentifierTaken,
    NewAccount,
    SubjectType,
)
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.sink import AuditSink, outcome_of, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketConsumer
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    TicketInvalid,
)
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.privacy.policies import PolicyVersion
from xiaohe.identity.server.ratelimit.callers import CallerBudget, CallerLimits
from xiaohe.identity.server.shared.identifiers import (
    IdType,
    normalize_login_name,
    normalize_uscc,
    today_in_china,
)
from xiaohe.identity.server.shared.network import mask_ip
from xiaohe.identity.server.shared.validation import (
    MAX_NAME_CHARS,
    MAX_ORGANIZATION_NAME_CHARS,
    Violations,
    free_text,
    id_number_field,
    phone_field,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

MAX_CHANNEL_CHARS: Final = 40

IDENTITY_CLAIM_KINDS: Final = ("uscc", "id_number")
"""Document identifiers a registration claims but does not bind when another account holds them."""

LOGIN_NAME_CHECK_ACTION: Final = "account.login_name"
"""Rate-limit action of registrations reaching the login-name check (`.ip`, `.client`)."""

DEFAULT_NAME_CHECK_BUDGET: Final = CallerBudget(per_ip_hour=60, per_client_minute=600)

ORGANIZATION_TYPES: Final = frozenset(
    {
        "ENTERPRISE",
        "INDIVIDUAL_BUSINESS",
        "PUBLIC_INSTITUTION",
        "SOCIAL_ORGANIZATION",
        "GOVERNMENT_AGENCY",
        "OTHER",
    }
)
"""Organisation types (`OrganizationType` names without prefix); "" means not given."""

REPRESENTATIVE_TYPES: Final = frozenset({"LEGAL_REPRESENTATIVE", "PERSON_IN_CHARGE"})
"""Representative types (`RepresentativeType` names without prefix); "" means not given."""


@dataclass(frozen=True)
class RegisterCommand:
    """Create an account.

    `subject_type` is None when the request left it unspecified (the flow
    refuses that with a field violation). `phone_ticket` is the REGISTER ticket
    (SMS channel) from `CodeService.verify` for `phone`. A natural person may give
    `name`, `id_type` and `id_number`; a legal person may give `organization_name`,
    `uscc` and, for account recovery later (privacy policy 一.3, 一.5), the
    organisation type and its representative's type, name, ID type and number
    (types as enum names without prefix, "" for not given). Every profile field
    is optional; giving the other kind's fields is a violation.
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
    organization_type: str = ""
    representative_type: str = ""
    representative_name: str = field(default="", repr=False)
    representative_id_type: IdType = IdType.UNSPECIFIED
    representative_id_number: str = field(default="", repr=False)


@dataclass(frozen=True)
class RegisteredAccount:
    """The account that `register` created."""

    account_id: str


class PasswordChecker(Protocol):
    """The password policy (`credentials.passwords.PasswordPolicy`)."""

    def check(self, password: str, *, context: Sequence[str] = (), field: str = "password") -> str:
        """The normalised password, or InvalidArgument naming `field`."""
        ...


class PasswordHashing(Protocol):
    """Argon2id hashing off the event loop (`credentials.hasher.PasswordHasher`)."""

    async def hash(self, password: str) -> str:
        """The encoded hash of `password`."""
        ...


class PolicyVersions(Protocol):
    """The privacy policy store (`privacy.policies.PolicyStore`)."""

    async def current(self, *, fresh: bool = False) -> PolicyVersion:
        """The current version (possibly cached unless `fresh`)."""
        ...


@dataclass(frozen=True)
class _ValidRegistration:
    """A register request after normalisation and validation."""

    subject_type: SubjectType
    login_name: str
    password: str = field(repr=False)
    phone: str = field(repr=False)
    name: str = field(repr=False)
    id_type: IdType
    id_number: str = field(repr=False)
    organization_name: str
    uscc: str
    organization_type: str = ""
    representative_type: str = ""
    representative_name: str = field(default="", repr=False)
    representative_id_type: IdType = IdType.UNSPECIFIED
    representative_id_number: str = field(default="", repr=False)

    def profile(self) -> dict[str, str]:
        """The identity profile as stored (encrypted); a legal person's optional fields only
        when given. The representative's ID number lives only here: it is never an
        identifier row, so it neither logs in nor is unique."""
        if self.subject_type is SubjectType.NATURAL_PERSON:
            return {"name": self.name, "id_type": self.id_type.name, "id_number": self.id_number}
        optional = {
            "organization_type": self.organization_type,
            "representative_type": self.representative_type,
            "representative_name": self.representative_name,
            "representative_id_type": (
                self.representative_id_type.name if self.representative_id_number else ""
            ),
            "representative_id_number": self.representative_id_number,
        }
        return {
            "organization_name": self.organization_name,
            "uscc": self.uscc,
            **{key: value for key, value in optional.items() if value},
        }


@dataclass(frozen=True)
class _Representative:
    """A legal person's validated organisation type and representative (all optional)."""

    organization_type: str = ""
    representative_type: str = ""
    name: str = field(default="", repr=False)
    id_type: IdType = IdType.UNSPECIFIED
    id_number: str = field(default="", repr=False)


class RegistrationFlow:
    """Registers natural and legal persons (steps and reasons in the module docstring)."""

    def __init__(
        self,
        *,
        uow: UnitOfWork,
        accounts: AccountService,
        policies: PolicyVersions,
        consents: ConsentLedger,
        tickets: TicketConsumer,
        password_policy: PasswordChecker,
        hasher: PasswordHashing,
        notices: Notices | None,
        clock: Clock,
        allowed_country_codes: Collection[str] = ("86",),
        audit: AuditSink | None = None,
        name_checks: CallerLimits | None = None,
        name_check_budget: CallerBudget = DEFAULT_NAME_CHECK_BUDGET,
    ) -> None:
        self._uow = uow
        self._accounts = accounts
        self._policies = policies
        self._consents = consents
        self._tickets = tickets
        self._password_policy = password_policy
        self._hasher = hasher
        self._notices = notices
        self._clock = clock
        self._allowed_country_codes = tuple(allowed_country_codes)
        self._audit = audit
        self._name_checks = name_checks
        self._name_check_budget = name_check_budget

    def __repr__(self) -> str:
        return "RegistrationFlow()"

    async def register(
        self,
        cmd: RegisterCommand,
        *,
        client_id: str,
        channel: str,
        end_user_ip: str | None = None,
    ) -> RegisteredAccount:
        """Create an account (steps and their order in the module docstring).

        Raises InvalidArgument (all field violations at once), FailedPrecondition
        (outdated policy version), TicketInvalid, RateLimited (login-name checks),
        AlreadyExists(`login_name` or `phone`), or Overloaded (hashing queue full).
        The audit record's target is the account id, also for failures (a fresh
        id that then never exists).
        """
        account_id = self._accounts.new_account_id()
        try:
            valid = self._validate(cmd, channel=channel)
            await self._check_policy_version(cmd.accepted_policy_version)
            await self._tickets.check(
                cmd.phone_ticket,
                purpose=Purpose.REGISTER,
                channel=Channel.SMS,
                destination=valid.phone,
            )
            await self._charge_name_check(client_id, end_user_ip)
            await self._refuse_taken(valid, ["login_name"])
            claims = await self._tickets.consume(
                cmd.phone_ticket,
                purpose=Purpose.REGISTER,
                channel=Channel.SMS,
                destination=valid.phone,
            )
            if (claims.purpose, claims.channel, claims.destination) != (
                Purpose.REGISTER,
                Channel.SMS,
                valid.phone,
            ):  # defence in depth: the ticket service matched these already
                raise TicketInvalid()
            await self._refuse_taken(valid, ["phone"])
            held = await self._accounts.taken_kinds(self._document_claims(valid))
            password_hash = await self._hasher.hash(valid.password)
            await self._store(
                NewAccount(
                    account_id=account_id,
                    subject_type=valid.subject_type,
                    login_name=valid.login_name,
                    password_hash=password_hash,
                    accepted_policy_version=cmd.accepted_policy_version,
                    phone=valid.phone,
                    profile=valid.profile(),
                ),
                valid,
                held,
                client_id=client_id,
                channel=channel,
                ip_masked=mask_ip(end_user_ip or ""),
            )
        except Exception as exc:
            await record_quietly(
                self._audit, "account.register", account_id, outcome_of(exc), logger
            )
            raise
        return RegisteredAccount(account_id=account_id)

    async def _store(
        self,
        account: NewAccount,
        valid: _ValidRegistration,
        held: set[str],
        *,
        client_id: str,
        channel: str,
        ip_masked: str,
    ) -> None:
        """Step 9, as one unit of work; a document claim lost to a concurrent registration
        is left unbound like one held before (the unit of work is tried again without it)."""
        unbound = set(held)
        for _ in range(len(IDENTITY_CLAIM_KINDS) + 1):
            keys = [k for k in self._keys(valid).values() if k.kind not in unbound]
            try:
                async with self._uow.begin():
                    await self._accounts.create(account, keys)
                    await self._consents.record(
                        account.account_id,
                        account.accepted_policy_version,
                        client_id=client_id,
                        channel=channel,
                        ip_masked=ip_masked,
                    )
                    if self._audit is not None:
                        await self._audit.record("account.register", account.account_id, "ok")
                    for key in self._document_claims(valid):
                        if key.kind in unbound:
                            await self._tell_holder(key)
                return
            except IdentifierTaken as exc:
                if exc.kind not in IDENTITY_CLAIM_KINDS or exc.kind in unbound:
                    raise AlreadyExists(exc.kind) from None
                unbound.add(exc.kind)
        raise AssertionError("unreachable: each try leaves one more claim unbound")

    async def _tell_holder(self, key: IdentifierKey) -> None:
        """Point whoever holds a claimed ID number or USCC to recovery or review.

        The notice goes to that account's bound phone, never to the registrant,
        and says nothing about who registered (see the module docstring).
        """
        holder = await self._accounts.find_by_key(key)
        if holder is None or self._notices is None:
            return
        phone = (await self._accounts.get_personal_data(holder.account_id)).phone
        if phone:
            await self._notices.send("identity_claimed", phone=phone)
        if self._audit is not None:
            await self._audit.record("account.identity_claimed", holder.account_id, "notified")

    async def _charge_name_check(self, client_id: str, end_user_ip: str | None) -> None:
        """Step 4: one login-name check from this end user and this client (RateLimited)."""
        if self._name_checks is None:
            return
        await self._name_checks.charge(
            LOGIN_NAME_CHECK_ACTION,
            self._name_check_budget,
            client_id=client_id,
            end_user_ip=end_user_ip,
            now=self._clock.now(),
        )

    def _validate(self, cmd: RegisterCommand, *, channel: str) -> _ValidRegistration:
        """Normalise and validate every field of a register request; InvalidArgument lists all."""
        v = Violations()
        subject_type: SubjectType | None = None
        try:
            subject_type = None if cmd.subject_type is None else SubjectType(cmd.subject_type)
        except ValueError:
            subject_type = None
        if subject_type is None:
            choices = ", ".join(s.value for s in SubjectType)
            v.add("subject_type", f"must be specified: one of {choices}")

        login_name = v.run("login_name", cmd.login_name, normalize_login_name)
        phone = phone_field(v, "phone", cmd.phone, self._allowed_country_codes)
        if not cmd.phone_ticket.strip():
            v.add("phone_ticket", "must not be empty")
        if cmd.accepted_policy_version < 1:
            v.add("accepted_policy_version", "must be the number of the policy version accepted")
        if len(channel) > MAX_CHANNEL_CHARS:
            v.add("channel", f"must be at most {MAX_CHANNEL_CHARS} characters")

        name = id_number = organization_name = uscc = ""
        id_type = IdType.UNSPECIFIED
        representative = _Representative()
        natural_only = {
            "name": bool(cmd.name.strip()),
            "id_type": cmd.id_type != IdType.UNSPECIFIED,
            "id_number": bool(cmd.id_number.strip()),
        }
        legal_only = {
            "organization_name": bool(cmd.organization_name.strip()),
            "uscc": bool(cmd.uscc.strip()),
            "organization_type": bool(cmd.organization_type),
            "representative_type": bool(cmd.representative_type),
            "representative_name": bool(cmd.representative_name.strip()),
            "representative_id_type": cmd.representative_id_type != IdType.UNSPECIFIED,
            "representative_id_number": bool(cmd.representative_id_number.strip()),
        }
        if subject_type is SubjectType.NATURAL_PERSON:
            for field_name, given in legal_only.items():
                if given:
                    v.add(field_name, "must be empty for a natural person")
            name = free_text(v, "name", cmd.name, MAX_NAME_CHARS)
            if natural_only["id_type"] or natural_only["id_number"]:
                number = id_number_field(
                    v,
                    "id_number",
                    cmd.id_number,
                    cmd.id_type,
                    type_field="id_type",
                    today=today_in_china(self._clock),
                )
                if number:
                    id_type, id_number = IdType(cmd.id_type), number
        elif subject_type is SubjectType.LEGAL_PERSON:
            for field_name, given in natural_only.items():
                if given:
                    v.add(field_name, "must be empty for a legal person")
            organization_name = free_text(
                v, "organization_name", cmd.organization_name, MAX_ORGANIZATION_NAME_CHARS
            )
            if legal_only["uscc"]:
                uscc = v.run("uscc", cmd.uscc, normalize_uscc)
            representative = self._validate_representative(v, cmd)

        context = [w for w in (login_name or cmd.login_name.strip(), phone) if w]
        try:
            password = self._password_policy.check(cmd.password, context=context, field="password")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
            password = ""

        v.raise_if_any()
        assert subject_type is not None  # a missing one is a violation above
        return _ValidRegistration(
            subject_type=subject_type,
            login_name=login_name,
            password=password,
            phone=phone,
            name=name,
            id_type=id_type,
            id_number=id_number,
            organization_name=organization_name,
            uscc=uscc,
            organization_type=representative.organization_type,
            representative_type=representative.representative_type,
            representative_name=representative.name,
            representative_id_type=representative.id_type,
            representative_id_number=representative.id_number,
        )

    def _validate_representative(self, v: Violations, cmd: RegisterCommand) -> _Representative:
        """A legal person's optional organisation type and representative (violations into v)."""
        organization_type = representative_type = ""
        if cmd.organization_type:
            if cmd.organization_type in ORGANIZATION_TYPES:
                organization_type = cmd.organization_type
            else:
                v.add("organization_type", "unknown organization type")
        if cmd.representative_type:
            if cmd.representative_type in REPRESENTATIVE_TYPES:
                representative_type = cmd.representative_type
            else:
                v.add("representative_type", "unknown representative type")
        name = free_text(v, "representative_name", cmd.representative_name, MAX_NAME_CHARS)
        id_type, id_number = IdType.UNSPECIFIED, ""
        if cmd.representative_id_type != IdType.UNSPECIFIED or cmd.representative_id_number.strip():
            number = id_number_field(
                v,
                "representative_id_number",
                cmd.representative_id_number,
                cmd.representative_id_type,
                type_field="representative_id_type",
                today=today_in_china(self._clock),
            )
            if number:
                id_type, id_number = IdType(cmd.representative_id_type), number
        return _Representative(organization_type, representative_type, name, id_type, id_number)

    async def _check_policy_version(self, accepted: int) -> None:
        current = (await self._policies.current()).version
        if accepted != current:
            # The cache may predate a version published by another process moments ago.
            current = (await self._policies.current(fresh=True)).version
        if accepted != current:
            raise FailedPrecondition(
                f"the privacy policy has changed: accept the current version {current}",
                [
                    FieldViolation(
                        "accepted_policy_version", f"must be the current version {current}"
                    )
                ],
            )

    def _keys(self, valid: _ValidRegistration) -> dict[str, IdentifierKey]:
        """The blind-index keys of every identifier the registration would hold, by kind."""
        keys = {
            "login_name": self._accounts.key("login_name", valid.login_name),
            "phone": self._accounts.key("phone", valid.phone),
        }
        if valid.uscc:
            keys["uscc"] = self._accounts.key("uscc", valid.uscc)
        if valid.id_number:
            keys["id_number"] = self._accounts.id_number_key(valid.id_type, valid.id_number)
        return keys

    def _document_claims(self, valid: _ValidRegistration) -> list[IdentifierKey]:
        """The document identifiers a registration claims (USCC, ID number), if any."""
        keys = self._keys(valid)
        return [keys[kind] for kind in IDENTITY_CLAIM_KINDS if kind in keys]

    async def _refuse_taken(self, valid: _ValidRegistration, kinds: Sequence[str]) -> None:
        keys = self._keys(valid)
        taken = await self._accounts.taken_kinds([keys[k] for k in kinds if k in keys])
        for kind in kinds:
            if kind in taken:
                raise AlreadyExists(kind)


__all__ = [
    "DEFAULT_NAME_CHECK_BUDGET",
    "IDENTITY_CLAIM_KINDS",
    "LOGIN_NAME_CHECK_ACTION",
    "ORGANIZATION_TYPES",
    "REPRESENTATIVE_TYPES",
    "RegisterCommand",
    "RegisteredAccount",
    "RegistrationFlow",
]
