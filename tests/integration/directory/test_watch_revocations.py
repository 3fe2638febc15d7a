"""DirectoryService.WatchRevocations over real gRPC (issue 13, section 2 acceptance).

Real SQLite and the embedded Redis. A business client holding `validate` watches the
feed while people log out; it reconnects with its cursor, and a cursor whose entries
were trimmed is told to resync.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.integration.conftest import Harness, HarnessFactory
from tests.integration.flows import LOGIN_NAME, PHONE, login, register, stubs
from tests.rpc_errors import details_of
from xiaohe.identity.server.sessions.feed import FLOOR_KEY
from xiaohe.identity.v1 import auth_pb2, directory_pb2, directory_pb2_grpc

Response = directory_pb2.WatchRevocationsResponse
SEEN_WITHIN = 1.0
"""The issue's bound: a watcher sees a logout within one second."""


class Watch:
    """One WatchRevocations call, read message by message."""

    def __init__(self, h: Harness, metadata: tuple[tuple[str, str], ...], cursor: str = "") -> None:
        stub: directory_pb2_grpc.DirectoryServiceAsyncStub = (
            directory_pb2_grpc.DirectoryServiceStub(h.channel)
        )  # type: ignore[assignment]
        self.call = stub.WatchRevocations(
            directory_pb2.WatchRevocationsRequest(since_cursor=cursor), metadata=metadata
        )

    async def next(self, within: float = 5.0) -> Response:
        async with asyncio.timeout(within):
            message = await self.call.read()
        assert isinstance(message, Response), "the stream ended"
        return message

    async def next_revocation(self, within: float = 5.0) -> Response:
        """The next revocation, skipping heartbeats."""
        async with asyncio.timeout(within):
            while True:
                message = await self.next()
                if message.WhichOneof("event") == "revocation":
                    return message

    def close(self) -> None:
        self.call.cancel()


@pytest.fixture
async def watcher(h: Harness) -> tuple[tuple[str, str], ...]:
    return await h.client_metadata("validate")


async def logout(h: Harness, session: auth_pb2.Session) -> None:
    await stubs(h).auth.Logout(
        auth_pb2.LogoutRequest(refresh_token=session.refresh_token), metadata=h.metadata
    )


async def signed_in(h: Harness, count: int = 1) -> tuple[str, list[auth_pb2.Session]]:
    account_id = await register(h, LOGIN_NAME, PHONE)
    return account_id, [await login(h, LOGIN_NAME) for _ in range(count)]


@pytest.fixture
async def opened() -> AsyncIterator[list[Watch]]:
    watches: list[Watch] = []
    yield watches
    for watch in watches:
        watch.close()


async def test_a_logout_reaches_a_watcher_within_a_second(
    h: Harness, watcher: tuple[tuple[str, str], ...], opened: list[Watch]
) -> None:
    account_id, (session,) = await signed_in(h)
    watch = Watch(h, watcher)
    opened.append(watch)
    first = await watch.next()
    assert first.WhichOneof("event") == "heartbeat"
    assert first.cursor

    await logout(h, session)
    seen = await watch.next_revocation(within=SEEN_WITHIN)
    assert seen.revocation.session_id == session.session_id
    assert seen.revocation.account_id == account_id
    assert seen.revocation.reason == "logout"
    assert seen.revocation.revoked_at.seconds == int(h.clock.now())
    assert seen.cursor != first.cursor


async def test_a_reconnect_with_the_cursor_receives_what_it_missed_once(
    harness_factory: HarnessFactory, opened: list[Watch]
) -> None:
    h = await harness_factory(revocation_feed_heartbeat_seconds=0.2)
    watcher = await h.client_metadata("validate")
    _account, sessions = await signed_in(h, 3)
    watch = Watch(h, watcher)
    await watch.next()  # watching from now
    await logout(h, sessions[0])
    cursor = (await watch.next_revocation()).cursor
    watch.close()  # the subscriber dies here

    await logout(h, sessions[1])
    await logout(h, sessions[2])
    again = Watch(h, watcher, cursor)
    opened.append(again)
    first = await again.next()
    assert (first.WhichOneof("event"), first.cursor) == ("heartbeat", cursor)
    missed = [await again.next_revocation(), await again.next_revocation()]
    assert [m.revocation.session_id for m in missed] == [
        sessions[1].session_id,
        sessions[2].session_id,
    ]
    # Nothing more than what was missed: the next message is a heartbeat, not a repeat.
    following = await again.next()
    assert following.WhichOneof("event") == "heartbeat"
    assert following.cursor == missed[-1].cursor


async def test_a_revocation_during_the_replay_is_neither_lost_nor_repeated(
    h: Harness, watcher: tuple[tuple[str, str], ...], opened: list[Watch]
) -> None:
    _account, sessions = await signed_in(h, 4)
    start = Watch(h, watcher)
    cursor = (await start.next()).cursor
    start.close()
    await logout(h, sessions[0])
    await logout(h, sessions[1])
    again = Watch(h, watcher, cursor)
    opened.append(again)
    # Two more while the reconnected watch replays and goes live.
    await asyncio.gather(logout(h, sessions[2]), logout(h, sessions[3]))
    seen = [(await again.next_revocation()).revocation.session_id for _ in range(4)]
    assert sorted(seen) == sorted(s.session_id for s in sessions)
    assert seen[:2] == [sessions[0].session_id, sessions[1].session_id]


async def test_a_cursor_whose_entries_were_trimmed_is_told_to_resync(
    harness_factory: HarnessFactory, opened: list[Watch]
) -> None:
    h = await harness_factory(revocation_feed_retention_seconds=1)
    watcher = await h.client_metadata("validate")
    _account, sessions = await signed_in(h, 2)
    start = Watch(h, watcher)
    cursor = (await start.next()).cursor
    start.close()

    await logout(h, sessions[0])
    await asyncio.sleep(1.1)  # Redis's own clock orders the stream: let it pass the window
    await logout(h, sessions[1])  # appending trims the first entry, older than one second
    assert await h.container.redis.get(FLOOR_KEY) is not None

    late = Watch(h, watcher, cursor)
    opened.append(late)
    told = await late.next()
    assert told.resync_required
    assert told.cursor == cursor
    assert await late.call.read() is grpc.aio.EOF
    assert await late.call.code() == grpc.StatusCode.OK

    # Watching again from now works, and sees the next revocation.
    fresh = Watch(h, watcher)
    opened.append(fresh)
    assert (await fresh.next()).WhichOneof("event") == "heartbeat"


async def test_a_cursor_from_a_lost_stream_is_told_to_resync(
    h: Harness, watcher: tuple[tuple[str, str], ...], opened: list[Watch]
) -> None:
    """A cursor beyond the stream's newest entry can only come from a stream Redis lost."""
    late = Watch(h, watcher, "99999999999999-0")
    opened.append(late)
    assert (await late.next()).resync_required


@pytest.mark.parametrize("cursor", ["yesterday", "1-", "-1", "1-2-3", "1" * 30 + "-0"])
async def test_a_malformed_cursor_is_invalid_argument(
    h: Harness, watcher: tuple[tuple[str, str], ...], cursor: str
) -> None:
    watch = Watch(h, watcher, cursor)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch.next()
    details = details_of(caught.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "since_cursor" in details.violations


async def test_watching_needs_the_validate_grant(h: Harness) -> None:
    directory_only = await h.client_metadata("directory")
    watch = Watch(h, directory_only)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch.next()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_watches_per_client_are_capped_and_freed_when_one_ends(
    harness_factory: HarnessFactory, opened: list[Watch]
) -> None:
    h = await harness_factory(revocation_watchers_per_client=1)
    watcher = await h.client_metadata("validate")
    first = Watch(h, watcher)
    opened.append(first)
    await first.next()
    second = Watch(h, watcher)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.next()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    first.close()
    async with asyncio.timeout(5):
        while True:  # the server frees the slot once it sees the cancellation
            third = Watch(h, watcher)
            try:
                first_message = await third.next()
            except grpc.aio.AioRpcError as err:
                refused = err.code()
            else:
                opened.append(third)
                break
            assert refused == grpc.StatusCode.RESOURCE_EXHAUSTED
            await asyncio.sleep(0.05)
    assert first_message.WhichOneof("event") == "heartbeat"


async def test_a_password_change_announces_every_session_with_its_reason(
    h: Harness, watcher: tuple[tuple[str, str], ...], opened: list[Watch]
) -> None:
    account_id, sessions = await signed_in(h, 2)
    watch = Watch(h, watcher)
    opened.append(watch)
    await watch.next()
    await h.container.sessions.revoke_all(account_id, "password_change")
    seen = [await watch.next_revocation() for _ in sessions]
    assert sorted(m.revocation.session_id for m in seen) == sorted(s.session_id for s in sessions)
    assert {(m.revocation.account_id, m.revocation.reason) for m in seen} == {
        (account_id, "password_change")
    }


async def test_a_stopping_server_ends_its_watches_as_unavailable(
    harness_factory: HarnessFactory,
) -> None:
    h = await harness_factory()
    watcher = await h.client_metadata("validate")
    watch = Watch(h, watcher)
    await watch.next()
    await h.container.close()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch.next_revocation()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
