"""TOTP and recovery-code logic with a fake clock (RFC 6238 test vectors; SECURITY D3)."""

from __future__ import annotations

import base64
import itertools

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.totp.codes import (
    RECOVERY_CODE_COUNT,
    code_at,
    match_step,
    new_recovery_codes,
    new_secret,
    normalise_code,
    normalise_recovery_code,
    provisioning_uri,
    recovery_code_hash,
    step_at,
)

# RFC 6238 Appendix B, SHA-1: the secret "12345678901234567890", the low six digits.
RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()
RFC_VECTORS = {59: "287082", 1111111109: "081804", 1234567890: "005924", 2000000000: "279037"}


def test_codes_match_the_rfc_6238_vectors() -> None:
    for at, code in RFC_VECTORS.items():
        assert code_at(RFC_SECRET, at) == code
        assert match_step(RFC_SECRET, code, at) == step_at(at)


def test_one_step_of_drift_either_way_is_accepted_and_no_more() -> None:
    """D3 (RFC 6238 §5.2): the code of the step before or after matches, naming its step."""
    clock = FakeClock(1_790_000_000.0)
    secret = new_secret(lambda n: bytes(range(n)))
    now_step = step_at(clock.now())
    for offset in (-1, 0, 1):
        code = code_at(secret, clock.now() + 30 * offset)
        assert match_step(secret, code, clock.now()) == now_step + offset
    for offset in (-2, 2):
        code = code_at(secret, clock.now() + 30 * offset)
        assert match_step(secret, code, clock.now()) is None
    clock.advance(90)
    assert match_step(secret, code_at(secret, clock.now() - 90), clock.now()) is None


def test_secrets_are_160_bits_of_the_given_randomness() -> None:
    counter = itertools.count()
    secret = new_secret(lambda n: bytes(next(counter) % 256 for _ in range(n)))
    assert len(base64.b32decode(secret)) == 20
    assert new_secret(lambda n: b"\x01" * n) != new_secret(lambda n: b"\x02" * n)


def test_typed_codes_are_normalised_or_refused() -> None:
    assert normalise_code(" 123 456 ") == "123456"
    assert normalise_code("１２３４５６") == "123456"  # full-width digits
    for bad in ("12345", "1234567", "12a456", ""):
        assert normalise_code(bad) is None


def test_recovery_codes_are_distinct_shaped_and_hashed_per_account() -> None:
    counter = itertools.count()
    codes = new_recovery_codes(lambda n: bytes([next(counter) // 2 % 256]) * n)  # repeats skipped
    assert len(codes) == RECOVERY_CODE_COUNT == len(set(codes))
    for code in codes:
        assert len(code) == 19
        assert code.count("-") == 3
        assert normalise_recovery_code(code.upper().replace("-", " ")) == code.replace("-", "")
    assert normalise_recovery_code("not-a-code") is None
    typed = normalise_recovery_code(codes[0])
    assert typed is not None
    key = b"k" * 32
    one = recovery_code_hash(key, "acc_a", typed)
    assert one != recovery_code_hash(key, "acc_b", typed)
    assert one != recovery_code_hash(b"j" * 32, "acc_a", typed)
    assert typed not in one


def test_the_provisioning_uri_names_issuer_and_login() -> None:
    uri = provisioning_uri(RFC_SECRET, label="zhang.wei", issuer="小禾企服网")
    assert uri.startswith("otpauth://totp/%E5%B0%8F%E7%A6%BE%E4%BC%81%E6%9C%8D%E7%BD%91:zhang.wei?")
    assert f"secret={RFC_SECRET}" in uri
