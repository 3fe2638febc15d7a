"""Accounts: registration, views, credentials for login, and master-key rotation.

Registration (`AccountService.register`) runs in this order, each step only if
the previous one passed:

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
9. One transaction inserts the account, its identifier rows and the consent
   record. A unique violation on the login name or the phone (two
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
their details were used, and pointed to recovery or manual review (a notice
through the outbox; audited as `account.identity_claimed`). Only that person
learns anything. A taken phone is still ALREADY_EXISTS: the caller has just
proven control of that phone, so it is theirs to know.
Personal data at rest (SECURITY.md I1): each account gets a random data key,
stored only wrapped under the key ring's active master key. Phone, email and the
profile (JSON of name/ID type/ID number, or organization name/USCC) are
AES-256-GCM ciphertexts under that key, each bound by its associated data to the
account id and column (`field_aad`). Equality lookups use blind indexes in the
`identifiers` table. Resident ID numbers are indexed as the bare number (so they
double as login identifiers); other identity documents as `<ID_TYPE>:<number>`,
since passport and permit numbers are unique only within their type.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    AccountStatus,
    AccountView,
    PersonalData,
    RegisterCommand,
    RegisteredAccount,
    SubjectType,
)
from xiaohe.identity.server.accounts.repository import (
    AccountRecord,
    AccountRepository,
    DataKeyUpdate,
    IdentifierKey,
    IdentifierTaken,
    NewAccountRecord,
)
from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketClaims, TicketConsumer
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import (
    DataKeyCipher,
    DecryptionError,
    MasterKeySource,
    WrappedDataKey,
    field_aad,
)
from xiaohe.identity.server.delivery.outbox import NOTICE_MESSAGE_TTL_SECONDS
from xiaohe.identity.server.delivery.templates import notice_time, render_notice
from xiaohe.identity.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    IdentityError,
    InvalidArgument,
    NotFound,
    TicketInvalid,
)
from xiaohe.identity.server.privacy.policies import PolicyVersion
from xiaohe.identity.server.ratelimit.callers import CallerBudget, CallerLimits
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    IdType,
    mask_email,
    mask_phone,
    normalize,
    normalize_id_number,
    normalize_login_name,
    normalize_phone,
    normalize_uscc,
    today_in_china,
)
from xiaohe.identity.server.storage.database import SqlConnection

logger = logging.getLogger(__name__)

ACCOUNT_ID_PREFIX: Final = "acc_"
ACCOUNT_ID_BYTES: Final = 12
MAX_IDENTIFIER_CHARS: Final = 256
"""Raw identifier inputs longer than this are refused before normalisation."""
MAX_NAME_CHARS: Final = 100
MAX_ORGANIZATION_NAME_CHARS: Final = 200
MAX_CHANNEL_CHARS: Final = 40
DEFAULT_REWRAP_BATCH: Final = 200

PHONE_FIELD: Final = "phone"
EMAIL_FIELD: Final = "email"
PROFILE_FIELD: Final = "profile"

_KIND_NAMES: Final = {
    IdentifierKind.LOGIN_NAME: "login_name",
    IdentifierKind.PHONE: "phone",
    IdentifierKind.USCC: "uscc",
    IdentifierKind.ID_NUMBER: "id_number",
    IdentifierKind.EMAIL: "email",
}


IDENTITY_CLAIM_KINDS: Final = ("uscc", "id_number")
"""Document identifiers a registration claims but does not bind when another account holds them."""

LOGIN_NAME_CHECK_ACTION: Final = "account.login_name"
"""Rate-limit action of registrations reaching the login-name check (`.ip`, `.client`)."""

DEFAULT_NAME_CHECK_BUDGET: Final = CallerBudget(per_ip_hour=60, per_client_minute=600)

NOTICE_PURPOSE: Final = "NOTICE"
"""Outbox purpose of security notices (no code inside)."""

# Purposes whose codes only make sense for a destination some account already holds.
ACCOUNT_BOUND_PURPOSES = frozenset({Purpose.LOGIN, Purpose.RESET_PASSWORD, Purpose.RECOVER_ACCOUNT})


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


class NoticeQueue(Protocol):
    """The delivery outbox, for security notices."""

    async def enqueue(
        self,
        channel: str,
        destination: str,
        purpose: str,
        text: str,
        subject: str = "",
        expires_in_seconds: float = ...,
    ) -> str:
        """Queue one message; Unavailable if nothing was queued."""
        ...


class PolicyVersionSource(Protocol):
    """The privacy policy store (`privacy.policies.PolicyStore`), as far as accounts need it."""

    async def current(self, *, fresh: bool = False) -> PolicyVersion:
        """The current version (possibly cached unless `fresh`)."""
        ...

    async def record_consent(
        self,
        conn: SqlConnection,
        account_id: str,
        version: int,
        client_id: str,
        channel: str,
        purpose: str = ...,
    ) -> str:
        """Record a consent inside the caller's transaction; returns its id."""
        ...


def kind_name(kind: IdentifierKind) -> str:
    """The `identifiers.kind` (and request field) name of an identifier kind."""
    try:
        return _KIND_NAMES[IdentifierKind(kind)]
    except (KeyError, ValueError):
        raise ValueError("identifier kind must be specified") from None


def id_number_index_value(id_type: IdType, normalised_number: str) -> str:
    """What the `id_number` blind index is computed over (see the module docstring)."""
    if id_type is IdType.RESIDENT_ID_CARD:
        return normalised_number
    return f"{id_type.name}:{normalised_number}"


@dataclass(frozen=True)
class _ValidRegistration:
    """A register request after normalisation and validation."""

    subject_type: SubjectType
    login_name: str
    password: str
    phone: str
    name: str
    id_type: IdType
    id_number: str
    organization_name: str
    uscc: str

    def profile_json(self) -> str:
        if self.subject_type is SubjectType.NATURAL_PERSON:
            profile = {"name": self.name, "id_type": self.id_type.name, "id_number": self.id_number}
        else:
            profile = {"organization_name": self.organization_name, "uscc": self.uscc}
        return json.dumps(profile, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


class _Violations:
    """Collects field violations; runs a normaliser and keeps its result or its violations."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field_name: str, description: str) -> None:
        self.items.append(FieldViolation(field_name, description))

    def run(self, field_name: str, raw: str, normaliser: Callable[[str], str]) -> str:
        if len(raw) > MAX_IDENTIFIER_CHARS:
            self.add(field_name, f"must be at most {MAX_IDENTIFIER_CHARS} characters")
            return ""
        try:
            return normaliser(raw)
        except InvalidArgument as exc:
            self.items.extend(exc.violations)
            return ""


def _free_text(violations: _Violations, field_name: str, raw: str, max_chars: int) -> str:
    """A normalised, optional free-text field (a name); control characters are refused."""
    value = normalize(raw) if len(raw) <= max_chars * 4 else raw
    if len(value) > max_chars:
        violations.add(field_name, f"must be at most {max_chars} characters")
        return ""
    if any(not ch.isprintable() for ch in value):
        violations.add(field_name, "must not contain control characters or line breaks")
        return ""
    return value


class AccountService:
    """Registers accounts, keeps their personal data encrypted, and serves the login service."""

    def __init__(
        self,
        *,
        repository: AccountRepository,
        policies: PolicyVersionSource,
        tickets: TicketConsumer,
        password_policy: PasswordChecker,
        hasher: PasswordHashing,
        cipher: DataKeyCipher,
        master_keys: MasterKeySource,
        blind_index: BlindIndex,
        clock: Clock,
        allowed_country_codes: Collection[str] = ("86",),
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        audit: AuditSink | None = None,
        rewrap_batch_size: int = DEFAULT_REWRAP_BATCH,
        name_checks: CallerLimits | None = None,
        name_check_budget: CallerBudget = DEFAULT_NAME_CHECK_BUDGET,
        notices: NoticeQueue | None = None,
    ) -> None:
        if rewrap_batch_size < 1:
            raise ValueError("rewrap_batch_size must be at least 1")
        self._repo = repository
        self._policies = policies
        self._tickets = tickets
        self._password_policy = password_policy
        self._hasher = hasher
        self._cipher = cipher
        self._master_keys = master_keys
        self._blind = blind_index
        self._clock = clock
        self._allowed_country_codes = tuple(allowed_country_codes)
        self._token_bytes = token_bytes
        self._audit = audit
        self._rewrap_batch_size = rewrap_batch_size
        self._name_checks = name_checks
        self._name_check_budget = name_check_budget
        self._notices = notices

    def __repr__(self) -> str:
        return "AccountService()"

    # -- registration -----------------------------------------------------------

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
        account_id = self._new_account_id()
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
            await self._check_taken(valid, ("login_name",))
            claims = await self._tickets.consume(
                cmd.phone_ticket,
                purpose=Purpose.REGISTER,
                channel=Channel.SMS,
                destination=valid.phone,
            )
            self._check_claims(claims, valid.phone)
            await self._check_taken(valid, ("phone",))
            held = await self._repo.taken_kinds(self._identity_claims(valid))
            password_hash = await self._hasher.hash(valid.password)
            unbound = await self._insert(
                account_id,
                valid,
                password_hash,
                cmd.accepted_policy_version,
                client_id=client_id,
                channel=channel,
                unbound=held,
            )
        except IdentityError as exc:
            await self._record("account.register", account_id, exc.reason.lower())
            raise
        except Exception:
            await self._record("account.register", account_id, "error")
            raise
        await self._record("account.register", account_id, "ok")
        for key in self._identity_claims(valid):
            if key.kind in unbound:
                await self._tell_identity_holder(key)
        return RegisteredAccount(account_id=account_id)

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

    def _identity_claims(self, valid: _ValidRegistration) -> list[IdentifierKey]:
        """The document identifiers a registration claims (USCC, ID number), if any."""
        keys = self._keys(valid)
        return [keys[kind] for kind in IDENTITY_CLAIM_KINDS if kind in keys]

    async def _tell_identity_holder(self, key: IdentifierKey) -> None:
        """Point whoever holds a claimed ID number or USCC to recovery or review (best effort).

        The notice goes to that account's bound phone, never to the registrant,
        and says nothing about who registered (see the module docstring).
        """
        holder = await self._repo.find_by_identifier(key)
        if holder is None or self._notices is None:
            return
        try:
            phone = self._decrypt(holder).phone
            if phone:
                await self._notices.enqueue(
                    "SMS",
                    phone,
                    NOTICE_PURPOSE,
                    render_notice("identity_claimed", at=notice_time(self._clock.now())),
                    expires_in_seconds=NOTICE_MESSAGE_TTL_SECONDS,
                )
        except Exception as exc:
            logger.warning(
                "identity claim notice for account %s not queued (%s)",
                holder.account_id,
                type(exc).__name__,
            )
            await self._record("account.identity_claimed", holder.account_id, "not_notified")
            return
        await self._record("account.identity_claimed", holder.account_id, "notified")

    def _validate(self, cmd: RegisterCommand, *, channel: str) -> _ValidRegistration:
        """Normalise and validate every field of a register request; InvalidArgument lists all."""
        v = _Violations()
        subject_type: SubjectType | None = None
        try:
            subject_type = None if cmd.subject_type is None else SubjectType(cmd.subject_type)
        except ValueError:
            subject_type = None
        if subject_type is None:
            choices = ", ".join(s.value for s in SubjectType)
            v.add("subject_type", f"must be specified: one of {choices}")

        login_name = v.run("login_name", cmd.login_name, normalize_login_name)
        phone = v.run(
            "phone",
            cmd.phone,
            lambda raw: normalize_phone(raw, "phone", self._allowed_country_codes),
        )
        if not cmd.phone_ticket.strip():
            v.add("phone_ticket", "must not be empty")
        if cmd.accepted_policy_version < 1:
            v.add("accepted_policy_version", "must be the number of the policy version accepted")
        if len(channel) > MAX_CHANNEL_CHARS:
            v.add("channel", f"must be at most {MAX_CHANNEL_CHARS} characters")

        name = id_number = organization_name = uscc = ""
        id_type = IdType.UNSPECIFIED
        natural_only = {
            "name": bool(cmd.name.strip()),
            "id_type": cmd.id_type != IdType.UNSPECIFIED,
            "id_number": bool(cmd.id_number.strip()),
        }
        legal_only = {
            "organization_name": bool(cmd.organization_name.strip()),
            "uscc": bool(cmd.uscc.strip()),
        }
        if subject_type is SubjectType.NATURAL_PERSON:
            for field_name, given in legal_only.items():
                if given:
                    v.add(field_name, "must be empty for a natural person")
            name = _free_text(v, "name", cmd.name, MAX_NAME_CHARS)
            if natural_only["id_type"] or natural_only["id_number"]:
                today = today_in_china(self._clock)
                number = v.run(
                    "id_number",
                    cmd.id_number,
                    lambda raw: normalize_id_number(cmd.id_type, raw, "id_number", today=today),
                )
                if number:
                    id_type, id_number = IdType(cmd.id_type), number
        elif subject_type is SubjectType.LEGAL_PERSON:
            for field_name, given in natural_only.items():
                if given:
                    v.add(field_name, "must be empty for a legal person")
            organization_name = _free_text(
                v, "organization_name", cmd.organization_name, MAX_ORGANIZATION_NAME_CHARS
            )
            if legal_only["uscc"]:
                uscc = v.run("uscc", cmd.uscc, normalize_uscc)

        context = [w for w in (login_name or cmd.login_name.strip(), phone) if w]
        try:
            password = self._password_policy.check(cmd.password, context=context, field="password")
        except InvalidArgument as exc:
            v.items.extend(exc.violations)
            password = ""

        if v.items or subject_type is None:
            raise InvalidArgument(v.items)
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
        )

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
            "login_name": self._key("login_name", valid.login_name),
            "phone": self._key("phone", valid.phone),
        }
        if valid.uscc:
            keys["uscc"] = self._key("uscc", valid.uscc)
        if valid.id_number:
            keys["id_number"] = self._key(
                "id_number", id_number_index_value(valid.id_type, valid.id_number)
            )
        return keys

    def _key(self, kind: str, value: str) -> IdentifierKey:
        return IdentifierKey(kind=kind, blind_index=self._blind.compute(kind, value))

    async def _check_taken(self, valid: _ValidRegistration, kinds: Sequence[str]) -> None:
        keys = self._keys(valid)
        wanted = [keys[k] for k in kinds if k in keys]
        taken = await self._repo.taken_kinds(wanted)
        for kind in kinds:
            if kind in taken:
                raise AlreadyExists(kind)

    @staticmethod
    def _check_claims(claims: TicketClaims, phone: str) -> None:
        """Defence in depth: the ticket service already matched these; refuse if it did not."""
        if (
            claims.purpose is not Purpose.REGISTER
            or claims.channel is not Channel.SMS
            or claims.destination != phone
        ):
            raise TicketInvalid()

    async def _insert(
        self,
        account_id: str,
        valid: _ValidRegistration,
        password_hash: str,
        policy_version: int,
        *,
        client_id: str,
        channel: str,
        unbound: set[str],
    ) -> set[str]:
        """Step 9; returns the claimed document kinds left unbound (held by another account).

        A document identifier that another registration bound in the meantime is
        left unbound too (the insert is retried without it); a login name or phone
        taken in the meantime is AlreadyExists.
        """
        data_key = self._cipher.new_data_key()
        now = self._clock.now()
        record = NewAccountRecord(
            account_id=account_id,
            subject_type=valid.subject_type.value,
            login_name=valid.login_name,
            password_hash=password_hash,
            status=AccountStatus.ACTIVE.value,
            accepted_policy_version=policy_version,
            real_name_level=0,
            master_key_id=data_key.wrapped.master_key_id,
            data_key_wrapped=data_key.wrapped.to_bytes(),
            phone_enc=self._cipher.encrypt_field(
                data_key.key, valid.phone, field_aad(account_id, PHONE_FIELD)
            ),
            email_enc=None,
            profile_enc=self._cipher.encrypt_field(
                data_key.key, valid.profile_json(), field_aad(account_id, PROFILE_FIELD)
            ),
            created_at=now,
        )
        unbound = set(unbound)
        for _ in range(len(IDENTITY_CLAIM_KINDS) + 1):
            keys = [k for k in self._keys(valid).values() if k.kind not in unbound]
            try:
                async with self._repo.begin() as conn:
                    await self._repo.insert(conn, record, keys)
                    await self._policies.record_consent(
                        conn, account_id, policy_version, client_id, channel
                    )
            except IdentifierTaken as exc:
                if exc.kind not in IDENTITY_CLAIM_KINDS or exc.kind in unbound:
                    raise AlreadyExists(exc.kind) from None
                unbound.add(exc.kind)
                continue
            return unbound
        raise AssertionError("unreachable: each retry leaves one more claim unbound")

    # -- reads ------------------------------------------------------------------------

    async def get_view(self, account_id: str) -> AccountView:
        """The account as its owner sees it, phone and email masked; NotFound if none."""
        record = await self._get(account_id)
        data = self._decrypt(record)
        return AccountView(
            account_id=record.account_id,
            subject_type=SubjectType(record.subject_type),
            login_name=record.login_name,
            phone_masked=mask_phone(data.phone) if data.phone else "",
            email_masked=mask_email(data.email) if data.email else "",
            accepted_policy_version=record.accepted_policy_version,
            real_name_level=record.real_name_level,
            created_at=record.created_at,
        )

    async def get_personal_data(self, account_id: str) -> PersonalData:
        """The account's decrypted personal data (export, recovery); NotFound if none."""
        return self._decrypt(await self._get(account_id))

    # -- for the login service ----------------------------------------------------------

    async def find_credentials(
        self, kind: IdentifierKind, normalised: str
    ) -> AccountCredentials | None:
        """The account holding a normalised identifier (ID_NUMBER: a resident ID), or None."""
        try:
            name = kind_name(kind)
        except ValueError:
            return None
        record = await self._repo.find_by_identifier(self._key(name, normalised))
        return None if record is None else _credentials(record)

    async def find_by_phone(self, e164: str) -> AccountCredentials | None:
        """The account whose phone is `e164` (normalised), or None."""
        return await self.find_credentials(IdentifierKind.PHONE, e164)

    async def receives_codes(self, channel: Channel, destination: str, purpose: Purpose) -> bool:
        """Whether a code for `purpose` is actually sent to this (normalised) destination.

        Codes that act on an existing account (login, password reset, recovery) go only
        to destinations an account holds; for any other, the code service pretends: it
        answers and counts limits exactly as if it had sent (SECURITY B4), so the response
        does not reveal who is registered. Every other purpose is sent to anyone.
        """
        if purpose not in ACCOUNT_BOUND_PURPOSES:
            return True
        kind = IdentifierKind.PHONE if channel is Channel.SMS else IdentifierKind.EMAIL
        return await self.find_credentials(kind, destination) is not None

    async def get_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials of an account; NotFound if none."""
        return _credentials(await self._get(account_id))

    async def set_password_hash(
        self, account_id: str, new_hash: str, *, expected_old_hash: str | None = None
    ) -> bool:
        """Store a new password hash (rehash at login, reset, change); NotFound if no account.

        With `expected_old_hash` the update is conditional: it happens only while
        the stored hash is still that one, and the result says whether it did
        (False: the hash has changed meanwhile, or there is no such account).
        The login rehash uses this so that it never overwrites a password that a
        concurrent change or reset has just set. Without it the update is
        unconditional and returns True or raises NotFound.
        """
        changed = await self._repo.set_password_hash(
            account_id, new_hash, self._clock.now(), expected_old_hash=expected_old_hash
        )
        if not changed and expected_old_hash is None:
            raise NotFound("account not found")
        return changed

    # -- key rotation -----------------------------------------------------------------

    async def rewrap_data_keys(self) -> int:
        """Re-wrap every data key under the active master key, in batches; returns how many.

        Only the wrapped keys change; the encrypted fields are untouched (they
        stay under the same data key). Each batch is one transaction with
        conditional updates, so it is safe to run while accounts are used, and
        running it again after an interruption continues where it stopped. A data
        key that cannot be unwrapped (its master key missing from the ring) is
        logged by account id and skipped rather than stopping the rotation.
        """
        # Pick up a rotation made by another process (usually the CLI) before comparing ids.
        self._master_keys.reload()
        active = self._master_keys.active_master_key.id
        total = 0
        after = ""
        while True:
            batch = await self._repo.stale_data_keys(active, after, self._rewrap_batch_size)
            if not batch:
                return total
            updates: list[DataKeyUpdate] = []
            for stored in batch:
                try:
                    new = self._cipher.rewrap(WrappedDataKey.from_bytes(stored.data_key_wrapped))
                except DecryptionError:
                    logger.error("cannot unwrap the data key of account %s", stored.account_id)
                    continue
                updates.append(
                    DataKeyUpdate(
                        account_id=stored.account_id,
                        old=stored.data_key_wrapped,
                        new=new.to_bytes(),
                        master_key_id=new.master_key_id,
                    )
                )
            total += await self._repo.replace_data_keys(updates)
            after = batch[-1].account_id

    # -- helpers -------------------------------------------------------------------------

    def _new_account_id(self) -> str:
        raw = self._token_bytes(ACCOUNT_ID_BYTES)
        if len(raw) != ACCOUNT_ID_BYTES:
            raise ValueError("the randomness source returned the wrong number of bytes")
        return ACCOUNT_ID_PREFIX + raw.hex()

    async def _get(self, account_id: str) -> AccountRecord:
        record = await self._repo.get(account_id)
        if record is None:
            raise NotFound("account not found")
        return record

    def _decrypt(self, record: AccountRecord) -> PersonalData:
        if record.data_key_wrapped is None:
            return PersonalData(account_id=record.account_id)
        key = self._cipher.unwrap(WrappedDataKey.from_bytes(record.data_key_wrapped))
        aid = record.account_id

        def open_field(blob: bytes | None, field_name: str) -> str:
            if blob is None:
                return ""
            return self._cipher.decrypt_field(key, blob, field_aad(aid, field_name))

        profile = json.loads(open_field(record.profile_enc, PROFILE_FIELD) or "{}")
        id_type_name = str(profile.get("id_type", IdType.UNSPECIFIED.name))
        return PersonalData(
            account_id=aid,
            phone=open_field(record.phone_enc, PHONE_FIELD),
            email=open_field(record.email_enc, EMAIL_FIELD),
            name=str(profile.get("name", "")),
            id_type=IdType[id_type_name]
            if id_type_name in IdType.__members__
            else IdType.UNSPECIFIED,
            id_number=str(profile.get("id_number", "")),
            organization_name=str(profile.get("organization_name", "")),
            uscc=str(profile.get("uscc", "")),
        )

    async def _record(self, action: str, target: str, outcome: str) -> None:
        """Write an audit record; a failing sink is logged, not propagated."""
        await record_quietly(self._audit, action, target, outcome, logger)


def _credentials(record: AccountRecord) -> AccountCredentials:
    return AccountCredentials(
        account_id=record.account_id,
        login_name=record.login_name,
        password_hash=record.password_hash,
        status=record.status,
        subject_type=SubjectType(record.subject_type),
        accepted_policy_version=record.accepted_policy_version,
        real_name_level=record.real_name_level,
    )


__all__ = [
    "ACCOUNT_ID_PREFIX",
    "AccountService",
    "AuditSink",
    "PasswordChecker",
    "PasswordHashing",
    "PolicyVersionSource",
    "TicketConsumer",
    "id_number_index_value",
    "kind_name",
]
