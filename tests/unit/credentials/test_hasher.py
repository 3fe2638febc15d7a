"""Argon2id hasher: SECURITY.md P4 (format, salts, rehash), the pool bound and B3 dummy verify."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from argon2 import Type, extract_parameters, low_level

from xiaohe.identity.server.credentials.hasher import Argon2Parameters, PasswordHasher
from xiaohe.identity.server.errors import Overloaded

CHEAP = Argon2Parameters.cheap()


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    h = PasswordHasher(CHEAP, max_workers=2, max_queue=8)
    yield h
    h.close()


def salt_of(encoded: str) -> str:
    return encoded.split("$")[4]


async def test_hash_is_argon2id_with_the_given_parameters(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("kq7#vz2m")
    assert encoded.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    params = extract_parameters(encoded)
    assert params.type is Type.ID
    assert (params.salt_len, params.hash_len) == (16, 32)


async def test_verify_accepts_the_password_and_rejects_others(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("kq7#vz2m")
    assert await hasher.verify(encoded, "kq7#vz2m") is True
    assert await hasher.verify(encoded, "kq7#vz2M") is False
    assert await hasher.verify(encoded, "") is False


@pytest.mark.parametrize(
    "bad_hash",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=8,t=1,p=1$!!!!$!!!!",
        "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHRzYWx0c2FsdA",
        "$argon2id$v=19$m=8,t=1,p=1$é$é",
        "$bcrypt$2b$12$abcdefghijklmnopqrstuv",
    ],
)
async def test_malformed_hash_verifies_false(hasher: PasswordHasher, bad_hash: str) -> None:
    assert await hasher.verify(bad_hash, "kq7#vz2m") is False
    assert hasher.needs_rehash(bad_hash) is True


async def test_truncated_hash_verifies_false(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("kq7#vz2m")
    assert await hasher.verify(encoded[:-4], "kq7#vz2m") is False


async def test_salts_differ_per_hash(hasher: PasswordHasher) -> None:
    first = await hasher.hash("kq7#vz2m")
    second = await hasher.hash("kq7#vz2m")
    assert first != second
    assert salt_of(first) != salt_of(second)
    assert await hasher.verify(first, "kq7#vz2m")
    assert await hasher.verify(second, "kq7#vz2m")


def test_salt_comes_from_the_injected_source() -> None:
    calls: list[int] = []

    def fixed(n: int) -> bytes:
        calls.append(n)
        return b"\x01" * n

    h = PasswordHasher(CHEAP, salt_source=fixed)
    try:
        assert h.hash_sync("kq7#vz2m") == h.hash_sync("kq7#vz2m")
        assert 16 in calls
    finally:
        h.close()


def test_salt_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="salt"):
        PasswordHasher(CHEAP, salt_source=lambda n: b"\x01" * (n - 1))


async def test_password_is_hashed_in_nfkc_form(hasher: PasswordHasher) -> None:
    encoded = await hasher.hash("ｋｑ７＃ｖｚ２ｍ")
    assert await hasher.verify(encoded, "kq7#vz2m")
    composed = await hasher.hash("caf\u00e9-kq7#")
    assert await hasher.verify(composed, "cafe\u0301-kq7#")


def test_needs_rehash_only_when_parameters_differ(hasher: PasswordHasher) -> None:
    encoded = hasher.hash_sync("kq7#vz2m")
    assert hasher.needs_rehash(encoded) is False
    for changed in (
        replace(CHEAP, time_cost=2),
        replace(CHEAP, memory_cost=16),
        replace(CHEAP, hash_len=64),
        replace(CHEAP, salt_len=32),
    ):
        other = PasswordHasher(changed)
        try:
            assert other.needs_rehash(encoded) is True
            assert other.needs_rehash(other.hash_sync("kq7#vz2m")) is False
        finally:
            other.close()


def test_legacy_argon2i_hash_verifies_and_needs_rehash(hasher: PasswordHasher) -> None:
    legacy = low_level.hash_secret(
        b"kq7#vz2m", b"s" * 16, time_cost=1, memory_cost=8, parallelism=1, hash_len=32, type=Type.I
    ).decode()
    assert hasher.verify_sync(legacy, "kq7#vz2m") is True
    assert hasher.verify_sync(legacy, "wrong-one") is False
    assert hasher.needs_rehash(legacy) is True


async def test_verify_then_rehash_flow() -> None:
    old = PasswordHasher(CHEAP)
    new = PasswordHasher(replace(CHEAP, time_cost=2, memory_cost=16))
    try:
        stored = await old.hash("kq7#vz2m")
        # At login: verify with the stored hash's own parameters, then upgrade it.
        assert await new.verify(stored, "kq7#vz2m")
        assert new.needs_rehash(stored)
        upgraded = await new.hash("kq7#vz2m")
        assert upgraded.startswith("$argon2id$v=19$m=16,t=2,p=1$")
        assert not new.needs_rehash(upgraded)
        assert await new.verify(upgraded, "kq7#vz2m")
        assert not await new.verify(upgraded, "kq7#vz2x")
    finally:
        old.close()
        new.close()


def test_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="memory_cost"):
        Argon2Parameters(memory_cost=15, parallelism=2)
    with pytest.raises(ValueError, match="time_cost"):
        Argon2Parameters(time_cost=0)
    with pytest.raises(ValueError, match="salt_len"):
        Argon2Parameters(salt_len=8)
    with pytest.raises(ValueError, match="max_queue"):
        PasswordHasher(CHEAP, max_queue=0)


def test_defaults_are_owasp() -> None:
    assert Argon2Parameters() == Argon2Parameters(
        memory_cost=19456, time_cost=2, parallelism=1, hash_len=32, salt_len=16
    )
    assert CHEAP.memory_cost == 8
    assert CHEAP.time_cost == 1


@pytest.mark.argon2_real
async def test_default_hasher_uses_owasp_parameters() -> None:
    h = PasswordHasher()
    try:
        assert h.parameters == Argon2Parameters()
        encoded = await h.hash("kq7#vz2m")
        assert encoded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        params = extract_parameters(encoded)
        assert (params.salt_len, params.hash_len) == (16, 32)
        assert not h.needs_rehash(encoded)
    finally:
        h.close()


# The bounded pool.


class Gate:
    """Makes `low_level.hash_secret` block until opened, to hold pool workers busy."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)
        real = low_level.hash_secret

        def blocking(*args: object, **kwargs: object) -> bytes:
            self.entered.release()
            if not self.opened.wait(timeout=5):
                raise TimeoutError("gate never opened")
            return real(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(low_level, "hash_secret", blocking)

    async def wait_entered(self) -> None:
        acquired = await asyncio.to_thread(self.entered.acquire, True, 5)
        assert acquired, "no job reached the pool"


async def test_overloaded_when_running_plus_queued_reach_max_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = PasswordHasher(CHEAP, max_workers=1, max_queue=2, overload_retry_after=3.0)
    gate = Gate(monkeypatch)
    try:
        running = asyncio.create_task(h.hash("first-one"))
        await gate.wait_entered()
        queued = asyncio.create_task(h.hash("second-one"))
        await asyncio.sleep(0)
        assert h.pending == 2

        with pytest.raises(Overloaded) as caught:
            await h.hash("third-one")
        assert caught.value.retry_after == 3.0
        with pytest.raises(Overloaded):
            await h.verify("$argon2id$x", "third-one")
        with pytest.raises(Overloaded):
            await h.dummy_verify("third-one")
        assert h.pending == 2

        gate.opened.set()
        first, second = await asyncio.gather(running, queued)
        assert h.verify_sync(first, "first-one")
        assert h.verify_sync(second, "second-one")
        assert h.pending == 0
        assert await h.verify(await h.hash("fourth-one"), "fourth-one")
    finally:
        gate.opened.set()
        h.close()


async def test_cancelled_caller_keeps_its_slot_until_the_thread_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = PasswordHasher(CHEAP, max_workers=1, max_queue=1)
    gate = Gate(monkeypatch)
    try:
        task = asyncio.create_task(h.hash("first-one"))
        await gate.wait_entered()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The thread is still hashing, so the slot is still taken.
        assert h.pending == 1
        with pytest.raises(Overloaded):
            await h.hash("second-one")
        gate.opened.set()
        for _ in range(500):
            if h.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert h.pending == 0
        assert h.verify_sync(await h.hash("third-one"), "third-one")
    finally:
        gate.opened.set()
        h.close()


async def test_queued_job_cancelled_before_start_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = PasswordHasher(CHEAP, max_workers=1, max_queue=2)
    gate = Gate(monkeypatch)
    try:
        running = asyncio.create_task(h.hash("first-one"))
        await gate.wait_entered()
        queued = asyncio.create_task(h.hash("second-one"))
        await asyncio.sleep(0)
        assert h.pending == 2
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert h.pending == 1
        gate.opened.set()
        await running
        assert h.pending == 0
    finally:
        gate.opened.set()
        h.close()


# B3: the dummy verify.


async def test_dummy_verify_verifies_against_a_hash_with_the_same_parameters(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bytes] = []
    real = low_level.verify_secret

    def recording(hash: bytes, secret: bytes, type: Type) -> bool:
        seen.append(hash)
        return real(hash, secret, type)

    monkeypatch.setattr(low_level, "verify_secret", recording)
    await hasher.dummy_verify("kq7#vz2m")
    assert len(seen) == 1
    dummy = seen[0].decode()
    assert not hasher.needs_rehash(dummy)
    assert extract_parameters(dummy) == hasher.parameters.as_argon2()
    assert hasher.pending == 0


async def test_dummy_hash_differs_between_hashers(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytes] = []
    real = low_level.verify_secret

    def recording(hash: bytes, secret: bytes, type: Type) -> bool:
        seen.append(hash)
        return real(hash, secret, type)

    monkeypatch.setattr(low_level, "verify_secret", recording)
    first, second = PasswordHasher(CHEAP), PasswordHasher(CHEAP)
    try:
        await first.dummy_verify("kq7#vz2m")
        await second.dummy_verify("kq7#vz2m")
    finally:
        first.close()
        second.close()
    assert seen[0] != seen[1]
