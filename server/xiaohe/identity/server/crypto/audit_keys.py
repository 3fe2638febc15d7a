"""The audit chain's keys, derived from the key ring's audit key with HKDF (RFC 5869).

The key ring file holds one 32-byte `audit_pseudonym_key`. Rather than adding
fields to the file (every worker and backup would need the new format), the
audit chain derives what it needs from it with HKDF-SHA256 (no salt), one
`info` label per purpose:

- `MAC_INFO`: the HMAC-SHA256 key that chains the audit records (audit/log.py);
- `CHECKPOINT_INFO`: the 32-byte seed of the Ed25519 key that signs checkpoints
  of the chain head.

HKDF's extract step means neither derived key equals the root, and distinct labels
make them independent: a leaked MAC key says nothing about the signing key or the
root, and no derived key can be matched against a value keyed by the root itself.
The root is never rotated (that would make the stored chain unverifiable), so the
derived keys and the public key id are stable for the life of the ring.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAC_INFO = b"xiaohe-identity/audit/chain-mac/v1"
CHECKPOINT_INFO = b"xiaohe-identity/audit/checkpoint-ed25519/v1"
KEY_ID_PREFIX = "ack-"
_ROOT_BYTES = 32


def hkdf_sha256(root: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 of `root` with no salt and the given `info` label."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(root)


def checkpoint_key_id(public_key: bytes) -> str:
    """The id of a checkpoint public key: `ack-` and the first 8 bytes of its SHA-256, in hex."""
    return KEY_ID_PREFIX + hashlib.sha256(public_key).digest()[:8].hex()


class AuditKeys:
    """The keyed operations of the audit chain: record MACs and checkpoint signatures."""

    def __init__(self, root: bytes) -> None:
        if len(root) < _ROOT_BYTES:
            raise ValueError(f"the audit root key must be at least {_ROOT_BYTES} bytes")
        self._mac_key = hkdf_sha256(root, MAC_INFO)
        self._signer = Ed25519PrivateKey.from_private_bytes(hkdf_sha256(root, CHECKPOINT_INFO))
        self._public = self._signer.public_key()
        self.public_key: bytes = self._public.public_bytes_raw()
        self.key_id: str = checkpoint_key_id(self.public_key)

    def __repr__(self) -> str:
        return f"AuditKeys(key_id={self.key_id!r}, <keys hidden>)"

    def mac(self, message: bytes) -> str:
        """Hex HMAC-SHA256 of `message` under the chain MAC key."""
        return hmac.new(self._mac_key, message, hashlib.sha256).hexdigest()

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message` under the checkpoint key."""
        return self._signer.sign(message)

    def verify(self, key_id: str, signature: bytes, message: bytes) -> bool:
        """Whether `signature` over `message` is this ring's checkpoint key's, named `key_id`."""
        if not hmac.compare_digest(key_id.encode(), self.key_id.encode()):
            return False
        return _verifies(self._public, signature, message)


def verify_signature(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is a valid Ed25519 signature of `message` under `public_key`."""
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return _verifies(key, signature, message)


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether `signature` is a valid Ed25519 signature of `message` under `key`."""
    try:
        key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
