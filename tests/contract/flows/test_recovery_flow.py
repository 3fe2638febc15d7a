"""RecoveryFlow on SQLite and PostgreSQL: real accounts, tickets, outbox, audit log and limits.

The flow is wired as the container wires it, on the `database` fixture and
`redis_client` (tickets, grants and windows). Faults are injected with a
trigger that refuses new rows of one table (`tests.contract.faults`), so the
code under test runs unchanged.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.contract.accounts.conftest import (
    ID_NUMBER,
    NAME,
    ORGANIZATION,
    OTHER_ID_NUMBER,
    OTHER_PHONE,
    PHONE,
    USCC,
    AccountsEnv,
    build_env,
    legal_command,
    natural_command,
)
from tests.contract.faults import INJECTED, failing_writes, row_counts
from xiaohe.identity.server.accounts.models import SubjectType
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.digests import CodeDigests
from xiaohe.identity.server.codes.models import Channel, Purpose
from xiaohe.identity.server.codes.store import ticket_key
from xiaohe.identity.server.codes.tickets import TicketService
from xiaohe.identity.server.credentials.hasher import PasswordHasher
from xiaohe.identity.server.credentials.passwords import PasswordPolicy
from xiaohe.identity.server.crypto.audit_keys import AuditKeys
from xiaohe.identity.server.errors import TicketInvalid
from xiaohe.identity.server.flows.recovery import RecoverCommand, Recovered, RecoveryFlow
from xiaohe.identity.server.ratelimit.callers import CallerLimits
from xiaohe.identity.server.ratelimit.limiter import SlidingWindowLimiter
from xiaohe.identity.server.shared.identifiers import IdType
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms
from xiaohe.identity.server.storage.database import Database

REPRESENTATIVE = "王芳"


class RecoveryEnv:
    """A RecoveryFlow on the account env's stores, with a real audit log."""

    def __init__(self, accounts: AccountsEnv, redis: aioredis.Redis) -> None:
        self.accounts = accounts
        self.redis = redis
        self.audit = AuditLog(accounts.database, accounts.clock, AuditKeys(bytes(range(32))))
        self.tickets: TicketService = accounts.service_kwargs["tickets"]
        key = accounts.keyring.code_hmac_key
        self.digests = CodeDigests(key)
        limiter = SlidingWindowLimiter(redis)
        self.flow = RecoveryFlow(
            uow=accounts.database,
            accounts=accounts.service,
            tickets=self.tickets,
            notices=accounts.service_kwargs["notices"],
            audit=self.audit,
            clock=accounts.clock,
            caller_limits=CallerLimits(limiter, Pseudonyms(key).ip),
            phone_limiter=limiter,
            pseudonym_key=key,
        )

    async def command(self, **changes: Any) -> RecoverCommand:
        """A natural person's recovery with a fresh RECOVER_ACCOUNT ticket for PHONE."""
        phone = changes.get("phone", PHONE)
        base = RecoverCommand(
            subject_type=SubjectType.NATURAL_PERSON,
            phone=phone,
            phone_ticket=await self.accounts.ticket(phone, Purpose.RECOVER_ACCOUNT),
            manual_review=False,
            name=NAME,
            id_type=IdType.RESIDENT_ID_CARD,
            id_number=ID_NUMBER,
            client_id="bff-web",
            ip="203.0.113.7",
        )
        return replace(base, **changes)

    async def grants_stored(self, account_id: str) -> int:
        """How many live grants (tickets of channel ACCOUNT) name the account in Redis."""
        tag = self.digests.destination_tag(Channel.ACCOUNT, account_id)
        return len([k async for k in self.redis.scan_iter(match=ticket_key(tag, "*"))])

    async def outcomes(self) -> list[str]:
        """The outcomes of `account.recover` audit records, oldest first."""
        return [r.outcome for r in await self.audit.query(action="account.recover")]


@pytest.fixture
async def recovery(
    database: Database,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    tmp_path: Path,
    password_policy: PasswordPolicy,
    argon2: PasswordHasher,
) -> RecoveryEnv:
    """The recovery flow on `database` (SQLite, PostgreSQL) × `redis_client`."""
    env = await build_env(database, redis_client, clock, tmp_path, password_policy, argon2)
    return RecoveryEnv(env, redis_client)


async def _use_grant(recovery: RecoveryEnv, recovered: Recovered, account_id: str) -> str:
    claims = await recovery.tickets.consume(
        recovered.reset_grant,
        purpose=Purpose.RESET_PASSWORD,
        channel=Channel.ACCOUNT,
        destination=account_id,
    )
    return claims.destination


@pytest.mark.parametrize(
    ("failing", "error"),
    [("outbox", "the message could not be queued"), ("audit_log", INJECTED)],
)
async def test_a_recovery_is_all_or_nothing(
    recovery: RecoveryEnv, failing: str, error: str
) -> None:
    """F2, I7: a fault in the match's unit of work (the notice row, or the audit record after
    it) leaves no notice queued, no `matched` record and no grant in Redis; without the
    fault the same details recover, queue one notice and store one usable grant."""
    account_id = (await recovery.accounts.register(natural_command())).account_id
    before = await row_counts(recovery.accounts.database, "outbox")
    cmd = await recovery.command()
    async with failing_writes(recovery.accounts.database, failing):
        with pytest.raises(Exception, match=error):
            await recovery.flow.recover(cmd)
    assert await row_counts(recovery.accounts.database, "outbox") == before
    assert await recovery.grants_stored(account_id) == 0
    assert "matched" not in await recovery.outcomes()
    with pytest.raises(TicketInvalid):  # the ticket was spent before the unit of work
        await recovery.flow.recover(cmd)

    recovered = await recovery.flow.recover(await recovery.command())
    assert await row_counts(recovery.accounts.database, "outbox") == {
        "outbox": before["outbox"] + 1
    }
    assert await recovery.grants_stored(account_id) == 1
    assert await _use_grant(recovery, recovered, account_id) == account_id
    assert (await recovery.outcomes())[-1] == "matched"


async def test_a_legal_person_is_matched_through_its_encrypted_profile(
    recovery: RecoveryEnv,
) -> None:
    """C5: the representative fields sealed in the profile at registration are what recovery
    compares (the organisation code standing for the USCC), and the grant it hands out is
    bound to that account; one wrong field is a no-match that stores no grant."""
    account_id = (
        await recovery.accounts.register(
            legal_command(
                organization_type="ENTERPRISE",
                representative_type="LEGAL_REPRESENTATIVE",
                representative_name=REPRESENTATIVE,
                representative_id_type=IdType.RESIDENT_ID_CARD,
                representative_id_number=OTHER_ID_NUMBER,
            )
        )
    ).account_id
    legal: dict[str, Any] = {
        "subject_type": SubjectType.LEGAL_PERSON,
        "phone": OTHER_PHONE,
        "name": "",
        "id_type": IdType.UNSPECIFIED,
        "id_number": "",
        "organization_name": ORGANIZATION,
        "organization_type": "ENTERPRISE",
        "uscc": USCC[8:17],
        "representative_type": "LEGAL_REPRESENTATIVE",
        "representative_name": REPRESENTATIVE,
        "representative_id_type": IdType.RESIDENT_ID_CARD,
        "representative_id_number": OTHER_ID_NUMBER.lower(),
    }
    recovered = await recovery.flow.recover(await recovery.command(**legal))
    assert recovered.login_name_masked == "q******h"  # qinghai-tech
    assert await _use_grant(recovery, recovered, account_id) == account_id

    wrong = await recovery.flow.recover(
        await recovery.command(**{**legal, "representative_id_number": ID_NUMBER})
    )
    assert wrong.login_name_masked != ""
    assert await recovery.grants_stored(account_id) == 0
    assert await recovery.outcomes() == ["matched", "no_match"]
