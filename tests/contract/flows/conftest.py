"""Fixtures and steps shared by the flow contract suites: the password policy, Argon2 at its
cheapest costs, and a SessionService on an `AccountsEnv`'s stores and keys.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from tests.contract.accounts.conftest import AccountsEnv
from xiaohe.identity.server.audit.sink import AuditSink
from xiaohe.identity.server.credentials.hasher import Argon2Parameters, PasswordHasher
from xiaohe.identity.server.credentials.passwords import CommonPasswords, PasswordPolicy
from xiaohe.identity.server.flows.login import ActiveSubjects
from xiaohe.identity.server.sessions.models import SessionLifetimes
from xiaohe.identity.server.sessions.repository import SqlSessionRepository
from xiaohe.identity.server.sessions.revocations import RevocationList
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.sessions.tokens import AccessTokenIssuer, AccessTokenValidator

ISSUER = "https://id.xiaohe.test"
AUDIENCE = "xiaohe-platform"


@pytest.fixture(scope="module")
def password_policy() -> PasswordPolicy:
    """The real password policy (registration checks it)."""
    return PasswordPolicy(CommonPasswords.load())


@pytest.fixture(scope="module")
def argon2() -> Iterator[PasswordHasher]:
    """Argon2id at the cheapest costs."""
    hasher = PasswordHasher(Argon2Parameters.cheap())
    yield hasher
    hasher.close()


def session_service(
    accounts: AccountsEnv, redis: aioredis.Redis, *, audit: AuditSink | None = None
) -> tuple[SessionService, RevocationList]:
    """The real SessionService on the env's database and signing keys (issuer `ISSUER`,
    default audience `AUDIENCE`), and its revocation list on `redis`."""
    ring = accounts.keyring
    clock = accounts.clock

    def signing_key() -> tuple[str, bytes]:
        key = ring.active_signing_key
        return key.kid, key.seed

    lifetimes = SessionLifetimes()
    revocations = RevocationList(redis, clock, lifetimes.access_ttl)
    sessions = SessionService(
        accounts.database,
        SqlSessionRepository(accounts.database),
        ActiveSubjects(accounts.service, accounts.policies),
        AccessTokenIssuer(signing_key, ISSUER, clock, lifetimes.access_ttl),
        AccessTokenValidator(ring.public_keys, ISSUER, clock),
        revocations,
        clock,
        lifetimes,
        AUDIENCE,
        audit=audit,
    )
    return sessions, revocations
