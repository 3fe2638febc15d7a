"""Pure helpers of the code service: tickets, digests, IP buckets, code input, policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable

import pytest

from xiaohe.identity.server.codes.destinations import normalize_code
from xiaohe.identity.server.codes.digests import CodeDigests, six_digits
from xiaohe.identity.server.codes.models import (
    Channel,
    CodePolicy,
    IssueCodeCommand,
    Purpose,
    VerifiedTicket,
    VerifyCodeCommand,
)
from xiaohe.identity.server.codes.tickets import (
    TICKET_DESTINATION_LABEL,
    new_ticket,
    open_destination,
    parse_ticket,
    seal_destination,
    ticket_from_secret,
    ticket_hash,
)
from xiaohe.identity.server.errors import InvalidArgument
from xiaohe.identity.server.ratelimit.callers import client_key, ip_key
from xiaohe.identity.server.shared.network import ip_bucket

KEY = bytes(range(32))
TAG = "0123456789abcdef0123456789abcdef"


def test_new_ticket_shape_and_entropy() -> None:
    """C5, T4: `vt1.<tag>.<43 urlsafe chars>` carrying 32 random bytes."""
    raw = bytes(range(32))
    ticket = new_ticket(TAG, lambda n: raw[:n])
    version, tag, secret = ticket.split(".")
    assert (version, tag) == ("vt1", TAG)
    assert len(secret) == 43
    assert base64.urlsafe_b64decode(secret + "=") == raw
    assert new_ticket(TAG) != new_ticket(TAG)


def test_parse_ticket_round_trip() -> None:
    """C5: a ticket parses into its tag and the SHA-256 of the whole string."""
    ticket = new_ticket(TAG)
    parsed = parse_ticket(ticket)
    assert parsed is not None
    assert parsed.tag == TAG
    assert parsed.ticket_hash == hashlib.sha256(ticket.encode()).hexdigest() == ticket_hash(ticket)
    assert ticket_from_secret(TAG, parsed.secret) == ticket
    assert len(parsed.secret) == 32
    assert ticket.split(".")[2] not in repr(parsed)


SECRET = bytes(range(100, 132))
HASH = "ab" * 32
NONCE = bytes(range(12))


def test_sealed_destination_round_trips_and_hides_the_destination() -> None:
    """I1: AES-256-GCM under HMAC(secret, label), aad = ticket hash; no digits in the clear."""
    sealed = seal_destination(SECRET, HASH, "+8613812345678", NONCE)
    assert "13812345678" not in sealed
    assert open_destination(SECRET, HASH, sealed) == "+8613812345678"
    blob = base64.urlsafe_b64decode(sealed)
    assert blob[:12] == NONCE
    assert len(blob) == 12 + len("+8613812345678") + 16
    key = hmac.new(SECRET, TICKET_DESTINATION_LABEL, hashlib.sha256).digest()
    assert TICKET_DESTINATION_LABEL == b"xiaohe ticket destination v1"
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    assert AESGCM(key).decrypt(NONCE, blob[12:], HASH.encode()) == b"+8613812345678"
    assert seal_destination(SECRET, HASH, "+8613812345678", bytes(12)) != sealed


@pytest.mark.parametrize(
    ("secret", "hashed", "mangle"),
    [
        (bytes(32), HASH, lambda s: s),  # another ticket's secret
        (SECRET, "cd" * 32, lambda s: s),  # another ticket's hash (aad)
        (SECRET, HASH, lambda s: s[:-4] + ("AAAA" if s[-4:] != "AAAA" else "BBBB")),
        (SECRET, HASH, lambda s: s[:20]),  # truncated below nonce + tag
        (SECRET, HASH, lambda s: "not base64!"),
        (SECRET, HASH, lambda s: "ü" + s),
        (SECRET, HASH, lambda s: ""),
    ],
)
def test_sealed_destination_does_not_open_otherwise(
    secret: bytes, hashed: str, mangle: Callable[[str], str]
) -> None:
    """I1: a wrong secret, wrong hash or altered blob yields None, never an exception."""
    sealed = seal_destination(SECRET, HASH, "zhangsan@example.cn", NONCE)
    assert open_destination(secret, hashed, mangle(sealed)) is None


def test_seal_refuses_a_bad_nonce_and_ticket_a_bad_secret() -> None:
    """I1, C5: nonces are 96 bits and ticket secrets 32 bytes."""
    with pytest.raises(ValueError, match="nonce"):
        seal_destination(SECRET, HASH, "x@example.cn", bytes(8))
    with pytest.raises(ValueError, match="32 bytes"):
        ticket_from_secret(TAG, bytes(16))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "vt1",
        "vt1..",
        "vt1." + TAG,
        "vt1." + TAG + ".",
        "vt1." + TAG.upper() + "." + "A" * 43,
        "vt1." + TAG[:-1] + "." + "A" * 43,
        "vt1." + TAG + "." + "A" * 44,
        "vt1." + TAG + "." + "A" * 42 + "+",
        "vt1." + TAG + "." + "A" * 43 + "\n",
        " vt1." + TAG + "." + "A" * 43,
        "VT1." + TAG + "." + "A" * 43,
        "vt1." + TAG + "." + "A" * 43 + ".x",
        "x" * 10_000,
        None,
        12345,
        b"vt1." + TAG.encode() + b"." + b"A" * 43,
    ],
)
def test_parse_ticket_rejects_malformed_input(bad: object) -> None:
    """C5, F3: anything else is not a ticket (None), never an exception."""
    assert parse_ticket(bad) is None


def test_destination_tag_is_keyed_and_bound_to_the_channel() -> None:
    """Keys hold a keyed pseudonym: HMAC-SHA256(key, "channel:destination"), 16 bytes hex."""
    digests = CodeDigests(KEY)
    tag = digests.destination_tag(Channel.SMS, "+8613812345678")
    expected = hmac.new(KEY, b"SMS:+8613812345678", hashlib.sha256).digest()[:16].hex()
    assert tag == expected
    assert len(tag) == 32
    assert digests.destination_tag(Channel.EMAIL, "+8613812345678") != tag
    assert CodeDigests(bytes(32)).destination_tag(Channel.SMS, "+8613812345678") != tag
    assert "KEY" not in repr(digests)
    assert str(KEY) not in repr(digests)


def test_code_mac_binds_channel_destination_and_purpose() -> None:
    """C1, C2: the stored HMAC differs for any other channel, destination, purpose or code."""
    d = CodeDigests(KEY)
    base = d.code_mac(Channel.SMS, "+8613812345678", Purpose.REGISTER, "123456")
    assert len(base) == 64
    others = {
        d.code_mac(Channel.EMAIL, "+8613812345678", Purpose.REGISTER, "123456"),
        d.code_mac(Channel.SMS, "+8613812345679", Purpose.REGISTER, "123456"),
        d.code_mac(Channel.SMS, "+8613812345678", Purpose.RESET_PASSWORD, "123456"),
        d.code_mac(Channel.SMS, "+8613812345678", Purpose.REGISTER, "123457"),
    }
    assert base not in others
    assert len(others) == 4
    assert "123456" not in base


def test_short_keys_are_refused() -> None:
    """Key material must be at least 256 bits."""
    with pytest.raises(ValueError, match="32 bytes"):
        CodeDigests(b"short")


@pytest.mark.parametrize(
    ("ip", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:DB8:1:2::ffff", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("not an ip", "raw:not an ip"),
    ],
)
def test_ip_buckets(ip: str, bucket: str) -> None:
    """C6: IPv4 per address, IPv6 per /64, IPv4-mapped IPv6 as IPv4."""
    assert ip_bucket(ip) == bucket


def test_rate_limit_keys_are_hash_tagged_and_pseudonymous() -> None:
    """Keys carry one hash tag each and never the raw IP."""
    d = CodeDigests(KEY)
    key = ip_key(d.ip_tag("203.0.113.7"))
    assert key.startswith("xh:rl:{ip:")
    assert key.endswith("}:code.issue")
    assert "203.0.113.7" not in key
    assert ip_key(d.ip_tag("2001:db8::1")) == ip_key(d.ip_tag("2001:db8::2"))
    assert client_key("bff-web_1") == "xh:rl:{cl:bff-web_1}:code.issue"
    odd = client_key("a}b{c")
    assert odd.count("{") == 1
    assert odd.count("}") == 1
    assert "a}b" not in odd


def test_six_digits_are_uniform_enough() -> None:
    """C1: codes are 6 ASCII digits, leading zeros kept, every digit used."""
    codes = [six_digits() for _ in range(5000)]
    assert all(len(c) == 6 and c.isascii() and c.isdigit() for c in codes)
    counts = Counter("".join(codes))
    assert set(counts) == set("0123456789")
    assert min(counts.values()) > 2400  # 3000 expected per digit
    assert len(set(codes)) > 4900


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("123456", "123456"),
        (" 012345\t", "012345"),
        ("１２３４５６", "123456"),
        ("\u200b654321\ufeff", "654321"),
    ],
)
def test_code_input_is_normalised(raw: str, code: str) -> None:
    """C1: NFKC (full-width digits), invisible characters dropped, trimmed."""
    assert normalize_code(raw) == code


@pytest.mark.parametrize(
    "raw", ["", "12345", "1234567", "12 3456", "12a456", "١٢٣٤٥٦", "²³⁴⁵⁶⁷x", "1" * 100, None]
)
def test_bad_code_input_names_the_field(raw: object) -> None:
    """F3: a code that is not 6 digits is InvalidArgument on `code`, without echoing it."""
    with pytest.raises(InvalidArgument) as caught:
        normalize_code(raw)
    assert [v.field for v in caught.value.violations] == ["code"]
    if isinstance(raw, str) and raw:
        assert raw not in caught.value.message


def test_reprs_hide_codes_tickets_and_destinations() -> None:
    """C4, I1: commands and results can be logged without leaking secrets or personal data."""
    phone = "+8613812345678"
    text = repr(IssueCodeCommand(Channel.SMS, phone, Purpose.LOGIN))
    text += repr(VerifyCodeCommand(Channel.SMS, phone, Purpose.LOGIN, "987654"))
    ticket = new_ticket(TAG)
    text += repr(VerifiedTicket(ticket, 600))
    assert phone not in text
    assert "987654" not in text
    assert ticket not in text


@pytest.mark.parametrize(
    "changes",
    [{"ttl": 0}, {"ttl": 601}, {"max_attempts": 0}, {"ticket_ttl": 0}, {"per_ip_hour": -1}],
)
def test_policy_refuses_nonsense(changes: dict[str, int]) -> None:
    """C1: the code TTL stays within 10 minutes; counts are sane."""
    with pytest.raises(ValueError, match="must"):
        CodePolicy(**changes)  # type: ignore[arg-type]


def test_default_policy_matches_the_architecture() -> None:
    """Defaults: 5 min TTL, 5 tries, 10 min tickets, 60 s cooldown, 5/h, 10/d, 30/h per IP."""
    p = CodePolicy()
    assert (p.ttl, p.max_attempts, p.ticket_ttl, p.cooldown) == (300, 5, 600, 60)
    assert (p.per_destination_hour, p.per_destination_day, p.per_ip_hour) == (5, 10, 30)
    assert (p.per_client_minute, p.failures_per_destination_hour) == (600, 30)


def test_default_failure_budget_exceeds_what_default_issue_limits_allow() -> None:
    """B2, C3: 5 codes/hour x 5 tries cannot spend the default budget (Settings and policy)."""
    from xiaohe.identity.server.config import Settings

    p = CodePolicy()
    assert p.failures_per_destination_hour > p.per_destination_hour * p.max_attempts
    assert Settings().code_failures_per_destination_hour == 30
    assert p.allowed_country_codes == ("86",)


def test_random_source_is_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """C1: the default generator draws uniformly below 10**6 from `secrets` (the OS CSPRNG)."""
    calls: list[int] = []

    def fake_randbelow(n: int) -> int:
        calls.append(n)
        return 42

    monkeypatch.setattr(secrets, "randbelow", fake_randbelow)
    assert six_digits() == "000042"
    assert calls == [1_000_000]
