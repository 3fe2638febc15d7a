"""Fixtures for the code contract suites: real Redis, with fakes for the queue and observers.

The queue is not a store, so a list-backed fake is enough; everything that
counts, compares or expires runs in the real Redis scripts (embedded and
system Redis, through `redis_client`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from tests.conftest import WITH_CLUSTER, backend_url
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    Purpose,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.service import CodeService, ComposeMessage, RecipientFilter
from xiaohe.identity.server.codes.tickets import TicketService
from xiaohe.identity.server.errors import Unavailable

HMAC_KEY = bytes(range(32))
PHONE = "+8613812345678"
OTHER_PHONE = "+8613987654321"
EMAIL = "zhangsan@example.cn"


@pytest.fixture(params=WITH_CLUSTER)
def redis_url(request: pytest.FixtureRequest) -> str:
    """These stores must hold on a Redis Cluster too: embedded, system and cluster."""
    return backend_url(request, request.param)


@dataclass(frozen=True)
class QueuedMessage:
    """One message handed to the fake queue."""

    channel: str
    destination: str
    purpose: str
    text: str
    subject: str = ""
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ListQueue:
    """A MessageQueue that appends to lists, or fails like an unreachable outbox."""

    messages: list[QueuedMessage] = field(default_factory=list)
    withheld: list[tuple[str, str]] = field(default_factory=list)
    unavailable: bool = False

    async def enqueue(
        self,
        channel: str,
        destination: str,
        purpose: str,
        text: str,
        subject: str = "",
        *,
        params: Mapping[str, str] | None = None,
    ) -> str:
        """Queue (append) one message."""
        if self.unavailable:
            raise Unavailable()
        self.messages.append(
            QueuedMessage(channel, destination, purpose, text, subject, dict(params or {}))
        )
        return f"msg-{len(self.messages)}"

    async def withhold(self, channel: str, purpose: str) -> str:
        """Remember a message that was not sent."""
        if self.unavailable:
            raise Unavailable()
        self.withheld.append((channel, purpose))
        return f"withheld-{len(self.withheld)}"

    def last_code(self) -> str:
        """The code in the most recent message (its text and its template variable agree)."""
        match = re.search(r"\b(\d{6})\b", self.messages[-1].text)
        assert match is not None
        assert self.messages[-1].params == {"code": match.group(1)}
        return match.group(1)


@dataclass
class RecordingMetrics:
    """A CodeMetrics that remembers every call."""

    issued: list[tuple[str, str]] = field(default_factory=list)
    verified: list[tuple[str, str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    def code_issued(self, channel: str, purpose: str) -> None:
        """Remember an issue."""
        self.issued.append((channel, purpose))

    def code_verified(self, channel: str, purpose: str, outcome: str) -> None:
        """Remember a verification."""
        self.verified.append((channel, purpose, outcome))

    def limit_rejected(self, policy: str) -> None:
        """Remember a rejection."""
        self.rejected.append(policy)

    def outcomes(self) -> list[str]:
        """Verification outcomes in order."""
        return [outcome for _, _, outcome in self.verified]


@dataclass
class RecordingAudit:
    """An AuditSink that remembers every record."""

    records: list[tuple[str, str, str]] = field(default_factory=list)

    async def record(self, action: str, target: str, outcome: str) -> None:
        """Remember one record."""
        self.records.append((action, target, outcome))


def compose(channel: str, purpose: str, code: str, ttl_seconds: int) -> tuple[str, str]:
    """A stand-in for the real templates: the text, and a subject for emails."""
    subject = f"[{purpose}] code" if channel == "EMAIL" else ""
    return f"[{channel}/{purpose}] code {code}, valid {ttl_seconds // 60} min", subject


@dataclass
class CodeHarness:
    """A CodeService and TicketService on the test Redis, with their fakes."""

    codes: CodeService
    tickets: TicketService
    queue: ListQueue
    metrics: RecordingMetrics
    audit: RecordingAudit
    clock: FakeClock
    redis: aioredis.Redis

    async def issue(
        self,
        destination: str = PHONE,
        purpose: Purpose = Purpose.REGISTER,
        channel: Channel = Channel.SMS,
        *,
        client_id: str = "bff",
        ip: str | None = "203.0.113.7",
    ) -> str:
        """Issue a code and return it as the user would read it."""
        await self.codes.issue(
            IssueCodeCommand(channel, destination, purpose), client_id=client_id, end_user_ip=ip
        )
        return self.queue.last_code()

    async def verify(
        self,
        code: str,
        destination: str = PHONE,
        purpose: Purpose = Purpose.REGISTER,
        channel: Channel = Channel.SMS,
    ) -> str:
        """Verify a code and return the ticket."""
        verified = await self.codes.verify(
            VerifyCodeCommand(channel, destination, purpose, code), client_id="bff"
        )
        return verified.ticket

    async def dump(self) -> list[bytes]:
        """Every key, field, member and value currently in Redis (the client returns bytes)."""
        found: list[object] = []
        async for key in self.redis.scan_iter(count=1000):
            found.append(key)
            kind = await self.redis.type(key)
            if kind == b"hash":
                for k, v in (await self.redis.hgetall(key)).items():
                    found += [k, v]
            elif kind == b"zset":
                found += list(await self.redis.zrange(key, 0, -1))
            elif kind == b"string":
                found.append(await self.redis.get(key) or b"")
        return [x if isinstance(x, bytes) else str(x).encode() for x in found]


MakeHarness = Callable[..., CodeHarness]


def digits_from(*codes: str) -> Callable[[], str]:
    """A code generator that returns the given codes in order (for deterministic tests)."""
    pending = list(codes)
    return lambda: pending.pop(0)


@pytest.fixture
def make_codes(redis_client: aioredis.Redis, clock: FakeClock) -> MakeHarness:
    """Build a harness; keyword arguments go to CodeService (e.g. policy, recipient_filter)."""

    def make(
        policy: CodePolicy | None = None,
        recipient_filter: RecipientFilter | None = None,
        composer: ComposeMessage = compose,
        **kwargs: object,
    ) -> CodeHarness:
        queue, metrics, audit = ListQueue(), RecordingMetrics(), RecordingAudit()
        codes = CodeService(
            redis=redis_client,
            hmac_key=HMAC_KEY,
            clock=clock,
            queue=queue,
            compose=composer,
            policy=policy,
            recipient_filter=recipient_filter,
            metrics=metrics,
            audit=audit,
            **kwargs,  # type: ignore[arg-type]
        )
        tickets = TicketService(
            redis=redis_client, hmac_key=HMAC_KEY, clock=clock, policy=policy, audit=audit
        )
        return CodeHarness(codes, tickets, queue, metrics, audit, clock, redis_client)

    return make


@pytest.fixture
def h(make_codes: MakeHarness) -> CodeHarness:
    """A harness with the default policy."""
    return make_codes()
