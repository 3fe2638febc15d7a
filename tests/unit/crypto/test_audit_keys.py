"""Tests of the audit chain keys: HKDF from the ring's audit key, MACs, checkpoint signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.audit_keys import (
    CHECKPOINT_INFO,
    MAC_INFO,
    AuditKeys,
    verify_signature,
)
from xiaohe.identity.server.crypto.keyring import KeyRing

ROOT = bytes(range(32))
OTHER_ROOT = bytes(range(1, 33))
MESSAGE = b'{"seq":1}'


def rfc5869(ikm: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 with an empty salt and 32 bytes of output, written out from RFC 5869."""
    prk = hmac.new(b"\x00" * 32, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_mac_is_hmac_sha256_under_the_hkdf_derived_key() -> None:
    """I7: the chain MAC key is HKDF-SHA256(audit key, MAC_INFO), not the audit key itself."""
    expected = hmac.new(rfc5869(ROOT, MAC_INFO), MESSAGE, hashlib.sha256).hexdigest()
    keys = AuditKeys(ROOT)
    assert keys.mac(MESSAGE) == expected
    assert keys.mac(MESSAGE) != hmac.new(ROOT, MESSAGE, hashlib.sha256).hexdigest()
    assert keys.mac(MESSAGE) != hashlib.sha256(MESSAGE).hexdigest()
    assert AuditKeys(OTHER_ROOT).mac(MESSAGE) != keys.mac(MESSAGE)


def test_checkpoint_key_is_ed25519_from_its_own_label() -> None:
    """I7: the checkpoint key's seed is HKDF(audit key, CHECKPOINT_INFO), distinct from the MAC
    key; its id is `ack-` and 8 bytes of the public key's SHA-256."""
    seed = rfc5869(ROOT, CHECKPOINT_INFO)
    assert seed != rfc5869(ROOT, MAC_INFO)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    keys = AuditKeys(ROOT)
    assert keys.public_key == public
    assert keys.key_id == "ack-" + hashlib.sha256(public).digest()[:8].hex()
    assert AuditKeys(OTHER_ROOT).key_id != keys.key_id


def test_signatures_verify_only_for_that_key_and_message() -> None:
    """I7: a checkpoint signature is refused under another key, another key id or message."""
    keys, other = AuditKeys(ROOT), AuditKeys(OTHER_ROOT)
    signature = keys.sign(MESSAGE)
    assert keys.verify(keys.key_id, signature, MESSAGE)
    assert verify_signature(keys.public_key, signature, MESSAGE)
    assert not keys.verify(keys.key_id, signature, MESSAGE + b" ")
    assert not keys.verify(other.key_id, signature, MESSAGE)
    assert not keys.verify(keys.key_id, other.sign(MESSAGE), MESSAGE)
    assert not keys.verify(keys.key_id, signature[:-1], MESSAGE)
    assert not other.verify(keys.key_id, signature, MESSAGE)


def test_keys_never_show_in_a_repr() -> None:
    keys = AuditKeys(ROOT)
    shown = repr(keys)
    assert keys.key_id in shown
    for secret in (ROOT, rfc5869(ROOT, MAC_INFO), rfc5869(ROOT, CHECKPOINT_INFO)):
        assert secret.hex() not in shown
        assert repr(secret) not in shown


def test_a_short_root_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        AuditKeys(b"\x01" * 16)


def test_ring_derives_stable_audit_keys_without_a_new_file_field(tmp_path: Path) -> None:
    """I7: the ring's audit keys come from its audit pseudonym key, survive reloads and
    rotations, differ between rings, and the key ring file format is unchanged."""
    clock = FakeClock()
    path = tmp_path / "keyring.json"
    ring = KeyRing.load_or_create(path, clock)
    keys = ring.audit_keys
    assert keys.key_id == AuditKeys(ring.audit_pseudonym_key).key_id
    assert keys.mac(MESSAGE) == AuditKeys(ring.audit_pseudonym_key).mac(MESSAGE)
    fields = set(json.loads(path.read_text()))

    ring.rotate_master_key()
    ring.rotate_signing_key(keep_retired_for=60)
    again = KeyRing.load_or_create(path, clock)
    assert again.audit_keys.key_id == keys.key_id
    assert again.audit_keys.mac(MESSAGE) == keys.mac(MESSAGE)
    assert set(json.loads(path.read_text())) == fields
    assert "audit_pseudonym_key" in fields
    assert not any("checkpoint" in f or "audit_mac" in f for f in fields)

    other = KeyRing.load_or_create(tmp_path / "other.json", clock)
    assert other.audit_keys.key_id != keys.key_id
    assert other.audit_keys.mac(MESSAGE) != keys.mac(MESSAGE)
