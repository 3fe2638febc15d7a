"""Privacy policy versions and consent records (SECURITY.md I3).

Versions are numbered 1, 2, 3 ... and never change once published: the text a
user accepted must stay readable exactly as it was (its SHA-256 is stored with
it). Version 1 is the text packaged with the server
(`data/privacy-policy.v1.zh.md`), published by `ensure_seeded` when the table is
empty. Every worker process calls `ensure_seeded` at start-up, so several may race:
each inserts version 1 and a unique-key conflict (another process won) is
ignored, which leaves exactly one version 1 whatever the timing.

`current()` is read on every registration and (later) every login, while a new
version is published perhaps a few times a year, so each `PolicyStore` (one per
process) caches the current version for `cache_seconds` (5 s by default). A
publication is therefore visible to other processes within that time; the
publishing process sees it at once. Callers that must not act on a stale value
(registration refusing an "outdated" version the user just accepted) can ask for
`current(fresh=True)`.

Consents are kept apart, in `consents.ConsentLedger`.

A version is published as changing the purposes of processing (the default,
and every version before issue 14) or not (`publish(..., purposes_changed=False)`,
CLI `--notify-only`). `PolicyVersion.consent_floor` is the newest version that
changed purposes: an account that accepted an older one must accept again before
it can be used (login's CONSENT_REQUIRED); one that accepted at least the floor is
only told of newer versions (flows/consent.py `PolicyUpdateNotices`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from xiaohe.identity.server.storage.database import (
    Database,
    epoch,
    utc,
)
from xiaohe.identity.server.storage.schema import policy_versions

PACKAGED_POLICY_RESOURCE: Final[tuple[str, ...]] = ("data", "privacy-policy.v1.zh.md")
"""Path of the version 1 text inside this package."""

MAX_POLICY_CHARS: Final = 1_000_000
"""Longest policy text accepted by `publish` (the packaged one is about 8,000 characters)."""

DEFAULT_CACHE_SECONDS: Final = 5.0

_PUBLISH_ATTEMPTS: Final = 5


@dataclass(frozen=True)
class PolicyVersion:
    """One published version: its number, full text, SHA-256 (hex) of the UTF-8 text and time."""

    version: int
    text: str = field(repr=False)
    sha256: str
    published_at: float
    # -- issue 14: notify-only versions --
    purposes_changed: bool = True
    latest_purpose_change: int = 0
    """The newest version up to this one that changed purposes (0: this one)."""

    @property
    def consent_floor(self) -> int:
        """The oldest accepted version that still lets an account be used without consenting."""
        return self.latest_purpose_change or self.version

    # -- end notify-only versions --


def packaged_policy_text() -> str:
    """The version 1 text bundled with the server."""
    resource = resources.files(__package__ or __name__).joinpath(*PACKAGED_POLICY_RESOURCE)
    return resource.read_text(encoding="utf-8")


def text_sha256(text: str) -> str:
    """The hex SHA-256 of a policy text's UTF-8 encoding."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _row_to_version(
    row: sa.Row[tuple[object, ...]], latest_purpose_change: int = 0
) -> PolicyVersion:
    m = row._mapping
    return PolicyVersion(
        version=int(m["version"]),
        text=str(m["text"]),
        sha256=str(m["sha256"]),
        published_at=epoch(m["published_at"]),
        purposes_changed=bool(m["purposes_changed"]),
        latest_purpose_change=latest_purpose_change,
    )


class PolicyStore:
    """Publishes, reads and caches privacy policy versions; records consents."""

    def __init__(
        self,
        database: Database,
        clock: Clock,
        *,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        seed_text: Callable[[], str] = packaged_policy_text,
    ) -> None:
        if cache_seconds < 0:
            raise ValueError("cache_seconds must not be negative")
        self._db = database
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._seed_text = seed_text
        self._cached: PolicyVersion | None = None
        self._cached_until = 0.0

    async def ensure_seeded(self) -> None:
        """Publish the packaged text as version 1 if no version exists (safe under races)."""
        if await self._latest() is not None:
            return
        text = self._seed_text()
        if not text.strip():
            raise ValueError("the packaged privacy policy is empty")
        try:
            async with self._db.begin() as conn:
                await conn.execute(
                    policy_versions.insert().values(
                        version=1,
                        text=text,
                        sha256=text_sha256(text),
                        published_at=utc(self._clock.now()),
                    )
                )
        except IntegrityError:
            # Another process published version 1 between our read and our insert.
            pass
        self._cached = None

    async def current(self, *, fresh: bool = False) -> PolicyVersion:
        """The newest version (cached for a few seconds unless `fresh`); seeds v1 if none exists."""
        now = self._clock.now()
        if not fresh and self._cached is not None and now < self._cached_until:
            return self._cached
        latest = await self._latest()
        if latest is None:
            await self.ensure_seeded()
            latest = await self._latest()
            if latest is None:  # pragma: no cover - the insert above committed or conflicted
                raise NotFound("no privacy policy has been published")
        self._remember(latest, now)
        return latest

    async def get(self, version: int) -> PolicyVersion:
        """One published version, or NotFound."""
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(policy_versions).where(policy_versions.c.version == version)
                )
            ).first()
        if row is None:
            raise NotFound(f"privacy policy version {version} does not exist")
        return _row_to_version(row)

    async def publish(self, text: str, *, purposes_changed: bool = True) -> PolicyVersion:
        """Publish `text` as the next version; refuse an empty text or one equal to the current.

        `purposes_changed=False` publishes a version that is only notified: accounts
        that accepted the current consent floor are not asked to accept it again.

        The version number is the current maximum plus one. Two publishers racing
        for the same number collide on the primary key; the loser reads the new
        maximum and tries again (and is refused if its text is now the current one).
        """
        if not text.strip():
            raise InvalidArgument(FieldViolation("text", "must not be empty"))
        if len(text) > MAX_POLICY_CHARS:
            raise InvalidArgument(
                FieldViolation("text", f"must be at most {MAX_POLICY_CHARS} characters")
            )
        digest = text_sha256(text)
        for _ in range(_PUBLISH_ATTEMPTS):
            latest = await self._latest()
            if latest is not None and latest.sha256 == digest and latest.text == text:
                raise FailedPrecondition(
                    f"the text is identical to the current version {latest.version}",
                    [FieldViolation("text", "is identical to the current version")],
                )
            version = 1 if latest is None else latest.version + 1
            published = PolicyVersion(
                version=version,
                text=text,
                sha256=digest,
                published_at=self._clock.now(),
                purposes_changed=purposes_changed or latest is None,
                latest_purpose_change=(
                    version if purposes_changed or latest is None else latest.consent_floor
                ),
            )
            try:
                async with self._db.begin() as conn:
                    await conn.execute(
                        policy_versions.insert().values(
                            version=published.version,
                            text=text,
                            sha256=digest,
                            published_at=utc(published.published_at),
                            purposes_changed=published.purposes_changed,
                        )
                    )
            except IntegrityError:
                continue
            self._remember(published, self._clock.now())
            return published
        raise FailedPrecondition("another version was published at the same time; retry")

    async def _latest(self) -> PolicyVersion | None:
        floor = (
            sa.select(sa.func.max(policy_versions.c.version))
            .where(policy_versions.c.purposes_changed.is_(True))
            .scalar_subquery()
        )
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(policy_versions, floor.label("floor"))
                    .order_by(policy_versions.c.version.desc())
                    .limit(1)
                )
            ).first()
        if row is None:
            return None
        return _row_to_version(row, int(row.floor or 0))

    def _remember(self, version: PolicyVersion, now: float) -> None:
        if self._cached is None or version.version >= self._cached.version:
            self._cached = version
            self._cached_until = now + self._cache_seconds


__all__ = [
    "MAX_POLICY_CHARS",
    "PolicyStore",
    "PolicyVersion",
    "packaged_policy_text",
    "text_sha256",
]
