"""Accounts: their identifiers, credentials and personal data, kept encrypted; key rotation.

The account capability knows nothing of codes, sessions or policies: flows
(`flows/`) combine it with them. It offers lookups by identifier, the creation
of an account and the changes a flow makes to one (password, phone, email,
accepted policy version), each joining the flow's unit of work.

Personal data at rest (SECURITY.md I1): each account gets a random data key,
stored only wrapped under the key ring's active master key. Phone, email and the
profile (JSON of name/ID type/ID number, or organisation and representative
fields) are AES-256-GCM ciphertexts under that key, each bound by its associated
data to the account id and column (`field_aad`). Equality lookups use blind
indexes in the `identifiers` table. Resident ID numbers are indexed as the bare
number (so they double as login identifiers); other identity documents as
`<ID_TYPE>:<number>`, since passport and permit numbers are unique only within
their type.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Final, Literal

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    AccountStatus,
    AccountView,
    IdentifierTaken,
    NewAccount,
    PersonalData,
    SubjectType,
)
from xiaohe.identity.server.accounts.repository import (
    AccountRecord,
    AccountRepository,
    DataKeyUpdate,
    IdentifierKey,
    NewAccountRecord,
)
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import (
    DataKeyCipher,
    DecryptionError,
    MasterKeySource,
    WrappedDataKey,
    field_aad,
)
from xiaohe.identity.server.errors import AlreadyExists, Conflict, FailedPrecondition, NotFound
from xiaohe.identity.server.shared.identifiers import (
    IdentifierKind,
    IdType,
    mask_email,
    mask_phone,
)
from xiaohe.identity.server.storage.database import UnitOfWork

logger = logging.getLogger(__name__)

ACCOUNT_ID_PREFIX: Final = "acc_"
ACCOUNT_ID_BYTES: Final = 12
DEFAULT_REWRAP_BATCH: Final = 200

PHONE_FIELD: Final = "phone"
EMAIL_FIELD: Final = "email"
PROFILE_FIELD: Final = "profile"
DEACTIVATED_LOGIN_PREFIX: Final = "~"
"""A deactivated account's login name is this and its id: it frees the name for reuse."""

ContactKind = Literal["phone", "email"]
"""The channels an account is reached on, as `replace_contact` names them."""

_KIND_NAMES: Final = {
    IdentifierKind.LOGIN_NAME: "login_name",
    IdentifierKind.PHONE: "phone",
    IdentifierKind.USCC: "uscc",
    IdentifierKind.ID_NUMBER: "id_number",
    IdentifierKind.EMAIL: "email",
}


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


class AccountService:
    """Finds, creates and changes accounts; their personal data stays encrypted at rest."""

    def __init__(
        self,
        *,
        repository: AccountRepository,
        uow: UnitOfWork,
        cipher: DataKeyCipher,
        master_keys: MasterKeySource,
        blind_index: BlindIndex,
        clock: Clock,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        rewrap_batch_size: int = DEFAULT_REWRAP_BATCH,
    ) -> None:
        if rewrap_batch_size < 1:
            raise ValueError("rewrap_batch_size must be at least 1")
        self._repo = repository
        self._uow = uow
        self._cipher = cipher
        self._master_keys = master_keys
        self._blind = blind_index
        self._clock = clock
        self._token_bytes = token_bytes
        self._rewrap_batch_size = rewrap_batch_size

    def __repr__(self) -> str:
        return "AccountService()"

    # -- identifiers ------------------------------------------------------------------

    def new_account_id(self) -> str:
        """A fresh random account id (`acc_` + 24 hex digits)."""
        raw = self._token_bytes(ACCOUNT_ID_BYTES)
        if len(raw) != ACCOUNT_ID_BYTES:
            raise ValueError("the randomness source returned the wrong number of bytes")
        return ACCOUNT_ID_PREFIX + raw.hex()

    def key(self, kind: str, value: str) -> IdentifierKey:
        """The lookup key of a normalised identifier of `kind` (a blind index)."""
        return IdentifierKey(kind=kind, blind_index=self._blind.compute(kind, value))

    def id_number_key(self, id_type: IdType, normalised_number: str) -> IdentifierKey:
        """The lookup key of an identity document number of `id_type`."""
        return self.key("id_number", id_number_index_value(id_type, normalised_number))

    async def taken_kinds(self, keys: Sequence[IdentifierKey]) -> set[str]:
        """The kinds among `keys` that some account already holds."""
        return await self._repo.taken_kinds(keys)

    # -- creation ---------------------------------------------------------------------

    async def create(self, account: NewAccount, keys: Sequence[IdentifierKey]) -> None:
        """Store a new account, its encrypted data and identifier rows (in the unit of work).

        Raises `IdentifierTaken` naming the kind of a duplicate identifier; the
        caller's transaction is then unusable and must end (PostgreSQL aborts it).
        """
        data_key = self._cipher.new_data_key()
        aid = account.account_id

        def seal(value: str, field_name: str) -> bytes | None:
            if not value:
                return None
            return self._cipher.encrypt_field(data_key.key, value, field_aad(aid, field_name))

        profile = json.dumps(
            dict(account.profile), ensure_ascii=False, separators=(",", ":"), sort_keys=True
        )
        await self._repo.insert(
            NewAccountRecord(
                account_id=aid,
                subject_type=account.subject_type.value,
                login_name=account.login_name,
                password_hash=account.password_hash,
                status=AccountStatus.ACTIVE.value,
                accepted_policy_version=account.accepted_policy_version,
                real_name_level=0,
                master_key_id=data_key.wrapped.master_key_id,
                data_key_wrapped=data_key.wrapped.to_bytes(),
                phone_enc=seal(account.phone, PHONE_FIELD),
                email_enc=seal(account.email, EMAIL_FIELD),
                profile_enc=seal(profile, PROFILE_FIELD),
                created_at=self._clock.now(),
            ),
            keys,
        )

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
        """The account's decrypted personal data (export, recovery, notices); NotFound if none."""
        return self._decrypt(await self._get(account_id))

    async def identifiers_of(self, account_id: str) -> list[tuple[str, float]]:
        """The account's identifier kinds (`login_name`, `phone`, ...) and when each was
        bound, epoch seconds (issue 14: export)."""
        return await self._repo.identifiers_of(account_id)

    async def find_credentials(
        self, kind: IdentifierKind, normalised: str
    ) -> AccountCredentials | None:
        """The account holding a normalised identifier (ID_NUMBER: a resident ID), or None."""
        try:
            name = kind_name(kind)
        except ValueError:
            return None
        return await self.find_by_key(self.key(name, normalised))

    async def holds(self, kind: IdentifierKind, normalised: str) -> bool:
        """Whether some account holds a normalised identifier (ID_NUMBER: a resident ID).

        What `find_credentials(...) is not None` answers, for the price of one
        primary-key lookup in `identifiers`: no account row is read, nothing is
        decrypted. An unspecified kind is held by nobody.
        """
        try:
            name = kind_name(kind)
        except ValueError:
            return False
        return name in await self._repo.taken_kinds([self.key(name, normalised)])

    async def find_by_key(self, key: IdentifierKey) -> AccountCredentials | None:
        """The account holding this identifier key, or None."""
        record = await self._repo.find_by_identifier(key)
        return None if record is None else _credentials(record)

    async def find_by_phone(self, e164: str) -> AccountCredentials | None:
        """The account whose phone is `e164` (normalised), or None."""
        return await self.find_credentials(IdentifierKind.PHONE, e164)

    async def get_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials of an account; NotFound if none."""
        return _credentials(await self._get(account_id))

    async def lock_credentials(self, account_id: str) -> AccountCredentials:
        """The credentials read again with the account locked until the unit of work ends.

        Login reads them so inside the unit of work that starts its session: a
        concurrent change to the account (a recycled-number report) either commits
        before, and the session sees it, or waits, and then finds the session to end.
        NotFound if the account is gone.
        """
        record = await self._repo.get_for_update(account_id)
        if record is None:
            raise NotFound("account not found")
        return _credentials(record)

    # -- changes ----------------------------------------------------------------------

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

    async def replace_contact(
        self, account_id: str, channel: ContactKind, *, expected: str, new: str
    ) -> None:
        """Bind `new` as the account's phone or email instead of `expected` ("" for none).

        In the caller's unit of work: the account row is locked and read again,
        and if its current value is no longer `expected` (a concurrent change won)
        this raises Conflict and changes nothing, so of two concurrent changes of
        one account exactly one wins. `new` held by another account is
        AlreadyExists(channel), never saying whose. Every change records its time
        (`phone_changed_at` or `email_changed_at`: a cooling-off window starts).
        A phone reported recycled counts as none (`expected=""`), and binding a
        new one ends the stale state. NotFound if there is no account.
        """
        async with self._uow.begin():
            record = await self._repo.get_for_update(account_id)
            if record is None:
                raise NotFound("account not found")
            if record.data_key_wrapped is None:
                raise NotFound("account not found")  # crypto-shredded: nothing left to change
            key = self._cipher.unwrap(WrappedDataKey.from_bytes(record.data_key_wrapped))
            field_name = PHONE_FIELD if channel == "phone" else EMAIL_FIELD
            aad = field_aad(account_id, field_name)
            stored = record.phone_enc if field_name == PHONE_FIELD else record.email_enc
            if field_name == PHONE_FIELD and record.phone_stale_at is not None:
                stored = None  # a stale phone is no phone: its identifier row is gone already
            current = "" if stored is None else self._cipher.decrypt_field(key, stored, aad)
            if current != expected:
                raise Conflict(f"the {channel} was changed meanwhile; read it again and retry")
            blob = self._cipher.encrypt_field(key, new, aad) if new else None
            now = self._clock.now()
            await self._repo.set_contact(account_id, f"{field_name}_enc", blob, now)
            try:
                await self._repo.replace_identifier(
                    account_id,
                    self.key(channel, expected) if expected else None,
                    self.key(channel, new) if new else None,
                    now,
                )
            except IdentifierTaken:
                raise AlreadyExists(channel) from None

    async def mark_phone_stale(self, account_id: str, phone: str, *, bound_before: float) -> bool:
        """Mark the account's phone recycled if it is still `phone`, bound before `bound_before`.

        In the caller's unit of work, with the row locked and read again: the
        binding is marked stale (`phone_stale_at`) and the phone's identifier row
        is removed, so the number is free for its new owner and no lookup by it
        finds this account any more. The ciphertext stays (the binding is marked,
        not silently erased; SECURITY H3) but reads as no phone from now on.
        Returns whether it changed anything: False for an account without that
        phone (changed meanwhile, or stale already), one bound at or after
        `bound_before` (the new owner's), or a crypto-shredded one.
        """
        async with self._uow.begin():
            record = await self._repo.get_for_update(account_id)
            if record is None or record.data_key_wrapped is None:
                return False
            if record.phone_stale_at is not None or record.phone_enc is None:
                return False
            bound_at = (
                record.created_at if record.phone_changed_at is None else record.phone_changed_at
            )
            if bound_at >= bound_before:
                return False
            key = self._cipher.unwrap(WrappedDataKey.from_bytes(record.data_key_wrapped))
            aad = field_aad(account_id, PHONE_FIELD)
            if self._cipher.decrypt_field(key, record.phone_enc, aad) != phone:
                return False
            now = self._clock.now()
            await self._repo.mark_phone_stale(account_id, now)
            await self._repo.replace_identifier(account_id, self.key("phone", phone), None, now)
            return True

    async def accept_policy_version(self, account_id: str, version: int) -> None:
        """Record that the account accepted `version` (in the caller's unit of work)."""
        await self._repo.raise_policy_version(account_id, version, self._clock.now())

    async def set_real_name_level(self, account_id: str, level: int) -> None:
        """Set the real-name level tokens carry from the next refresh (0 none, 1 rules, 2 checked).

        Joins the caller's unit of work (the submission's state and its audit record
        commit with it); NotFound for an unknown account.
        """
        if level not in (0, 1, 2):
            raise ValueError("a real-name level is 0, 1 or 2")
        if not await self._repo.set_real_name_level(account_id, level, self._clock.now()):
            raise NotFound("account not found")

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

    # -- issue 14: deactivation --

    async def suspend_for_deactivation(self, account_id: str) -> bytes:
        """Mark an active account DEACTIVATION_PENDING and take its data key off the row.

        In the caller's unit of work, with the row locked: the wrap under the master
        key is removed, and the plaintext data key is returned for the caller to keep
        encrypted under a pending key held outside the database. From now on no
        database file, the live one or a copy, holds this key in a form the key ring
        alone can open. FailedPrecondition if the account is not active (or has no
        data key); NotFound if there is none.
        """
        async with self._uow.begin():
            record = await self._repo.get_for_update(account_id)
            if record is None:
                raise NotFound("account not found")
            if record.status != AccountStatus.ACTIVE or record.data_key_wrapped is None:
                raise FailedPrecondition("the account is not active")
            key = self._cipher.unwrap(WrappedDataKey.from_bytes(record.data_key_wrapped))
            moved = await self._repo.set_state(
                account_id,
                expected_status=AccountStatus.ACTIVE.value,
                status=AccountStatus.DEACTIVATION_PENDING.value,
                data_key_wrapped=None,
                master_key_id=record.master_key_id,
                now=self._clock.now(),
            )
            if not moved:
                raise Conflict("the account was changed meanwhile; read it again and retry")
        return key

    async def restore_after_deactivation(self, account_id: str, data_key: bytes) -> bool:
        """Make a DEACTIVATION_PENDING account active again, its data key wrapped under the
        active master key once more (in the caller's unit of work); False if not pending."""
        wrapped = self._cipher.wrap(data_key)
        return await self._repo.set_state(
            account_id,
            expected_status=AccountStatus.DEACTIVATION_PENDING.value,
            status=AccountStatus.ACTIVE.value,
            data_key_wrapped=wrapped.to_bytes(),
            master_key_id=wrapped.master_key_id,
            now=self._clock.now(),
        )

    async def erase(self, account_id: str) -> bool:
        """Complete a deactivation on the account row: DEACTIVATED, every ciphertext and the
        password hash cleared, the login name replaced by a tombstone no registration can
        choose (`~` is not a login-name character) and the identifier rows deleted, so
        phone, email, login name, ID number and USCC may be registered again. In the
        caller's unit of work; False if the account is not DEACTIVATION_PENDING."""
        return await self._repo.erase(
            account_id,
            expected_status=AccountStatus.DEACTIVATION_PENDING.value,
            status=AccountStatus.DEACTIVATED.value,
            login_name=DEACTIVATED_LOGIN_PREFIX + account_id,
            now=self._clock.now(),
        )

    # -- end deactivation --

    # -- helpers ------------------------------------------------------------------------

    async def data_key(self, account_id: str) -> bytes:
        """The account's unwrapped data key, for data it owns kept elsewhere (documents).

        Raises NotFound for an unknown account or one whose key was destroyed
        (anonymised): its documents are then unreadable by design. FailedPrecondition
        while a deactivation is in its cooling-off period: the key is held aside and comes
        back if the person signs in, so nothing may be written as if it were gone.
        """
        record = await self._get(account_id)
        if record.data_key_wrapped is None and record.status == AccountStatus.DEACTIVATION_PENDING:
            raise FailedPrecondition("the account is in its deactivation cooling-off period")
        if record.data_key_wrapped is None:
            raise NotFound("account not found")
        return self._cipher.unwrap(WrappedDataKey.from_bytes(record.data_key_wrapped))

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

        def text(name: str) -> str:
            return str(profile.get(name, ""))

        def id_type(name: str) -> IdType:
            value = text(name)
            return IdType[value] if value in IdType.__members__ else IdType.UNSPECIFIED

        phone_enc = None if record.phone_stale_at is not None else record.phone_enc
        return PersonalData(
            account_id=aid,
            phone=open_field(phone_enc, PHONE_FIELD),
            email=open_field(record.email_enc, EMAIL_FIELD),
            name=text("name"),
            id_type=id_type("id_type"),
            id_number=text("id_number"),
            organization_name=text("organization_name"),
            uscc=text("uscc"),
            organization_type=text("organization_type"),
            representative_type=text("representative_type"),
            representative_name=text("representative_name"),
            representative_id_type=id_type("representative_id_type"),
            representative_id_number=text("representative_id_number"),
        )


def _credentials(record: AccountRecord) -> AccountCredentials:
    return AccountCredentials(
        account_id=record.account_id,
        login_name=record.login_name,
        password_hash=record.password_hash,
        status=record.status,
        subject_type=SubjectType(record.subject_type),
        accepted_policy_version=record.accepted_policy_version,
        real_name_level=record.real_name_level,
        phone_changed_at=record.phone_changed_at,
        email_changed_at=record.email_changed_at,
        created_at=record.created_at,
        phone_stale_at=record.phone_stale_at,
    )


__all__ = [
    "ACCOUNT_ID_PREFIX",
    "AccountService",
    "ContactKind",
    "id_number_index_value",
    "kind_name",
]
