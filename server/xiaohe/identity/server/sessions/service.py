"""Sessions: created at login, refreshed by rotation, revoked, listed; access tokens validated.

A session is a row in `sessions` plus a chain of refresh tokens. A refresh token
is `xhr_` + 32 random bytes (256 bits, base64url), stored only as its SHA-256
(SECURITY T4): with that much entropy a slow hash adds nothing. Every refresh
consumes the presented token and returns a new one; presenting a used token again
revokes the whole session (T2, see `repository`).

Revocation has two halves, in this order: first SQL (`sessions.revoked_at`),
which refresh and ListSessions consult and which never forgets; then the
`RevocationList` (Redis + the in-memory map of every worker), which is what
`validate` consults so that ValidateToken costs one signature check and one dict
lookup (T3). If Redis fails after SQL has committed, the caller gets
`Unavailable` although the session is already dead for refresh; the revocation
list keeps the ids pending and publishes them when Redis is back. Revoking or
logging out again is always allowed (idempotent) and publishes again.

Errors never say why a token was refused: an unknown, malformed, used, revoked or
expired token, a session past its idle or absolute lifetime and an inactive
account all raise the same `TokenInvalid`; the reason goes to the log as a short
code.

Every revocation is audited (SECURITY I7), with pseudonymous targets only:
`session.logout` (session id, `ok`), `session.revoke` (session id, the reason),
`session.revoke_all` (account id, the reason) and `session.refresh.replay`
(session id, `revoked`). The record is written after the revocation is in SQL
and has been published (or has failed to publish), so auditing never delays
revocation. A failing audit sink is logged by exception type and otherwise
ignored: the revocation has happened and must not be reported as failed, nor be
undone because of an audit problem. The one exception is `revoke_all` inside a
flow's unit of work (a password or phone change, ...): there the revocation is
part of that change and its audit record joins the transaction, so an audit
failure undoes the change and the revocation with it (see `revoke_all`).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from typing import Protocol

from xiaohe.identity.server.audit.sink import AuditSink, record_quietly
from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    TokenInvalid,
)
from xiaohe.identity.server.sessions.models import (
    IssuedSession,
    RevokeReason,
    SessionInfo,
    SessionLifetimes,
    SessionRecord,
    SessionSubject,
)
from xiaohe.identity.server.sessions.repository import (
    AMR_SEPARATOR,
    RotationStatus,
    SessionRepository,
)
from xiaohe.identity.server.sessions.tokens import AccessTokenIssuer, AccessTokenValidator
from xiaohe.identity.server.storage.database import UnitOfWork
from xiaohe.identity.tokens.jwt import Claims, InvalidToken

REFRESH_TOKEN_PREFIX = "xhr_"  # noqa: S105 - a prefix, not a secret
REFRESH_TOKEN_BYTES = 32
SESSION_ID_PREFIX = "ses_"

_SESSION_ID_BYTES = 16
_REFRESH_TOKEN_SHAPE = re.compile(r"xhr_[A-Za-z0-9_-]{43}")
_AMR_SHAPE = re.compile(r"[a-z0-9_]{1,20}")
_REASON_SHAPE = re.compile(r"[a-z_]{1,40}")
_MAX_AMR_LENGTH = 100
_MAX_AUDIENCE_LENGTH = 100
_MAX_CLIENT_ID_LENGTH = 64
_MAX_IP_LENGTH = 64
_MAX_USER_AGENT_LENGTH = 200

AUDIT_LOGOUT = "session.logout"
AUDIT_REVOKE = "session.revoke"
AUDIT_REVOKE_ALL = "session.revoke_all"
AUDIT_REFRESH_REPLAY = "session.refresh.replay"

log = logging.getLogger(__name__)


class SubjectSource(Protocol):
    """Who an account's next tokens speak for, or None once it is gone or inactive.

    Sessions do not read accounts themselves (each package owns its tables): the
    flows that combine both provide this (`flows.login.ActiveSubjects`).
    """

    async def __call__(self, account_id: str) -> SessionSubject | None:
        """The subject of an active account, or None."""
        ...


class Revocations(Protocol):
    """What the service needs of the revocation list (`revocations.RevocationList`)."""

    @property
    def leeway(self) -> float:
        """Seconds a revocation outlives the access-token lifetime."""
        ...

    def is_revoked(self, session_id: str) -> bool:
        """Whether the session is revoked (in memory)."""
        ...

    async def revoke(
        self, session_ids: Sequence[str], *, account_id: str = "", reason: str = ""
    ) -> None:
        """Revoke sessions (all of `account_id`) everywhere and announce them with `reason`
        on the revocation feed; Unavailable if that cannot be published now."""
        ...


def hash_refresh_token(token: str) -> str:
    """The stored form of a refresh token: SHA-256 of the whole string, hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_reason(reason: str) -> str:
    if not _REASON_SHAPE.fullmatch(reason):
        raise ValueError("a revoke reason is 1-40 lower-case letters or underscores")
    return str(reason)


class SessionService:
    """Creates, refreshes, revokes and lists sessions; validates access tokens (with revocation)."""

    def __init__(
        self,
        database: UnitOfWork,
        repo: SessionRepository,
        subjects: SubjectSource,
        issuer: AccessTokenIssuer,
        validator: AccessTokenValidator,
        revocations: Revocations,
        clock: Clock,
        lifetimes: SessionLifetimes,
        default_audience: str,
        *,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        audit: AuditSink | None = None,
        log_pseudonym: Callable[[str], str] | None = None,
    ) -> None:
        self._db = database
        self._repo = repo
        self._subjects = subjects
        self._issuer = issuer
        self._validator = validator
        self._revocations = revocations
        self._clock = clock
        self._lifetimes = lifetimes
        self._default_audience = default_audience
        self._random_bytes = random_bytes
        self._audit = audit
        self._log_pseudonym = log_pseudonym

    async def create(
        self,
        subject: SessionSubject,
        amr: tuple[str, ...],
        *,
        audience: str = "",
        client_id: str,
        ip_masked: str = "",
        user_agent: str = "",
    ) -> IssuedSession:
        """Start a session for an authenticated subject; returns its first tokens.

        `amr` lists the methods used (`pwd`, `sms`, …); `ip_masked` must already
        be masked; an empty `audience` means the default audience. Inside a unit of
        work the session commits with the rest of it (the login's audit record).
        """
        audience = audience or self._default_audience
        if not amr or not all(_AMR_SHAPE.fullmatch(m) for m in amr):
            raise ValueError("amr needs at least one method, each 1-20 of [a-z0-9_]")
        if len(AMR_SEPARATOR.join(amr)) > _MAX_AMR_LENGTH:
            raise ValueError("too many authentication methods")
        if len(audience) > _MAX_AUDIENCE_LENGTH or not 0 < len(client_id) <= _MAX_CLIENT_ID_LENGTH:
            raise ValueError("audience or client id too long (or client id empty)")
        now = self._clock.now()
        refresh_token = self._new_refresh_token()
        session = SessionRecord(
            session_id=SESSION_ID_PREFIX + self._random_bytes(_SESSION_ID_BYTES).hex(),
            account_id=subject.account_id,
            audience=audience,
            amr=tuple(amr),
            client_id=client_id,
            ip_masked=ip_masked[:_MAX_IP_LENGTH],
            user_agent=user_agent[:_MAX_USER_AGENT_LENGTH],
            created_at=now,
            last_used_at=now,
            idle_expires_at=now + self._lifetimes.idle,
            absolute_expires_at=now + self._lifetimes.absolute,
        )
        # Signed first: once the session is committed, nothing fails.
        issued = self._issue(session, subject, audience, refresh_token, now)
        await self._repo.create(session, hash_refresh_token(refresh_token))
        return issued

    async def refresh(
        self, refresh_token: str, audience: str = "", *, client_id: str | None = None
    ) -> IssuedSession:
        """Rotate a refresh token: new access and refresh tokens, or TokenInvalid.

        The new access token carries the account's current subject type and
        real-name level. An empty `audience` means the session's own audience.
        With `client_id`, the token must have been issued to that client.
        Replaying a used token revokes its session (SECURITY T2).
        """
        if not _REFRESH_TOKEN_SHAPE.fullmatch(refresh_token):
            log.info("refresh refused: malformed")
            raise TokenInvalid()
        now = self._clock.now()
        next_token = self._new_refresh_token()
        rotation = await self._repo.rotate(
            hash_refresh_token(refresh_token),
            hash_refresh_token(next_token),
            now=now,
            idle=self._lifetimes.idle,
            client_id=client_id,
        )
        session = rotation.session
        if rotation.status is RotationStatus.REPLAYED and session is not None:
            log.warning("refresh token replayed; session %s revoked", self._log_tag(session))
            await self._publish_quietly(
                session.session_id,
                account_id=session.account_id,
                reason=RevokeReason.REFRESH_REPLAY,
            )
            await self._record(AUDIT_REFRESH_REPLAY, session.session_id, "revoked")
            raise TokenInvalid()
        if rotation.status is not RotationStatus.ROTATED or session is None:
            log.info("refresh refused: %s", rotation.status.value)
            raise TokenInvalid()
        subject = await self._subjects(session.account_id)
        if subject is None:
            log.info(
                "refresh refused: account not active; session %s revoked", self._log_tag(session)
            )
            await self._repo.revoke(
                session.session_id, now=now, reason=RevokeReason.ACCOUNT_INACTIVE
            )
            await self._publish_quietly(
                session.session_id,
                account_id=session.account_id,
                reason=RevokeReason.ACCOUNT_INACTIVE,
            )
            await self._record(
                AUDIT_REVOKE, session.session_id, RevokeReason.ACCOUNT_INACTIVE.value
            )
            raise TokenInvalid()
        return self._issue(session, subject, audience or session.audience, next_token, now)

    async def logout(
        self,
        *,
        refresh_token: str | None = None,
        access_token: str | None = None,
        audience: str = "",
    ) -> None:
        """End the session a refresh or access token belongs to; TokenInvalid if it is not ours.

        Idempotent: a token of an already revoked or expired session still logs
        out successfully (and re-publishes the revocation), so a client may retry.
        An access token must still pass signature, lifetime and audience checks
        (`audience` empty means the default audience); revocation is not checked.
        """
        if refresh_token is None and access_token is None:
            raise InvalidArgument(
                FieldViolation("refresh_token", "需要 refresh token 或 access token")
            )
        targets: list[SessionRecord] = []
        if refresh_token is not None:
            found = None
            if _REFRESH_TOKEN_SHAPE.fullmatch(refresh_token):
                found = await self._repo.find_by_token(hash_refresh_token(refresh_token))
            if found is None:
                log.info("logout refused: unknown refresh token")
                raise TokenInvalid()
            targets.append(found)
        if access_token is not None:
            claims = self._verified(access_token, audience)
            found = await self._repo.get(claims.sid)
            if found is None or found.account_id != claims.sub:
                log.info("logout refused: unknown session")
                raise TokenInvalid()
            targets.append(found)
        now = self._clock.now()
        owners = {s.session_id: s.account_id for s in targets}
        session_ids = list(owners)
        for session_id in session_ids:
            await self._repo.revoke(session_id, now=now, reason=RevokeReason.LOGOUT)
        try:
            for account_id in dict.fromkeys(owners.values()):
                await self._revocations.revoke(
                    [sid for sid, owner in owners.items() if owner == account_id],
                    account_id=account_id,
                    reason=RevokeReason.LOGOUT,
                )
        finally:
            for session_id in session_ids:
                await self._record(AUDIT_LOGOUT, session_id, "ok")

    async def revoke_session(
        self, account_id: str, session_id: str, reason: str = RevokeReason.USER_REQUEST
    ) -> None:
        """Revoke one of the account's sessions (SECURITY T5); NotFound if it is not theirs."""
        reason = _check_reason(reason)
        if not await self._repo.revoke(
            session_id, now=self._clock.now(), reason=reason, account_id=account_id
        ):
            raise NotFound("session not found")
        try:
            await self._revocations.revoke([session_id], account_id=account_id, reason=reason)
        finally:
            await self._record(AUDIT_REVOKE, session_id, reason)

    async def revoke_all(self, account_id: str, reason: str, *, keep: str = "") -> int:
        """Revoke every session of the account but `keep` (password or phone change, …).

        Returns how many sessions were still unrevoked. Only sessions that could
        still have a live access token (used within the access-token lifetime)
        go to the revocation list; the others are dead for refresh in SQL already.

        Inside a flow's unit of work the revocation is part of that change: its
        audit record joins the transaction (an audit failure undoes everything),
        and the ids are published once it commits, quietly (a Redis failure leaves
        them pending, published when Redis is back, without failing a change that
        is already durable). Called on its own it behaves like `revoke_session`.
        """
        reason = _check_reason(reason)
        now = self._clock.now()
        in_flow = self._db.in_transaction()
        revoked = await self._repo.revoke_all(account_id, now=now, reason=reason, keep=keep)
        horizon = now - self._lifetimes.access_ttl - self._revocations.leeway
        live = [r.session_id for r in revoked if r.last_used_at >= horizon]
        if in_flow:
            if self._audit is not None:
                await self._audit.record(AUDIT_REVOKE_ALL, account_id, reason)
            if live:
                await self._db.after_commit(
                    lambda: self._publish_quietly(*live, account_id=account_id, reason=reason)
                )
            return len(revoked)
        try:
            if live:
                await self._revocations.revoke(live, account_id=account_id, reason=reason)
        finally:
            await self._record(AUDIT_REVOKE_ALL, account_id, reason)
        return len(revoked)

    async def started_at(self, session_id: str) -> float | None:
        """When the session was signed in (epoch seconds), or None if there is no such session."""
        if not session_id:
            return None
        record = await self._repo.get(session_id)
        return None if record is None else record.created_at

    async def history(self, account_id: str) -> list[SessionRecord]:
        """Every stored session of the account, live or ended, newest first (issue 14: export)."""
        return await self._repo.list_all(account_id)

    async def list_sessions(self, account_id: str) -> list[SessionInfo]:
        """The account's active sessions, most recently used first (SECURITY T5)."""
        return [s.info() for s in await self._repo.list_active(account_id, self._clock.now())]

    def validate(
        self, access_token: str, audience: str = "", *, allow_restricted: bool = False
    ) -> Claims:
        """Verify an access token and check it is not revoked; TokenInvalid otherwise.

        Synchronous: one signature check and one in-memory lookup, no I/O.
        An empty `audience` means the default audience. Raises `Unavailable`
        while this worker's revocation list has not loaded yet (fail closed). A
        restricted session's token (consent outstanding, SECURITY I3) is refused
        as TokenInvalid unless `allow_restricted`: only accepting the policy and
        logging out may use it.
        """
        claims = self._verified(access_token, audience)
        if self._revocations.is_revoked(claims.sid):
            log.debug("access token refused: revoked")
            raise TokenInvalid()
        if claims.restriction and not allow_restricted:
            log.debug("access token refused: restricted (%s)", claims.restriction)
            raise TokenInvalid()
        return claims

    def _verified(self, access_token: str, audience: str) -> Claims:
        try:
            return self._validator.validate(access_token, audience or self._default_audience)
        except InvalidToken as exc:
            log.debug("access token refused: %s", exc.reason)
            raise TokenInvalid() from None

    def _new_refresh_token(self) -> str:
        raw = self._random_bytes(REFRESH_TOKEN_BYTES)
        if len(raw) != REFRESH_TOKEN_BYTES:
            raise ValueError("the random source returned the wrong number of bytes")
        return REFRESH_TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _issue(
        self,
        session: SessionRecord,
        subject: SessionSubject,
        audience: str,
        refresh_token: str,
        now: float,
    ) -> IssuedSession:
        access_token, expires_at = self._issuer.issue(
            sub=subject.account_id,
            sid=session.session_id,
            aud=audience,
            amr=session.amr,
            subject_type=subject.subject_type,
            rn_level=subject.rn_level,
            restriction=subject.restriction,
        )
        refresh_ends = min(session.idle_expires_at, session.absolute_expires_at)
        return IssuedSession(
            session_id=session.session_id,
            account_id=subject.account_id,
            access_token=access_token,
            access_expires_in=max(0, int(expires_at - now)),
            refresh_token=refresh_token,
            refresh_expires_in=max(0, int(refresh_ends - now)),
        )

    async def _record(self, action: str, target: str, outcome: str) -> None:
        """Audit a revocation that has happened (see the module docstring)."""
        await record_quietly(self._audit, action, target, outcome, log)

    def _log_tag(self, session: SessionRecord | str) -> str:
        """How a log line names a session: `sid~<keyed pseudonym>`, stable and unreversible.

        The session id itself is a bearer-adjacent secret (it names what a revocation
        acts on) and the log redaction masks it whole, which left operators unable to
        correlate two lines about one session; a keyed tag correlates without revealing.
        """
        session_id = session if isinstance(session, str) else session.session_id
        if self._log_pseudonym is None:
            return "sid~?"
        return f"sid~{self._log_pseudonym(session_id)}"

    async def _publish_quietly(self, *session_ids: str, account_id: str, reason: str) -> None:
        """Revoke in the list without failing the caller: SQL already holds the revocation.

        Whatever Redis answers, the ids wait in the list's pending set and are
        published when it accepts them; a change that committed is never reported
        as failed because its revocation could not be announced yet.
        """
        try:
            await self._revocations.revoke(list(session_ids), account_id=account_id, reason=reason)
        except Exception as exc:  # after the commit, nothing may fail the caller
            for session_id in session_ids:
                log.warning(
                    "revocation of session %s left pending (%s)",
                    self._log_tag(session_id),
                    type(exc).__name__,
                )


__all__ = [
    "AUDIT_LOGOUT",
    "AUDIT_REFRESH_REPLAY",
    "AUDIT_REVOKE",
    "AUDIT_REVOKE_ALL",
    "REFRESH_TOKEN_BYTES",
    "REFRESH_TOKEN_PREFIX",
    "SESSION_ID_PREFIX",
    "AuditSink",
    "Revocations",
    "SessionService",
    "SubjectSource",
    "hash_refresh_token",
]
