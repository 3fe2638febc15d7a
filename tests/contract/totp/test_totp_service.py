"""TotpService and MfaTickets on SQLite and PostgreSQL and the embedded Redis (SECURITY D3).

Codes are computed from the secret in the otpauth URI at the fake clock. "Two
workers" are two Database objects (two connection pools) on the same store.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.envelope import DataKeyCipher, DecryptionError
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import FailedPrecondition
from xiaohe.identity.server.storage.database import Database, utc
from xiaohe.identity.server.storage.schema import accounts, totp_factors
from xiaohe.identity.server.totp.codes import code_at
from xiaohe.identity.server.totp.repository import SqlTotpRepository
from xiaohe.identity.server.totp.service import TotpService
from xiaohe.identity.server.totp.tickets import MfaBinding, MfaTickets

ALICE, BOB = "acc_alice", "acc_bob"


async def add_account(database: Database, clock: FakeClock, account_id: str) -> None:
    async with database.begin() as conn:
        await conn.execute(
            sa.insert(accounts).values(
                account_id=account_id,
                subject_type="NATURAL_PERSON",
                login_name=f"user_{account_id}",
                password_hash="x",
                status="active",
                accepted_policy_version=1,
                real_name_level=0,
                master_key_id="mk",
                created_at=utc(clock.now()),
                updated_at=utc(clock.now()),
            )
        )


@pytest.fixture
def cipher(tmp_path: Path, clock: FakeClock) -> DataKeyCipher:
    return DataKeyCipher(KeyRing.load_or_create(tmp_path / "keyring.json", clock))


def service(database: Database, cipher: DataKeyCipher, clock: FakeClock) -> TotpService:
    return TotpService(
        SqlTotpRepository(database), cipher, clock, issuer="小禾企服网", recovery_key=b"r" * 32
    )


@pytest.fixture
async def totp(database: Database, cipher: DataKeyCipher, clock: FakeClock) -> TotpService:
    await add_account(database, clock, ALICE)
    await add_account(database, clock, BOB)
    return service(database, cipher, clock)


async def enrol(
    totp: TotpService, clock: FakeClock, account_id: str = ALICE
) -> tuple[str, list[str]]:
    """Enrol and confirm; the secret and the recovery codes. The clock moves one step on."""
    enrolment = await totp.start_enrolment(account_id, f"user_{account_id}")
    secret = parse_qs(urlparse(enrolment.otpauth_uri).query)["secret"][0]
    codes = await totp.activate(account_id, code_at(secret, clock.now()))
    assert codes is not None
    clock.advance(30)
    return secret, list(codes)


async def test_the_secret_is_sealed_and_bound_to_its_account(
    totp: TotpService, database: Database, clock: FakeClock
) -> None:
    """D3, I1: the database holds no secret; a sealed blob copied to another account's row
    does not open there."""
    secret, _ = await enrol(totp, clock)
    async with database.connect() as conn:
        blob = (
            await conn.execute(
                sa.select(totp_factors.c.secret_enc).where(totp_factors.c.account_id == ALICE)
            )
        ).scalar_one()
    assert secret.encode() not in bytes(blob)
    await totp.start_enrolment(BOB, "user_bob")
    async with database.begin() as conn:
        await conn.execute(
            totp_factors.update()
            .where(totp_factors.c.account_id == BOB)
            .values(secret_enc=blob, status="active")
        )
    with pytest.raises(DecryptionError):
        await totp.verify_code(BOB, code_at(secret, clock.now()))


async def test_a_code_is_accepted_once_even_by_two_workers_at_once(
    totp: TotpService, database_url: str, cipher: DataKeyCipher, clock: FakeClock
) -> None:
    """D3: two workers presenting the same code at the same moment: exactly one wins; a
    code of an older step is refused after a newer one was used."""
    secret, _ = await enrol(totp, clock)
    other_db = Database.from_url(database_url)
    try:
        other = service(other_db, cipher, clock)
        code = code_at(secret, clock.now())
        for _ in range(3):
            results = await asyncio.gather(
                totp.verify_code(ALICE, code), other.verify_code(ALICE, code)
            )
            assert sorted(results) == [False, True]
            clock.advance(30)
            code = code_at(secret, clock.now())
    finally:
        await other_db.close()
    newer = code_at(secret, clock.now() + 30)
    assert await totp.verify_code(ALICE, newer)  # one step ahead: drift
    assert not await totp.verify_code(ALICE, code_at(secret, clock.now()))  # older now


async def test_recovery_codes_are_single_use_under_concurrency(
    totp: TotpService, clock: FakeClock
) -> None:
    """D3: each recovery code works once, also when presented twice at once, and only for
    its own account."""
    _, codes = await enrol(totp, clock)
    await enrol(totp, clock, BOB)
    results = await asyncio.gather(*(totp.use_recovery_code(ALICE, codes[0]) for _ in range(4)))
    assert sorted(results) == [False, False, False, True]
    assert not await totp.use_recovery_code(BOB, codes[1])
    assert await totp.recovery_codes_left(ALICE) == 9
    assert await totp.use_recovery_code(ALICE, codes[1].upper())


async def test_enrolment_replaces_a_pending_secret_and_refuses_an_active_one(
    totp: TotpService, clock: FakeClock
) -> None:
    first = await totp.start_enrolment(ALICE, "user_alice")
    second = await totp.start_enrolment(ALICE, "user_alice")
    old = parse_qs(urlparse(first.otpauth_uri).query)["secret"][0]
    new = parse_qs(urlparse(second.otpauth_uri).query)["secret"][0]
    assert old != new
    assert await totp.activate(ALICE, code_at(old, clock.now())) is None
    assert not await totp.is_enrolled(ALICE)
    assert await totp.activate(ALICE, code_at(new, clock.now())) is not None
    assert await totp.is_enrolled(ALICE)
    # The confirming code's step is spent: it cannot sign in.
    assert not await totp.verify_code(ALICE, code_at(new, clock.now()))
    with pytest.raises(FailedPrecondition):
        await totp.start_enrolment(ALICE, "user_alice")
    with pytest.raises(FailedPrecondition):
        await totp.activate(ALICE, code_at(new, clock.now()))
    assert await totp.remove(ALICE)
    assert not await totp.is_enrolled(ALICE)
    assert await totp.recovery_codes_left(ALICE) == 0


async def test_an_mfa_ticket_carries_whether_the_password_was_long_enough(
    redis_client: aioredis.Redis,
) -> None:
    """P5: the binding keeps the yes-or-no of an operator's length (never the password); a
    ticket written without it (an older server) reads as no."""
    tickets = MfaTickets(redis_client)
    for long_password in (True, False):
        binding = MfaBinding(
            account_id=ALICE,
            method="pwd",
            client_id="xhc_1",
            audience="aud",
            long_password=long_password,
        )
        issued = await tickets.issue(binding)
        assert await tickets.check(issued.ticket) == binding
    older = await tickets.issue(MfaBinding(ALICE, "pwd", "xhc_1", "aud", long_password=True))
    key = f"xh:mfa:{{{hashlib.sha256(older.ticket.encode()).hexdigest()}}}"
    await redis_client.hdel(key, "long_pwd")
    checked = await tickets.check(older.ticket)
    assert checked is not None
    assert checked.account_id == ALICE
    assert not checked.long_password


async def test_mfa_tickets_are_hashed_bounded_and_single_use(
    redis_client: aioredis.Redis,
) -> None:
    """C5: Redis holds only the ticket's hash; a ticket takes at most max_attempts
    presentations and makes at most one session (one consume wins)."""
    tickets = MfaTickets(redis_client, ttl_seconds=300, max_attempts=3)
    binding = MfaBinding(account_id=ALICE, method="pwd", client_id="xhc_1", audience="aud")
    issued = await tickets.issue(binding)
    assert issued.expires_in == 300
    keys = [k.decode() for k in await redis_client.keys("xh:mfa:*")]
    assert keys == [f"xh:mfa:{{{hashlib.sha256(issued.ticket.encode()).hexdigest()}}}"]
    assert 0 < await redis_client.pttl(keys[0]) <= 300_000
    for _ in range(3):
        assert await tickets.check(issued.ticket) == binding
    assert await tickets.check(issued.ticket) is None  # used up
    again = await tickets.issue(binding)
    assert await tickets.check("mt1." + "A" * 43) is None
    assert await tickets.check("garbage") is None
    wins = await asyncio.gather(*(tickets.consume(again.ticket) for _ in range(5)))
    assert sorted(wins) == [False] * 4 + [True]
    assert await tickets.check(again.ticket) is None
