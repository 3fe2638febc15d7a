"""Redis unreachable: issue, verify and ticket use fail closed, and recover by themselves (F1)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tests.contract.codes.conftest import HMAC_KEY, PHONE, ListQueue, compose
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.codes.models import (
    Channel,
    IssueCodeCommand,
    Purpose,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.codes.tickets import TicketService, new_ticket
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis

FAST_FAIL = {"retry": Retry(NoBackoff(), 1), "socket_connect_timeout": 2, "socket_timeout": 2}


def closed_port() -> int:
    """A local TCP port that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def services(
    client: aioredis.Redis, clock: FakeClock
) -> tuple[CodeService, TicketService, ListQueue]:
    """The code and ticket services on `client`."""
    queue = ListQueue()
    codes = CodeService(redis=client, hmac_key=HMAC_KEY, clock=clock, queue=queue, compose=compose)
    return codes, TicketService(redis=client, hmac_key=HMAC_KEY, clock=clock), queue


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which the test may stop and start."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_closed_port_fails_closed(clock: FakeClock) -> None:
    """F1: with no Redis at all, issue / verify / consume are Unavailable and nothing is sent."""
    client = aioredis.Redis(host="127.0.0.1", port=closed_port(), **FAST_FAIL)  # type: ignore[arg-type]
    codes, tickets, queue = services(client, clock)
    try:
        for ip in (None, "192.0.2.1"):
            with pytest.raises(Unavailable):
                await codes.issue(
                    IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN),
                    client_id="bff",
                    end_user_ip=ip,
                )
        with pytest.raises(Unavailable):
            await codes.verify(VerifyCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN, "123456"))
        with pytest.raises(Unavailable):
            await tickets.consume(new_ticket("0" * 32), purpose=Purpose.LOGIN)
        assert queue.messages == []
    finally:
        await client.aclose()


async def test_outage_fails_closed_and_recovers_without_a_new_client(
    private_redis: EmbeddedRedis, clock: FakeClock
) -> None:
    """F1: Redis stopped → Unavailable; started again → the same services work (NOSCRIPT too)."""
    client = aioredis.Redis.from_url(private_redis.url, **FAST_FAIL)  # type: ignore[arg-type]
    codes, tickets, queue = services(client, clock)
    try:
        await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN))
        code = queue.last_code()
        private_redis.stop()
        clock.advance(61)
        with pytest.raises(Unavailable):
            await codes.issue(IssueCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN))
        with pytest.raises(Unavailable):
            await codes.verify(VerifyCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN, code))
        with pytest.raises(Unavailable):
            await tickets.consume(new_ticket("0" * 32), purpose=Purpose.LOGIN)
        assert len(queue.messages) == 1
        # Back again (AOF kept the code; the script cache is empty, so EVALSHA says NOSCRIPT).
        private_redis.start()
        verified = await codes.verify(VerifyCodeCommand(Channel.SMS, PHONE, Purpose.LOGIN, code))
        claims = await tickets.consume(verified.ticket, purpose=Purpose.LOGIN)
        assert claims.destination == PHONE
    finally:
        await client.aclose()
