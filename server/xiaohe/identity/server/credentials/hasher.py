"""Argon2id password hashing on a bounded thread pool (SECURITY.md P4, B3)."""

from __future__ import annotations

import asyncio
import secrets
import threading
import unicodedata
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

from argon2 import Parameters, Type, extract_parameters, low_level
from argon2.exceptions import InvalidHashError, VerificationError

from xiaohe.identity.server.errors import Overloaded

_T = TypeVar("_T")

SaltSource = Callable[[int], bytes]
"""Returns that many random bytes; `secrets.token_bytes` in production."""

_DUMMY_PASSWORD_BYTES: Final = 24


@dataclass(frozen=True)
class Argon2Parameters:
    """Argon2id cost parameters; the defaults are OWASP's minimum (m=19 MiB, t=2, p=1).

    `memory_cost` is in KiB. Changing any field makes `needs_rehash` true for hashes
    made before, so stored hashes migrate at their owners' next login.
    """

    memory_cost: int = 19456
    time_cost: int = 2
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16

    def __post_init__(self) -> None:
        if self.parallelism < 1 or self.time_cost < 1:
            raise ValueError("time_cost and parallelism must be at least 1")
        if self.memory_cost < 8 * self.parallelism:
            raise ValueError("memory_cost must be at least 8 KiB per lane")
        if self.hash_len < 16 or self.salt_len < 16:
            raise ValueError("hash_len and salt_len must be at least 16 bytes")

    @classmethod
    def cheap(cls) -> Argon2Parameters:
        """Return the smallest costs Argon2 allows; for tests only, never for stored hashes."""
        return cls(memory_cost=8, time_cost=1, parallelism=1)

    def as_argon2(self) -> Parameters:
        """Return these costs as the argon2id `Parameters` that `extract_parameters` reports."""
        return Parameters(
            type=Type.ID,
            version=low_level.ARGON2_VERSION,
            salt_len=self.salt_len,
            hash_len=self.hash_len,
            time_cost=self.time_cost,
            memory_cost=self.memory_cost,
            parallelism=self.parallelism,
        )


def _secret(password: str) -> bytes:
    """Return the bytes that are hashed: UTF-8 of the NFKC form.

    Normalising here as well as in the policy means a login matches the stored hash
    whatever Unicode form the client sends. `surrogatepass` keeps a malformed string
    from raising in `verify`; the policy refuses such passwords when they are set.
    """
    return unicodedata.normalize("NFKC", password).encode("utf-8", "surrogatepass")


class PasswordHasher:
    """Hashes and verifies passwords with Argon2id on a bounded pool of threads.

    Why a pool: one Argon2id hash at the default costs takes tens of milliseconds of
    CPU and 19 MiB of memory. Run on the event loop it would stall every other RPC,
    so hashing and verification run in a `ThreadPoolExecutor`; argon2-cffi releases
    the GIL while it hashes, so the workers use other cores while the loop stays free.

    Why a bound: the executor's own queue is unbounded, and a burst of logins (or an
    attacker guessing passwords) would pile up work that finishes long after clients
    gave up, with memory growing meanwhile. A counter of jobs running or waiting is
    kept; once it reaches `max_queue`, new work is refused at once with
    `Overloaded(retry_after)`, which the transport maps to RESOURCE_EXHAUSTED. A job
    leaves the count only when its thread is done with it, so cancelling the waiting
    coroutine does not free a slot while the thread is still hashing.

    Why a dummy verify (SECURITY.md B3): a login for an unknown identifier must take
    as long as one with a wrong password, or response times reveal which identifiers
    exist. `dummy_verify` verifies against a hash of a random password made at
    construction with the same parameters, through the same pool and bound, so it
    costs what a real verify costs. (A stored hash made with older parameters, not
    yet rehashed, can take a different time; rehash-on-login removes those.)
    """

    def __init__(
        self,
        parameters: Argon2Parameters | None = None,
        *,
        max_workers: int = 2,
        max_queue: int = 64,
        overload_retry_after: float = 1.0,
        salt_source: SaltSource = secrets.token_bytes,
    ) -> None:
        if max_workers < 1 or max_queue < 1:
            raise ValueError("max_workers and max_queue must be at least 1")
        self._parameters = parameters if parameters is not None else Argon2Parameters()
        self._expected = self._parameters.as_argon2()
        self._max_queue = max_queue
        self._retry_after = overload_retry_after
        self._salt_source = salt_source
        self._lock = threading.Lock()
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="argon2")
        self._dummy_hash = self.hash_sync(salt_source(_DUMMY_PASSWORD_BYTES).hex())

    @property
    def parameters(self) -> Argon2Parameters:
        """The parameters new hashes are made with."""
        return self._parameters

    @property
    def pending(self) -> int:
        """Jobs running or waiting in the pool (for metrics)."""
        with self._lock:
            return self._pending

    async def hash(self, password: str) -> str:
        """Return the encoded Argon2id hash (`$argon2id$...`) of `password` with a new salt."""
        return await self._submit(lambda: self.hash_sync(password))

    async def verify(self, hash: str, password: str) -> bool:
        """Tell whether `password` matches `hash`; False for a mismatch or a malformed hash."""
        return await self._submit(lambda: self.verify_sync(hash, password))

    async def dummy_verify(self, password: str) -> None:
        """Spend the time of one verify and discard the result (unknown user, B3)."""
        await self._submit(lambda: self.verify_sync(self._dummy_hash, password))

    def needs_rehash(self, hash: str) -> bool:
        """Tell whether `hash` was made with other parameters (or is unreadable)."""
        try:
            return extract_parameters(hash) != self._expected
        except InvalidHashError:
            return True

    def hash_sync(self, password: str) -> str:
        """Hash on the calling thread; for benchmarks and construction, not the event loop."""
        p = self._parameters
        salt = self._salt_source(p.salt_len)
        if len(salt) != p.salt_len:
            raise ValueError("salt source returned the wrong number of bytes")
        encoded = low_level.hash_secret(
            _secret(password),
            salt,
            time_cost=p.time_cost,
            memory_cost=p.memory_cost,
            parallelism=p.parallelism,
            hash_len=p.hash_len,
            type=Type.ID,
            version=low_level.ARGON2_VERSION,
        )
        return encoded.decode("ascii")

    def verify_sync(self, hash: str, password: str) -> bool:
        """Verify on the calling thread; for benchmarks, not the event loop.

        The Argon2 variant is taken from the hash, so legacy argon2i/argon2d hashes
        still verify (and `needs_rehash` reports them).
        """
        try:
            variant = extract_parameters(hash).type
            return low_level.verify_secret(hash.encode("ascii"), _secret(password), variant)
        except (VerificationError, InvalidHashError, UnicodeEncodeError):
            return False

    def close(self) -> None:
        """Stop the workers: queued jobs are cancelled, running ones are waited for."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def _submit(self, job: Callable[[], _T]) -> _T:
        """Run `job` in the pool, or raise Overloaded when `max_queue` jobs are pending."""
        with self._lock:
            if self._pending >= self._max_queue:
                raise Overloaded(retry_after=self._retry_after)
            self._pending += 1
        try:
            future = self._executor.submit(job)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._on_done)
        return await asyncio.wrap_future(future)

    def _on_done(self, _future: Future[_T]) -> None:
        """Free the slot of a job that finished or was cancelled before it started."""
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
