"""Envelope encryption of personal data at rest (AES-256-GCM).

Each account has its own random 256-bit data key; its sensitive fields are
encrypted under that key, and the data key is stored only wrapped (encrypted)
under a master key from the key ring. This gives two properties:

- Master-key rotation re-wraps the small data keys (`DataKeyCipher.rewrap`) and
  never touches the encrypted fields.
- Destroying an account's wrapped data key crypto-shreds all its fields,
  including copies in backups.

Every ciphertext is authenticated together with associated data that names
where it belongs (the account id and field name, see `field_aad`), so a blob
copied into another row or column fails to decrypt instead of revealing one
user's data as another's. Nonces are 96 random bits; a data key encrypts a
handful of fields over its life, far below the GCM random-nonce limit.

`seal`/`open` encrypt short-lived payloads (the outbox) directly under the
master key, with the key id in the blob header so they remain readable across a
rotation while the old key is still in the ring.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xiaohe.identity.server.crypto.keyring import MasterKey, UnknownKeyError

DATA_KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_FIELD_VERSION = 1
_WRAP_VERSION = 1
_SEAL_VERSION = 1
_SEAL_DOMAIN = b"xiaohe.seal\x00"


class DecryptionError(Exception):
    """A ciphertext could not be decrypted: wrong key, wrong context, tampered or malformed.

    The message never contains key material or (partial) plaintext.
    """


class MasterKeySource(Protocol):
    """What envelope encryption needs from the key ring."""

    @property
    def active_master_key(self) -> MasterKey:
        """The master key that wraps new data keys."""
        ...

    def master_key(self, key_id: str) -> MasterKey:
        """The master key named `key_id`; raises UnknownKeyError if unknown."""
        ...

    def reload(self) -> None:
        """Re-read keys that another process may have added."""
        ...


@dataclass(frozen=True)
class WrappedDataKey:
    """A data key wrapped under master key `master_key_id`; `wrapped` = nonce + ciphertext + tag."""

    master_key_id: str
    wrapped: bytes

    def to_bytes(self) -> bytes:
        """One self-describing blob (version, key id, wrapped key) for a single storage column."""
        key_id = self.master_key_id.encode("ascii")
        return struct.pack("!BB", _WRAP_VERSION, len(key_id)) + key_id + self.wrapped

    @classmethod
    def from_bytes(cls, blob: bytes) -> WrappedDataKey:
        """Parse a blob made by `to_bytes`; raises DecryptionError if malformed."""
        key_id, rest = _parse_key_id_header(blob, _WRAP_VERSION)
        return cls(master_key_id=key_id, wrapped=rest)


@dataclass(frozen=True)
class NewDataKey:
    """A freshly generated data key: `key` for use now, `wrapped` for storage."""

    key: bytes = field(repr=False)
    wrapped: WrappedDataKey


def field_aad(account_id: str, field_name: str) -> bytes:
    """Associated data binding a field ciphertext to one account and one field.

    Both parts are length-prefixed, so no two (account, field) pairs give the
    same bytes whatever characters they contain.
    """
    parts = [b"xiaohe.field", account_id.encode("utf-8"), field_name.encode("utf-8")]
    return b"".join(struct.pack("!I", len(p)) + p for p in parts)


class DataKeyCipher:
    """Generates, wraps and uses per-account data keys; seals short-lived payloads."""

    def __init__(
        self,
        keyring: MasterKeySource,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._keyring = keyring
        self._token_bytes = token_bytes

    # -- data keys -----------------------------------------------------------

    def new_data_key(self) -> NewDataKey:
        """A new random data key, with its wrap under the active master key."""
        key = self._random(DATA_KEY_BYTES)
        return NewDataKey(key=key, wrapped=self._wrap(key, self._keyring.active_master_key))

    def unwrap(self, wrapped: WrappedDataKey) -> bytes:
        """The plaintext data key; raises DecryptionError if it cannot be unwrapped."""
        master = self._master_key(wrapped.master_key_id)
        plain = self._open_gcm(master.key, wrapped.wrapped, master.id.encode("ascii"))
        if len(plain) != DATA_KEY_BYTES:
            raise DecryptionError("unwrapped data key has the wrong length")
        return plain

    def wrap(self, data_key: bytes) -> WrappedDataKey:
        """An existing data key wrapped under the active master key (a cancelled deactivation)."""
        _check_data_key(data_key)
        return self._wrap(data_key, self._keyring.active_master_key)

    def rewrap(self, wrapped: WrappedDataKey) -> WrappedDataKey:
        """The same data key wrapped under the active master key (no data is re-encrypted)."""
        active = self._keyring.active_master_key
        if wrapped.master_key_id == active.id:
            return wrapped
        return self._wrap(self.unwrap(wrapped), active)

    # -- fields ----------------------------------------------------------------

    def encrypt_field(self, data_key: bytes, plaintext: str, aad: bytes) -> bytes:
        """Encrypt one field value; blob = version byte + nonce + ciphertext + tag."""
        _check_data_key(data_key)
        header = bytes([_FIELD_VERSION])
        nonce = self._random(NONCE_BYTES)
        sealed = AESGCM(data_key).encrypt(nonce, plaintext.encode("utf-8"), header + aad)
        return header + nonce + sealed

    def decrypt_field(self, data_key: bytes, blob: bytes, aad: bytes) -> str:
        """Decrypt a blob from `encrypt_field`; raises DecryptionError on any mismatch."""
        _check_data_key(data_key)
        if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != _FIELD_VERSION:
            raise DecryptionError("malformed field ciphertext")
        header = blob[:1]
        plain = self._open_gcm(data_key, blob[1:], header + aad)
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError("decrypted field is not valid UTF-8") from None

    def encrypt_bytes(self, data_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt a binary value (a document segment); blob as `encrypt_field`'s."""
        _check_data_key(data_key)
        header = bytes([_FIELD_VERSION])
        nonce = self._random(NONCE_BYTES)
        return header + nonce + AESGCM(data_key).encrypt(nonce, plaintext, header + aad)

    def decrypt_bytes(self, data_key: bytes, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob from `encrypt_bytes`; raises DecryptionError on any mismatch."""
        _check_data_key(data_key)
        if len(blob) < 1 + NONCE_BYTES + TAG_BYTES or blob[0] != _FIELD_VERSION:
            raise DecryptionError("malformed ciphertext")
        return self._open_gcm(data_key, blob[1:], blob[:1] + aad)

    # -- sealed payloads ---------------------------------------------------------

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt under the active master key (named in the blob, so it opens after rotation)."""
        master = self._keyring.active_master_key
        key_id = master.id.encode("ascii")
        header = struct.pack("!BB", _SEAL_VERSION, len(key_id)) + key_id
        nonce = self._random(NONCE_BYTES)
        sealed = AESGCM(master.key).encrypt(nonce, plaintext, _SEAL_DOMAIN + header + aad)
        return header + nonce + sealed

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a blob from `seal` under whichever ring master key it names."""
        key_id, rest = _parse_key_id_header(blob, _SEAL_VERSION)
        header = blob[: len(blob) - len(rest)]
        master = self._master_key(key_id)
        return self._open_gcm(master.key, rest, _SEAL_DOMAIN + header + aad)

    # -- helpers -------------------------------------------------------------------

    def _random(self, n: int) -> bytes:
        value = self._token_bytes(n)
        if len(value) != n:
            raise ValueError("the randomness source returned the wrong number of bytes")
        return value

    def _wrap(self, data_key: bytes, master: MasterKey) -> WrappedDataKey:
        nonce = self._random(NONCE_BYTES)
        sealed = AESGCM(master.key).encrypt(nonce, data_key, master.id.encode("ascii"))
        return WrappedDataKey(master_key_id=master.id, wrapped=nonce + sealed)

    def _master_key(self, key_id: str) -> MasterKey:
        """Look a master key up, re-reading the ring once: another worker may have rotated."""
        try:
            return self._keyring.master_key(key_id)
        except UnknownKeyError:
            pass
        self._keyring.reload()
        try:
            return self._keyring.master_key(key_id)
        except UnknownKeyError:
            raise DecryptionError(
                "ciphertext names a master key that is not in the key ring"
            ) from None

    @staticmethod
    def _open_gcm(key: bytes, nonce_and_sealed: bytes, aad: bytes) -> bytes:
        if len(nonce_and_sealed) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("malformed ciphertext")
        nonce, sealed = nonce_and_sealed[:NONCE_BYTES], nonce_and_sealed[NONCE_BYTES:]
        try:
            return AESGCM(key).decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionError("ciphertext failed authentication") from None


def _check_data_key(data_key: bytes) -> None:
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError("a data key is 32 bytes")


def _parse_key_id_header(blob: bytes, version: int) -> tuple[str, bytes]:
    """Split `version | len | key id | rest`; raises DecryptionError if malformed."""
    if len(blob) < 2 or blob[0] != version:
        raise DecryptionError("malformed ciphertext header")
    end = 2 + blob[1]
    if blob[1] == 0 or len(blob) < end:
        raise DecryptionError("malformed ciphertext header")
    try:
        key_id = blob[2:end].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("malformed ciphertext header") from None
    return key_id, blob[end:]
