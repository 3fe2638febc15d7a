"""Who vouches for a real-name claim: the rules, an identity-check service, or a reviewer.

Every verifier answers a `Verdict`: MATCH (with the level it earns), MISMATCH
(with a reason for the user), or REVIEW (a person must look: the rules cannot
vouch for a passport; the service knows no record). The flow runs the rules
first whatever verifier is chosen, so a verifier only sees well-formed claims
that pass them.

- `RuleVerifier` (the default, `real_name_verifier = "rules"`): the rules alone
  (realname/claims.py); a resident-ID claim that passes them earns level 1.
- `HttpVerifier` (`"http"`): an identity-check service in the shape of the
  public ones: two elements (name + ID number), three elements (name + ID
  number + phone, when the account has a phone) and the enterprise
  four-element check (organisation name, USCC, representative name and ID
  number). A match earns level 2, a mismatch rejects, "no record" goes to
  review. Requests are signed (`sign_request`) in the manner of API-gateway
  signatures (an HMAC-SHA256 over the method, content hash, content type and
  the app key, timestamp and nonce headers, then the path), over TLS.
- `ReviewVerifier` (`"review"`): every claim goes to a reviewer.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import urlsplit

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.errors import Unavailable
from xiaohe.identity.server.realname.claims import (
    LegalPersonClaim,
    NaturalPersonClaim,
    rules_can_vouch_for,
)
from xiaohe.identity.server.shared.identifiers import IdType

VERIFIERS: Final = ("rules", "http", "review")
"""The values of the `real_name_verifier` setting."""


class Outcome(enum.Enum):
    """What a verifier concluded."""

    MATCH = "match"
    MISMATCH = "mismatch"
    REVIEW = "review"


@dataclass(frozen=True)
class Verdict:
    """A verifier's answer: the outcome, the level a match earns, a reason for the user."""

    outcome: Outcome
    level: int = 0
    reason: str = ""


class Verifier(Protocol):
    """Checks a claim that already passed the rules."""

    name: str

    async def check_natural(self, claim: NaturalPersonClaim) -> Verdict:
        """The verdict on a natural person's claim."""
        ...

    async def check_legal(self, claim: LegalPersonClaim) -> Verdict:
        """The verdict on a legal person's claim."""
        ...


_NEEDS_REVIEW = "a reviewer checks documents of this type"


class RuleVerifier:
    """The rules alone: a resident-ID claim that passed them earns level 1."""

    name = "rules"

    async def check_natural(self, claim: NaturalPersonClaim) -> Verdict:
        """MATCH at level 1 for a resident ID card; REVIEW for other documents."""
        if not rules_can_vouch_for(claim.id_type):
            return Verdict(Outcome.REVIEW, reason=_NEEDS_REVIEW)
        return Verdict(Outcome.MATCH, level=1)

    async def check_legal(self, claim: LegalPersonClaim) -> Verdict:
        """MATCH at level 1 (USCC and representative passed the rules)."""
        if not rules_can_vouch_for(claim.representative_id_type):
            return Verdict(Outcome.REVIEW, reason=_NEEDS_REVIEW)
        return Verdict(Outcome.MATCH, level=1)


class ReviewVerifier:
    """Every claim goes to a reviewer."""

    name = "review"

    async def check_natural(self, claim: NaturalPersonClaim) -> Verdict:
        """Always REVIEW."""
        return Verdict(Outcome.REVIEW, reason="a reviewer checks every submission")

    async def check_legal(self, claim: LegalPersonClaim) -> Verdict:
        """Always REVIEW."""
        return Verdict(Outcome.REVIEW, reason="a reviewer checks every submission")


# -- the HTTP identity-check adapter -------------------------------------------------

CONTENT_TYPE: Final = "application/json; charset=utf-8"
ACCEPT: Final = "application/json"
SIGNED_HEADERS: Final = ("x-ca-key", "x-ca-nonce", "x-ca-timestamp")
"""The headers covered by the signature, in the order they are signed."""

NATURAL_TWO_PATH: Final = "/v1/idcard/two-elements"
NATURAL_THREE_PATH: Final = "/v1/idcard/three-elements"
ENTERPRISE_FOUR_PATH: Final = "/v1/enterprise/four-elements"

RESULT_MATCH: Final = 1
RESULT_MISMATCH: Final = 2
RESULT_NO_RECORD: Final = 3


def content_md5(body: bytes) -> str:
    """Base64 of the body's MD5, as the Content-MD5 header carries it (RFC 1864)."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")


def string_to_sign(method: str, path: str, headers: Mapping[str, str]) -> str:
    """The canonical string: method, Accept, Content-MD5, Content-Type, Date, the signed
    headers as `name:value` lines (lower-case names, in `SIGNED_HEADERS` order), the path."""
    lower = {k.lower(): v for k, v in headers.items()}
    lines = [
        method.upper(),
        lower.get("accept", ""),
        lower.get("content-md5", ""),
        lower.get("content-type", ""),
        lower.get("date", ""),
    ]
    signed = "".join(f"{name}:{lower.get(name, '')}\n" for name in SIGNED_HEADERS)
    return "\n".join(lines) + "\n" + signed + path


def signature(secret: str, method: str, path: str, headers: Mapping[str, str]) -> str:
    """Base64 HMAC-SHA256 of `string_to_sign` under the app secret."""
    text = string_to_sign(method, path, headers).encode("utf-8")
    return base64.b64encode(hmac.new(secret.encode("utf-8"), text, hashlib.sha256).digest()).decode(
        "ascii"
    )


def sign_request(
    *, app_key: str, app_secret: str, path: str, body: bytes, timestamp_ms: int, nonce: str
) -> dict[str, str]:
    """The headers of a signed POST of `body` (JSON) to `path`."""
    headers = {
        "Accept": ACCEPT,
        "Content-Type": CONTENT_TYPE,
        "Content-MD5": content_md5(body),
        "X-Ca-Key": app_key,
        "X-Ca-Timestamp": str(timestamp_ms),
        "X-Ca-Nonce": nonce,
        "X-Ca-Signature-Method": "HmacSHA256",
        "X-Ca-Signature-Headers": ",".join(SIGNED_HEADERS),
    }
    headers["X-Ca-Signature"] = signature(app_secret, "POST", path, headers)
    return headers


@dataclass(frozen=True)
class HttpVerifierConfig:
    """Where the identity-check service is and the app's credentials (the secret is hidden)."""

    base_url: str
    app_key: str
    app_secret: str
    timeout_seconds: float = 5.0

    def __repr__(self) -> str:
        return (
            f"HttpVerifierConfig(base_url={self.base_url!r}, app_key={self.app_key!r}, "
            "app_secret=<hidden>)"
        )


class HttpVerifier:
    """An identity-check service over HTTPS with signed requests (see the module docstring).

    Answers: `{"code": 0, "result": 1 | 2 | 3}`: 1 the elements match, 2 they do
    not, 3 the source has no record. Any other answer, a non-2xx status, a
    timeout or a lost connection is `Unavailable`: nothing is stored and the
    caller may try again. Neither the elements nor the credentials ever reach
    a log line or an error message.
    """

    name = "http"

    def __init__(
        self,
        config: HttpVerifierConfig,
        clock: Clock,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ) -> None:
        self._config = config
        self._clock = clock
        self._nonce = nonce
        self._path_prefix = urlsplit(config.base_url).path.rstrip("/")

    def __repr__(self) -> str:
        return f"HttpVerifier({self._config!r})"

    async def check_natural(self, claim: NaturalPersonClaim) -> Verdict:
        """Two elements, or three when the account has a phone; other documents: REVIEW."""
        if claim.id_type is not IdType.RESIDENT_ID_CARD:
            return Verdict(Outcome.REVIEW, reason=_NEEDS_REVIEW)
        body: dict[str, str] = {"name": claim.name, "id_number": claim.id_number}
        path = NATURAL_TWO_PATH
        if claim.phone.startswith("+86"):
            body["mobile"] = claim.phone.removeprefix("+86")
            path = NATURAL_THREE_PATH
        return await self._check(path, body)

    async def check_legal(self, claim: LegalPersonClaim) -> Verdict:
        """The enterprise four-element check; a non-resident representative: REVIEW."""
        if claim.representative_id_type is not IdType.RESIDENT_ID_CARD or len(claim.uscc) != 18:
            return Verdict(Outcome.REVIEW, reason=_NEEDS_REVIEW)
        body = {
            "organization_name": claim.organization_name,
            "uscc": claim.uscc,
            "representative_name": claim.representative_name,
            "representative_id_number": claim.representative_id_number,
        }
        return await self._check(ENTERPRISE_FOUR_PATH, body)

    async def _check(self, path: str, document: Mapping[str, str]) -> Verdict:
        body = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        full_path = self._path_prefix + path
        headers = sign_request(
            app_key=self._config.app_key,
            app_secret=self._config.app_secret,
            path=full_path,
            body=body,
            timestamp_ms=int(self._clock.now() * 1000),
            nonce=self._nonce(),
        )
        url = self._config.base_url.rstrip("/") + path
        # Imported by the one verifier that calls out: every CLI command would pay its 0.1 s.
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self._config.timeout_seconds)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, data=body, headers=headers) as response,
            ):
                status = response.status
                answer = await response.json(content_type=None) if status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            raise Unavailable("the identity check service did not answer; try again") from None
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(answer, dict) or answer.get("code") != 0 or result is None:
            raise Unavailable("the identity check service did not answer; try again")
        if result == RESULT_MATCH:
            return Verdict(Outcome.MATCH, level=2)
        if result == RESULT_MISMATCH:
            return Verdict(
                Outcome.MISMATCH,
                reason="the name and identity number do not match the authoritative record",
            )
        if result == RESULT_NO_RECORD:
            return Verdict(Outcome.REVIEW, reason="the authoritative source has no record")
        raise Unavailable("the identity check service did not answer; try again")
