"""AccountService against in-memory fakes: validation, the order of the steps, what is spent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from xiaohe.identity.server.accounts.models import (
    AccountCredentials,
    PersonalData,
    SubjectType,
)
from xiaohe.identity.server.accounts.repository import (
    AccountRecord,
    DataKeyUpdate,
    IdentifierKey,
    IdentifierTaken,
    NewAccountRecord,
    StoredDataKey,
)
from xiaohe.identity.server.accounts.service import (
    AccountService,
    id_number_index_value,
    kind_name,
)
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import Channel, Purpose, TicketClaims
from xiaohe.identity.server.credentials.passwords import CommonPasswords, PasswordPolicy
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher, WrappedDataKey, field_aad
from xiaohe.identity.server.crypto.keyring import MasterKey, UnknownKeyError
from xiaohe.identity.server.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    TicketInvalid,
)
from xiaohe.identity.server.flows.registration import RegisterCommand, RegistrationFlow
from xiaohe.identity.server.privacy.policies import PolicyVersion
from xiaohe.identity.server.shared.identifiers import IdentifierKind, IdType

PHONE_E164 = "+8613812345678"
TICKET = "vt1.0123456789abcdef0123456789abcdef.ticket"


class FakeKeys:
    """A MasterKeySource with keys in memory; `rotate` adds and activates one."""

    def __init__(self) -> None:
        self.keys = [MasterKey("mk-1", bytes([1]) * 32)]
        self.reloads = 0

    @property
    def active_master_key(self) -> MasterKey:
        return self.keys[-1]

    def master_key(self, key_id: str) -> MasterKey:
        for key in self.keys:
            if key.id == key_id:
                return key
        raise UnknownKeyError(key_id)

    def reload(self) -> None:
        self.reloads += 1

    def rotate(self) -> None:
        self.keys.append(MasterKey(f"mk-{len(self.keys) + 1}", bytes([len(self.keys) + 1]) * 32))


@dataclass
class FakeRepository:
    """An AccountRepository in dicts, enforcing the same uniqueness as the SQL one."""

    accounts: dict[str, AccountRecord] = field(default_factory=dict)
    index: dict[tuple[str, str], str] = field(default_factory=dict)
    taken_calls: list[list[str]] = field(default_factory=list)

    async def taken_kinds(self, keys: Sequence[IdentifierKey]) -> set[str]:
        self.taken_calls.append([k.kind for k in keys])
        return {k.kind for k in keys if (k.kind, k.blind_index) in self.index}

    async def insert(self, account: NewAccountRecord, keys: Sequence[IdentifierKey]) -> None:
        if any(a.login_name == account.login_name for a in self.accounts.values()):
            raise IdentifierTaken("login_name")
        for key in keys:
            if (key.kind, key.blind_index) in self.index:
                raise IdentifierTaken(key.kind)
        for key in keys:
            self.index[(key.kind, key.blind_index)] = account.account_id
        self.accounts[account.account_id] = AccountRecord(
            **{k: v for k, v in vars(account).items()}, updated_at=account.created_at
        )

    async def get(self, account_id: str) -> AccountRecord | None:
        return self.accounts.get(account_id)

    async def find_by_identifier(self, key: IdentifierKey) -> AccountRecord | None:
        account_id = self.index.get((key.kind, key.blind_index))
        return None if account_id is None else self.accounts[account_id]

    async def set_password_hash(
        self,
        account_id: str,
        password_hash: str,
        now: float,
        *,
        expected_old_hash: str | None = None,
    ) -> bool:
        record = self.accounts.get(account_id)
        if record is None:
            return False
        self.accounts[account_id] = replace(record, password_hash=password_hash, updated_at=now)
        return True

    async def stale_data_keys(
        self, active_master_key_id: str, after_account_id: str, limit: int
    ) -> list[StoredDataKey]:
        rows = sorted(
            (a for a in self.accounts.values() if a.master_key_id != active_master_key_id),
            key=lambda a: a.account_id,
        )
        return [
            StoredDataKey(a.account_id, a.data_key_wrapped)
            for a in rows
            if a.account_id > after_account_id and a.data_key_wrapped is not None
        ][:limit]

    async def replace_data_keys(self, updates: Sequence[DataKeyUpdate]) -> int:
        for u in updates:
            self.accounts[u.account_id] = replace(
                self.accounts[u.account_id], data_key_wrapped=u.new, master_key_id=u.master_key_id
            )
        return len(updates)


@dataclass
class FakeUnitOfWork:
    """Counts the units of work a flow opens."""

    transactions: int = 0
    open: bool = False

    @asynccontextmanager
    async def _begin(self) -> AsyncIterator[object]:
        if self.open:
            yield object()
            return
        self.transactions += 1
        self.open = True
        try:
            yield object()
        finally:
            self.open = False

    def begin(self) -> Any:
        return self._begin()

    def in_transaction(self) -> bool:
        return self.open

    async def after_commit(self, work: Any) -> None:
        result = work()
        if result is not None:
            await result


@dataclass
class FakePolicies:
    """A policy source at a fixed version."""

    version: int = 1
    fresh_reads: int = 0

    async def current(self, *, fresh: bool = False) -> PolicyVersion:
        self.fresh_reads += fresh
        return PolicyVersion(self.version, "text", "0" * 64, 0.0)


@dataclass
class FakeConsents:
    """Remembers consents."""

    records: list[tuple[str, int, str, str, str]] = field(default_factory=list)

    async def record(
        self,
        account_id: str,
        version: int,
        *,
        client_id: str,
        channel: str,
        purpose: str = "privacy_policy",
        ip_masked: str = "",
    ) -> str:
        self.records.append((account_id, version, client_id, channel, purpose))
        return "con_1"


@dataclass
class FakeTickets:
    """Accepts TICKET once for whatever destination it is asked about (or a fixed claim)."""

    consumed: list[tuple[str, Purpose, Channel | None, str | None]] = field(default_factory=list)
    claims: TicketClaims | None = None
    used: bool = False

    async def check(
        self,
        ticket: str,
        *,
        purpose: Purpose,
        channel: Channel | None = None,
        destination: str | None = None,
    ) -> TicketClaims:
        if ticket != TICKET or self.used:
            raise TicketInvalid()
        return self.claims or TicketClaims(
            channel=channel or Channel.SMS,
            destination=destination or "",
            purpose=purpose,
            issued_at=0.0,
        )

    async def consume(
        self,
        ticket: str,
        *,
        purpose: Purpose,
        channel: Channel | None = None,
        destination: str | None = None,
    ) -> TicketClaims:
        self.consumed.append((ticket, purpose, channel, destination))
        if ticket != TICKET or self.used:
            raise TicketInvalid()
        self.used = True
        return self.claims or TicketClaims(
            channel=channel or Channel.SMS,
            destination=destination or "",
            purpose=purpose,
            issued_at=0.0,
        )


@dataclass
class FakeNotices:
    """Remembers sent notices: (kind, phone, email)."""

    sent: list[tuple[str, str, str]] = field(default_factory=list)

    async def send(self, kind: str, *, phone: str = "", email: str = "", **fields: str) -> int:
        self.sent.append((kind, phone, email))
        return 1


@dataclass
class FakeHasher:
    """Counts hashes; can pretend to be overloaded."""

    calls: int = 0
    overloaded: bool = False

    async def hash(self, password: str) -> str:
        if self.overloaded:
            raise Overloaded()
        self.calls += 1
        return f"$fake${len(password)}"


@dataclass
class Audit:
    """Remembers audit records."""

    records: list[tuple[str, str, str]] = field(default_factory=list)

    async def record(self, action: str, target: str, outcome: str) -> None:
        self.records.append((action, target, outcome))


@dataclass
class Harness:
    service: RegistrationFlow
    accounts: AccountService
    repo: FakeRepository
    uow: FakeUnitOfWork
    policies: FakePolicies
    consents: FakeConsents
    tickets: FakeTickets
    hasher: FakeHasher
    keys: FakeKeys
    cipher: DataKeyCipher
    blind: BlindIndex
    audit: Audit


@pytest.fixture(scope="module")
def password_policy() -> PasswordPolicy:
    return PasswordPolicy(CommonPasswords(["password", "123456", "iloveyou", "qwerty123"]))


_ACCOUNT_ARGS = frozenset(
    {
        "repository",
        "uow",
        "cipher",
        "master_keys",
        "blind_index",
        "token_bytes",
        "rewrap_batch_size",
    }
)


def make_harness(password_policy: PasswordPolicy, **overrides: Any) -> Harness:
    keys = FakeKeys()
    cipher = DataKeyCipher(keys)
    blind = BlindIndex(bytes(range(32)))
    h = Harness(
        service=None,  # type: ignore[arg-type]
        accounts=None,  # type: ignore[arg-type]
        repo=FakeRepository(),
        uow=FakeUnitOfWork(),
        policies=FakePolicies(),
        consents=FakeConsents(),
        tickets=FakeTickets(),
        hasher=FakeHasher(),
        keys=keys,
        cipher=cipher,
        blind=blind,
        audit=Audit(),
    )
    counter = iter(range(1, 1000))
    clock = FakeClock()
    kwargs: dict[str, Any] = {
        "repository": h.repo,
        "cipher": cipher,
        "master_keys": keys,
        "blind_index": blind,
        "token_bytes": lambda n: next(counter).to_bytes(n, "big"),
        "uow": h.uow,
        "policies": h.policies,
        "consents": h.consents,
        "tickets": h.tickets,
        "password_policy": password_policy,
        "hasher": h.hasher,
        "notices": None,
        "audit": h.audit,
    }
    kwargs.update(overrides)
    h.accounts = AccountService(
        clock=clock, **{k: v for k, v in kwargs.items() if k in _ACCOUNT_ARGS}
    )
    h.service = RegistrationFlow(
        accounts=h.accounts,
        clock=clock,
        **{k: v for k, v in kwargs.items() if k not in _ACCOUNT_ARGS or k == "uow"},
    )
    return h


@pytest.fixture
def h(password_policy: PasswordPolicy) -> Harness:
    return make_harness(password_policy)


def natural(**changes: Any) -> RegisterCommand:
    return replace(
        RegisterCommand(
            subject_type=SubjectType.NATURAL_PERSON,
            login_name="zhangsan",
            password="Blue-Orchid-Lantern-47",
            phone="13812345678",
            phone_ticket=TICKET,
            accepted_policy_version=1,
            name="张三",
            id_type=IdType.RESIDENT_ID_CARD,
            id_number="11010519491231002X",
        ),
        **changes,
    )


def legal(**changes: Any) -> RegisterCommand:
    return replace(
        RegisterCommand(
            subject_type=SubjectType.LEGAL_PERSON,
            login_name="qinghai-tech",
            password="Blue-Orchid-Lantern-47",
            phone="13987654321",
            phone_ticket=TICKET,
            accepted_policy_version=1,
            organization_name="青海小禾科技服务有限公司",
            uscc="91350100M000100Y43",
        ),
        **changes,
    )


async def register(h: Harness, cmd: RegisterCommand) -> str:
    return (await h.service.register(cmd, client_id="bff", channel="web")).account_id


def nothing_spent(h: Harness) -> bool:
    return not h.tickets.consumed and h.hasher.calls == 0 and not h.repo.accounts


async def test_a_registration_walks_every_step(h: Harness) -> None:
    """Ticket consumed for (REGISTER, SMS, normalised phone), hash, one transaction, consent."""
    account_id = await register(h, natural(phone="+86 138-1234-5678"))
    assert account_id == "acc_" + (1).to_bytes(12, "big").hex()
    assert h.tickets.consumed == [(TICKET, Purpose.REGISTER, Channel.SMS, PHONE_E164)]
    assert h.hasher.calls == 1
    assert h.uow.transactions == 1
    assert h.consents.records == [(account_id, 1, "bff", "web", "privacy_policy")]
    assert h.audit.records == [("account.register", account_id, "ok")]
    record = h.repo.accounts[account_id]
    assert record.password_hash == "$fake$22"
    assert record.status == "active"
    assert record.master_key_id == "mk-1"
    assert record.email_enc is None
    # The login name is checked before the ticket is spent, the phone after it, and the
    # document claims last (they never refuse a registration).
    assert h.repo.taken_calls == [["login_name"], ["phone"], ["id_number"]]


async def test_every_violation_is_reported_at_once_and_nothing_is_spent(h: Harness) -> None:
    """[F3] One InvalidArgument carries every bad field; no ticket, hash or write is spent."""
    cmd = RegisterCommand(
        subject_type=None,
        login_name="zh",
        password="123456",
        phone="+1 555 0100",
        phone_ticket=" ",
        accepted_policy_version=0,
    )
    with pytest.raises(InvalidArgument) as caught:
        await register(h, cmd)
    fields = [v.field for v in caught.value.violations]
    assert sorted(fields) == sorted(
        [
            "subject_type",
            "login_name",
            "phone",
            "phone_ticket",
            "accepted_policy_version",
            "password",
        ]
    )
    assert nothing_spent(h)
    assert h.audit.records[0][2] == "invalid_argument"


@pytest.mark.parametrize(
    ("cmd", "field", "fragment"),
    [
        (natural(uscc="91350100M000100Y43"), "uscc", "natural person"),
        (natural(organization_name="某公司"), "organization_name", "natural person"),
        (legal(name="张三"), "name", "legal person"),
        (legal(id_type=IdType.RESIDENT_ID_CARD), "id_type", "legal person"),
        (natural(id_type=IdType.UNSPECIFIED), "id_type", "must be specified"),
        (natural(id_number=""), "id_number", "must not be empty"),
        (natural(id_number="11010519491231002Y"), "id_number", "digit or X"),
        (natural(id_number="110105194902301234"), "id_number", "not a valid date"),
        (natural(id_type=IdType.PASSPORT, id_number="E1"), "id_number", "5-20"),
        (natural(name="张\n三"), "name", "control characters"),
        (natural(name="张" * 101), "name", "at most 100"),
        (legal(uscc="91350100M000100Y4"), "uscc", "18 characters"),
        (natural(phone="1" * 300), "phone", "at most 256"),
        (natural(password="zhangsan-forever"), "password", "login name"),
        (natural(password="pw-8613812345678"), "password", "phone number"),
        (natural(password="Xiaohe-is-great-2024"), "password", "platform name"),
        (natural(password="Qwerty123"), "password", "common"),
    ],
)
async def test_field_violations_name_the_field_and_say_why(
    h: Harness, cmd: RegisterCommand, field: str, fragment: str
) -> None:
    """[P2] Each bad field is reported on its own name with the reason, before anything is spent."""
    with pytest.raises(InvalidArgument) as caught:
        await register(h, cmd)
    violations = {v.field: v.description for v in caught.value.violations}
    assert field in violations, violations
    assert fragment in violations[field]
    assert nothing_spent(h)


async def test_outdated_policy_is_refused_before_the_ticket(h: Harness) -> None:
    """[I3] FailedPrecondition names the current version; the cache is re-read once first."""
    h.policies.version = 4
    with pytest.raises(FailedPrecondition) as caught:
        await register(h, natural(accepted_policy_version=3))
    assert caught.value.violations[0].field == "accepted_policy_version"
    assert "4" in caught.value.violations[0].description
    assert h.policies.fresh_reads == 1
    assert nothing_spent(h)
    assert h.audit.records[-1][2] == "failed_precondition"


async def test_taken_login_name_keeps_the_ticket_but_taken_phone_spends_it(h: Harness) -> None:
    """Login names are checked before the ticket; phone, USCC and ID number only after it."""
    await register(h, natural())
    h.tickets.used = False
    with pytest.raises(AlreadyExists) as caught:
        await register(h, natural(phone="13987654321", id_number="440524188001010014"))
    assert caught.value.field == "login_name"
    assert not h.tickets.used

    with pytest.raises(AlreadyExists) as caught:
        await register(h, natural(login_name="lisi", id_number="440524188001010014"))
    assert caught.value.field == "phone"
    assert h.tickets.used
    assert h.hasher.calls == 1  # only the first registration was hashed
    assert len(h.repo.accounts) == 1


async def test_a_lost_race_maps_to_already_exists(password_policy: PasswordPolicy) -> None:
    """A duplicate phone only the insert notices (a race) is AlreadyExists naming the field."""
    h = make_harness(password_policy)
    await register(h, natural())
    h.tickets.used = False

    async def nothing_taken(keys: Sequence[IdentifierKey]) -> set[str]:
        return set()

    h.repo.taken_kinds = nothing_taken  # type: ignore[method-assign]
    with pytest.raises(AlreadyExists) as caught:
        await register(h, natural(login_name="lisi", id_type=IdType.UNSPECIFIED, id_number=""))
    assert caught.value.field == "phone"
    assert len(h.repo.accounts) == 1
    assert h.audit.records[-1][2] == "already_exists"


async def test_a_document_claim_lost_in_a_race_is_left_unbound(
    password_policy: PasswordPolicy,
) -> None:
    """F5: an ID number another registration bound meanwhile is not an error: it stays unbound."""
    notices = FakeNotices()
    h = make_harness(password_policy, notices=notices)
    first = await register(h, natural())
    h.tickets.used = False

    async def nothing_taken(keys: Sequence[IdentifierKey]) -> set[str]:
        return set()

    h.repo.taken_kinds = nothing_taken  # type: ignore[method-assign]
    second = await register(h, natural(login_name="lisi", phone="13987654321"))
    assert second != first
    bound = {kind for (kind, _), owner in h.repo.index.items() if owner == second}
    assert bound == {"login_name", "phone"}
    assert h.audit.records[-2:] == [
        ("account.register", second, "ok"),
        ("account.identity_claimed", first, "notified"),
    ]
    assert notices.sent == [("identity_claimed", PHONE_E164, "")]


async def test_claims_for_another_destination_are_refused(h: Harness) -> None:
    """Defence in depth: claims that do not match the request are TicketInvalid, nothing stored."""
    h.tickets.claims = TicketClaims(Channel.SMS, "+8613900000000", Purpose.REGISTER, 0.0)
    with pytest.raises(TicketInvalid):
        await register(h, natural())
    h.tickets.claims = TicketClaims(Channel.SMS, PHONE_E164, Purpose.LOGIN, 0.0)
    h.tickets.used = False
    with pytest.raises(TicketInvalid):
        await register(h, natural())
    assert not h.repo.accounts
    assert h.hasher.calls == 0
    assert h.audit.records[-1][2] == "ticket_invalid"


async def test_overload_while_hashing_stores_nothing(h: Harness) -> None:
    """A full hashing queue is Overloaded; nothing is written."""
    h.hasher.overloaded = True
    with pytest.raises(Overloaded):
        await register(h, natural())
    assert not h.repo.accounts
    assert h.audit.records[-1][2] == "overloaded"


async def test_personal_data_is_encrypted_per_field_and_readable(h: Harness) -> None:
    """[I1] Phone and profile are ciphertexts bound to the account and field; the view masks."""
    account_id = await register(h, natural(id_number="11010519491231002x"))
    record = h.repo.accounts[account_id]
    assert record.data_key_wrapped is not None
    assert record.phone_enc is not None
    assert record.profile_enc is not None
    assert b"13812345678" not in record.phone_enc
    key = h.cipher.unwrap(WrappedDataKey.from_bytes(record.data_key_wrapped))
    profile = h.cipher.decrypt_field(key, record.profile_enc, field_aad(account_id, "profile"))
    assert json.loads(profile) == {
        "id_number": "11010519491231002X",
        "id_type": "RESIDENT_ID_CARD",
        "name": "张三",
    }
    data = await h.accounts.get_personal_data(account_id)
    assert data == PersonalData(
        account_id=account_id,
        phone=PHONE_E164,
        name="张三",
        id_type=IdType.RESIDENT_ID_CARD,
        id_number="11010519491231002X",
    )
    view = await h.accounts.get_view(account_id)
    assert (view.phone_masked, view.email_masked) == ("138****5678", "")
    with pytest.raises(NotFound):
        await h.accounts.get_personal_data("acc_missing")


async def test_shredded_account_reads_as_empty(h: Harness) -> None:
    """[I5] Without its data key an account's personal data is gone, not an error."""
    account_id = await register(h, natural())
    h.repo.accounts[account_id] = replace(h.repo.accounts[account_id], data_key_wrapped=None)
    assert await h.accounts.get_personal_data(account_id) == PersonalData(account_id=account_id)
    assert (await h.accounts.get_view(account_id)).phone_masked == ""


async def test_identifier_kinds_and_index_values(h: Harness) -> None:
    """Resident IDs are indexed bare (they are login identifiers); other documents by type."""
    assert id_number_index_value(IdType.RESIDENT_ID_CARD, "11010519491231002X") == (
        "11010519491231002X"
    )
    assert id_number_index_value(IdType.PASSPORT, "E12345678") == "PASSPORT:E12345678"
    assert kind_name(IdentifierKind.USCC) == "uscc"
    with pytest.raises(ValueError, match="specified"):
        kind_name(IdentifierKind.UNSPECIFIED)

    account_id = await register(h, natural(id_type=IdType.PASSPORT, id_number="e1234-5678"))
    assert ("id_number", h.blind.compute("id_number", "PASSPORT:E12345678")) in h.repo.index
    assert await h.accounts.find_credentials(IdentifierKind.ID_NUMBER, "E12345678") is None
    creds = await h.accounts.find_credentials(IdentifierKind.LOGIN_NAME, "zhangsan")
    assert isinstance(creds, AccountCredentials)
    assert creds.account_id == account_id


async def test_rewrap_moves_every_key_to_the_active_master_key(
    password_policy: PasswordPolicy,
) -> None:
    """Rotation re-wraps in batches, after reloading the ring; data blobs are untouched."""
    h = make_harness(password_policy, rewrap_batch_size=1)
    first = await register(h, natural(id_type=IdType.UNSPECIFIED, id_number=""))
    h.tickets.used = False
    second = await register(h, legal())
    blobs = {a: h.repo.accounts[a].phone_enc for a in (first, second)}
    h.keys.rotate()
    assert await h.accounts.rewrap_data_keys() == 2
    assert h.keys.reloads == 1
    for account_id in (first, second):
        assert h.repo.accounts[account_id].master_key_id == "mk-2"
        assert h.repo.accounts[account_id].phone_enc == blobs[account_id]
    assert (await h.accounts.get_personal_data(second)).uscc == "91350100M000100Y43"
    assert await h.accounts.rewrap_data_keys() == 0


async def test_commands_and_records_do_not_show_secrets_in_repr() -> None:
    """Passwords, phones, tickets, ID numbers and hashes stay out of logs and tracebacks."""
    text = repr(natural())
    for secret in ("Blue-Orchid", "13812345678", TICKET, "11010519491231002X", "张三"):
        assert secret not in text
    creds = AccountCredentials(
        "acc_1", "zs", "$argon2id$secret", "active", SubjectType.LEGAL_PERSON, 1, 0
    )
    assert "$argon2id$secret" not in repr(creds)
