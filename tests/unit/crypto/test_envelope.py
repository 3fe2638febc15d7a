"""Tests of envelope encryption: data keys, field ciphertexts, rotation and sealing."""

from __future__ import annotations

from pathlib import Path

import pytest

from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.envelope import (
    DataKeyCipher,
    DecryptionError,
    WrappedDataKey,
    field_aad,
)
from xiaohe.identity.server.crypto.keyring import KeyRing

ID_NUMBER = "11010519491231002X"
AAD = field_aad("acct-1", "id_number")


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return KeyRing.load_or_create(tmp_path / "keyring.json", FakeClock())


@pytest.fixture
def cipher(ring: KeyRing) -> DataKeyCipher:
    return DataKeyCipher(ring)


@pytest.fixture
def data_key(cipher: DataKeyCipher) -> bytes:
    return cipher.new_data_key().key


# -- data keys --------------------------------------------------------------------


def test_new_data_key_is_wrapped_under_the_active_master_key(
    cipher: DataKeyCipher, ring: KeyRing
) -> None:
    new = cipher.new_data_key()

    assert len(new.key) == 32
    assert new.wrapped.master_key_id == ring.active_master_key.id
    assert new.key not in new.wrapped.wrapped
    assert len(new.wrapped.wrapped) == 12 + 32 + 16
    assert cipher.unwrap(new.wrapped) == new.key
    assert cipher.new_data_key().key != new.key


def test_data_key_repr_hides_the_key(cipher: DataKeyCipher) -> None:
    new = cipher.new_data_key()
    assert new.key.hex() not in repr(new)
    assert repr(new.key) not in repr(new)


def test_old_wrapped_keys_still_unwrap_after_rotation(cipher: DataKeyCipher, ring: KeyRing) -> None:
    before = cipher.new_data_key()
    blob = cipher.encrypt_field(before.key, ID_NUMBER, AAD)
    ring.rotate_master_key()

    assert cipher.unwrap(before.wrapped) == before.key
    assert cipher.decrypt_field(cipher.unwrap(before.wrapped), blob, AAD) == ID_NUMBER
    assert cipher.new_data_key().wrapped.master_key_id == ring.active_master_key.id


def test_rewrap_moves_the_key_to_the_active_master_key(
    cipher: DataKeyCipher, ring: KeyRing
) -> None:
    before = cipher.new_data_key()
    blob = cipher.encrypt_field(before.key, ID_NUMBER, AAD)
    new_master = ring.rotate_master_key()

    rewrapped = cipher.rewrap(before.wrapped)

    assert rewrapped.master_key_id == new_master.id
    assert rewrapped.wrapped != before.wrapped.wrapped
    assert cipher.unwrap(rewrapped) == before.key
    # The field ciphertext is untouched and still decrypts.
    assert cipher.decrypt_field(cipher.unwrap(rewrapped), blob, AAD) == ID_NUMBER


def test_rewrap_under_the_active_key_is_a_no_op(cipher: DataKeyCipher) -> None:
    new = cipher.new_data_key()
    assert cipher.rewrap(new.wrapped) == new.wrapped


def test_wrapped_key_is_bound_to_its_master_key_id(cipher: DataKeyCipher, ring: KeyRing) -> None:
    old = cipher.new_data_key()
    new_master = ring.rotate_master_key()
    relabelled = WrappedDataKey(master_key_id=new_master.id, wrapped=old.wrapped.wrapped)

    with pytest.raises(DecryptionError):
        cipher.unwrap(relabelled)


def test_tampered_wrapped_key_fails(cipher: DataKeyCipher) -> None:
    new = cipher.new_data_key()
    raw = bytearray(new.wrapped.wrapped)
    raw[-1] ^= 0x01
    with pytest.raises(DecryptionError):
        cipher.unwrap(WrappedDataKey(new.wrapped.master_key_id, bytes(raw)))


def test_unknown_master_key_fails_with_decryption_error(cipher: DataKeyCipher) -> None:
    new = cipher.new_data_key()
    with pytest.raises(DecryptionError, match="not in the key ring"):
        cipher.unwrap(WrappedDataKey("mk-00000000", new.wrapped.wrapped))


def test_unwrap_reloads_the_ring_for_a_key_added_by_another_process(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "keyring.json"
    worker = KeyRing.load_or_create(path, clock)
    other = KeyRing.load_or_create(path, clock)
    other.rotate_master_key()
    wrapped_elsewhere = DataKeyCipher(other).new_data_key()

    assert DataKeyCipher(worker).unwrap(wrapped_elsewhere.wrapped) == wrapped_elsewhere.key


def test_wrapped_key_bytes_round_trip(cipher: DataKeyCipher) -> None:
    new = cipher.new_data_key()
    assert WrappedDataKey.from_bytes(new.wrapped.to_bytes()) == new.wrapped


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x02\x03mk-abc", b"\x01\x20mk-", b"\x01\x00xx"])
def test_malformed_wrapped_key_bytes_are_rejected(blob: bytes) -> None:
    with pytest.raises(DecryptionError):
        WrappedDataKey.from_bytes(blob)


# -- fields -------------------------------------------------------------------------


def test_field_round_trip(cipher: DataKeyCipher, data_key: bytes) -> None:
    for value in [ID_NUMBER, "张三", "", "北京市朝阳区某某路 1 号"]:
        blob = cipher.encrypt_field(data_key, value, AAD)
        assert cipher.decrypt_field(data_key, blob, AAD) == value


def test_field_blob_layout_and_no_plaintext(cipher: DataKeyCipher, data_key: bytes) -> None:
    blob = cipher.encrypt_field(data_key, ID_NUMBER, AAD)

    assert blob[0] == 1
    assert len(blob) == 1 + 12 + len(ID_NUMBER) + 16
    assert ID_NUMBER.encode() not in blob
    assert b"19491231" not in blob
    name = "张三丰"
    assert name.encode() not in cipher.encrypt_field(data_key, name, AAD)


def test_field_nonces_are_random(cipher: DataKeyCipher, data_key: bytes) -> None:
    first = cipher.encrypt_field(data_key, ID_NUMBER, AAD)
    second = cipher.encrypt_field(data_key, ID_NUMBER, AAD)
    assert first != second
    assert first[1:13] != second[1:13]


@pytest.mark.parametrize(
    "other_aad",
    [field_aad("acct-2", "id_number"), field_aad("acct-1", "name"), b""],
)
def test_field_cannot_move_to_another_row_or_field(
    cipher: DataKeyCipher, data_key: bytes, other_aad: bytes
) -> None:
    blob = cipher.encrypt_field(data_key, ID_NUMBER, AAD)
    with pytest.raises(DecryptionError) as info:
        cipher.decrypt_field(data_key, blob, other_aad)
    assert ID_NUMBER not in str(info.value)


def test_every_tampered_byte_is_detected(cipher: DataKeyCipher, data_key: bytes) -> None:
    blob = cipher.encrypt_field(data_key, ID_NUMBER, AAD)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x80
        with pytest.raises(DecryptionError):
            cipher.decrypt_field(data_key, bytes(tampered), AAD)


def test_truncated_field_blob_is_rejected(cipher: DataKeyCipher, data_key: bytes) -> None:
    blob = cipher.encrypt_field(data_key, ID_NUMBER, AAD)
    for cut in [0, 1, 13, 28, len(blob) - 1]:
        with pytest.raises(DecryptionError):
            cipher.decrypt_field(data_key, blob[:cut], AAD)


def test_wrong_data_key_fails(cipher: DataKeyCipher, data_key: bytes) -> None:
    blob = cipher.encrypt_field(data_key, ID_NUMBER, AAD)
    other_key = cipher.new_data_key().key
    with pytest.raises(DecryptionError):
        cipher.decrypt_field(other_key, blob, AAD)


def test_data_key_length_is_checked(cipher: DataKeyCipher) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        cipher.encrypt_field(b"short", ID_NUMBER, AAD)


def test_field_aad_is_unambiguous() -> None:
    assert field_aad("ab", "c") != field_aad("a", "bc")
    assert field_aad("acct-1", "name") == field_aad("acct-1", "name")


# -- sealed payloads ------------------------------------------------------------------


def test_seal_round_trip_and_header(cipher: DataKeyCipher, ring: KeyRing) -> None:
    payload = b'{"phone": "13800138000", "code": "123456"}'
    blob = cipher.seal(payload, b"outbox:42")

    assert payload not in blob
    assert b"13800138000" not in blob
    assert ring.active_master_key.id.encode() in blob[:16]
    assert cipher.open(blob, b"outbox:42") == payload


def test_sealed_blob_opens_after_rotation(cipher: DataKeyCipher, ring: KeyRing) -> None:
    old_id = ring.active_master_key.id
    blob = cipher.seal(b"payload", b"outbox:1")
    new_id = ring.rotate_master_key().id

    assert cipher.open(blob, b"outbox:1") == b"payload"
    fresh = cipher.seal(b"payload", b"outbox:2")
    assert new_id.encode() in fresh[:16]
    assert old_id.encode() not in fresh[:16]


def test_seal_rejects_wrong_aad_and_tampering(cipher: DataKeyCipher) -> None:
    blob = cipher.seal(b"payload", b"outbox:1")

    with pytest.raises(DecryptionError):
        cipher.open(blob, b"outbox:2")
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionError):
            cipher.open(bytes(tampered), b"outbox:1")


def test_sealed_blob_naming_another_master_key_fails(cipher: DataKeyCipher, ring: KeyRing) -> None:
    old_id = ring.active_master_key.id.encode()
    blob = cipher.seal(b"payload", b"aad")
    new_id = ring.rotate_master_key().id.encode()
    assert len(new_id) == len(old_id)

    with pytest.raises(DecryptionError):
        cipher.open(blob.replace(old_id, new_id, 1), b"aad")
