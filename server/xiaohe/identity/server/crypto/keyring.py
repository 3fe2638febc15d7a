"""The key ring: every long-lived secret of the server, in one 0600 JSON file.

The ring holds the master keys (which wrap the per-account data keys), the keys
for blind indexes, one-time-code HMACs and audit pseudonyms, and the Ed25519
signing keys for access tokens. Every worker process loads the same file; a
rotation in one process (usually the CLI) is picked up by the others on
`KeyRing.reload()`.

File handling is the security-relevant part:

- The file is created by writing the complete content to a fresh temporary file
  (`O_CREAT | O_EXCL`, mode 0600) and then hard-linking it to the final name.
  `link` fails if the name exists, so when several workers start at once exactly
  one ring wins and the others load it; because the link only ever points at a
  complete, fsynced file, no reader can see a half-written ring (a plain
  `O_EXCL` create of the final name would expose an empty file to the losers).
- Updates (rotations, pruning) take an exclusive `flock` on a sibling lock file,
  re-read the file, change it and `os.replace` a complete temporary file over
  it. Re-reading under the lock means two concurrent rotations cannot lose each
  other's keys: losing a master key would make every data key wrapped under it,
  and so every field encrypted with those, unreadable.
- A file that group or others may access is refused rather than silently
  fixed: it may already have leaked, and the operator has to know.

Master keys are never dropped (data keys wrapped under them would become
unreadable); `DataKeyCipher.rewrap` moves data keys to the active one. The blind
index, code HMAC and audit pseudonym keys are not rotated by master-key rotation:
changing them would orphan every stored index and tag (and the audit chain, whose
MAC and checkpoint keys are derived from the audit pseudonym key: crypto/audit_keys.py).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.audit_keys import AuditKeys

FORMAT_NAME = "xiaohe-identity-keyring"
FORMAT_VERSION = 1
KEY_BYTES = 32
_ID_RANDOM_BYTES = 4
_MASTER_KEY_PREFIX = "mk-"
_SIGNING_KEY_PREFIX = "sk-"
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class KeyRingError(Exception):
    """The key ring file is missing, malformed, insecure, or cannot be written."""


class UnknownKeyError(KeyRingError, KeyError):
    """No key with the requested id is in the ring (it may have been added by another process)."""

    def __str__(self) -> str:
        # KeyError would otherwise render the message with quotes around it.
        return str(self.args[0]) if self.args else "unknown key"


@dataclass(frozen=True)
class MasterKey:
    """A 256-bit AES key that wraps per-account data keys; `id` is stored beside every wrap."""

    id: str
    key: bytes = field(repr=False)
    created_at: float = 0.0


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 token-signing key: `kid` names it in JWT headers, `seed` is the private key.

    A retired key no longer signs but stays published (for tokens it already
    signed) until `drop_after`.
    """

    kid: str
    seed: bytes = field(repr=False)
    created_at: float = 0.0
    retired_at: float | None = None
    drop_after: float | None = None
    public_key: bytes = field(init=False)

    def __post_init__(self) -> None:
        if len(self.seed) != KEY_BYTES:
            raise ValueError("an Ed25519 seed is 32 bytes")
        public = Ed25519PrivateKey.from_private_bytes(self.seed).public_key().public_bytes_raw()
        object.__setattr__(self, "public_key", public)

    def private_key(self) -> Ed25519PrivateKey:
        """The private key object for signing."""
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def is_kept_at(self, now: float) -> bool:
        """Whether the key is still published at `now` (active, or retired within its window)."""
        return self.drop_after is None or now < self.drop_after


@dataclass(frozen=True)
class _RingState:
    """One immutable snapshot of the file; a reload swaps the whole snapshot."""

    master_keys: tuple[MasterKey, ...]
    active_master_key_id: str
    blind_index_key: bytes = field(repr=False)
    code_hmac_key: bytes = field(repr=False)
    audit_pseudonym_key: bytes = field(repr=False)
    signing_keys: tuple[SigningKey, ...]
    active_signing_kid: str

    @cached_property
    def audit_keys(self) -> AuditKeys:
        """The audit chain's keys, derived (HKDF) once per snapshot from its pseudonym key."""
        return AuditKeys(self.audit_pseudonym_key)

    def master_key(self, key_id: str) -> MasterKey | None:
        return next((k for k in self.master_keys if k.id == key_id), None)

    def signing_key(self, kid: str) -> SigningKey | None:
        return next((k for k in self.signing_keys if k.kid == kid), None)

    def staged_signing_key(self) -> SigningKey | None:
        """The key that is neither active nor retired: published, signing nothing yet."""
        waiting = (k for k in self.signing_keys if k.retired_at is None)
        return next((k for k in waiting if k.kid != self.active_signing_kid), None)


class KeyRing:
    """Key material of the server, backed by a 0600 JSON file shared by all workers.

    Build it with `load_or_create`; the constructor takes an already validated snapshot.
    """

    def __init__(
        self,
        path: Path,
        clock: Clock,
        state: _RingState,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._path = path
        self._clock = clock
        self._state = state
        self._token_bytes = token_bytes

    @classmethod
    def load_or_create(
        cls,
        path: Path,
        clock: Clock,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> KeyRing:
        """Load the ring at `path`, creating it with fresh keys if absent (safe under races)."""
        path = Path(path)
        try:
            state = _read_state(path)
        except FileNotFoundError:
            created = cls._create_new(path, clock, token_bytes)
            if created is not None:
                return created
            # Another process won the race: its complete file is in place, load it.
            state = _read_state(path)
        return cls(path, clock, state, token_bytes)

    @classmethod
    def load(cls, path: Path, clock: Clock) -> KeyRing:
        """Load the ring at `path`; KeyRingError if it does not exist (nothing is created)."""
        path = Path(path)
        try:
            state = _read_state(path)
        except FileNotFoundError:
            raise KeyRingError(
                f"key ring file {path} does not exist; create it once with "
                "`xiaohe-identity keys init` and give every replica the same file"
            ) from None
        return cls(path, clock, state)

    @classmethod
    def create(
        cls,
        path: Path,
        clock: Clock,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> KeyRing:
        """Create a new ring with fresh keys at `path`; KeyRingError if a file is there already."""
        path = Path(path)
        created = cls._create_new(path, clock, token_bytes)
        if created is None:
            raise KeyRingError(f"key ring file {path} exists already; it was left as it is")
        return created

    @classmethod
    def _create_new(
        cls, path: Path, clock: Clock, token_bytes: Callable[[int], bytes]
    ) -> KeyRing | None:
        """A ring with fresh keys published at `path`, or None if a file is there already."""
        path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        fresh = _new_state(clock.now(), token_bytes)
        if not _publish_new(path, _encode_state(fresh)):
            return None
        return cls(path, clock, fresh, token_bytes)

    @property
    def path(self) -> Path:
        """Where the ring is stored."""
        return self._path

    def reload(self) -> None:
        """Re-read the file, picking up rotations made by other processes."""
        try:
            self._state = _read_state(self._path)
        except FileNotFoundError as exc:
            raise KeyRingError(f"key ring file {self._path} has disappeared") from exc

    # -- master keys ---------------------------------------------------------

    @property
    def active_master_key(self) -> MasterKey:
        """The master key that wraps new data keys."""
        key = self._state.master_key(self._state.active_master_key_id)
        assert key is not None  # validated on load
        return key

    @property
    def master_keys(self) -> list[MasterKey]:
        """All master keys, oldest first (old ones are kept for unwrapping)."""
        return list(self._state.master_keys)

    def master_key(self, key_id: str) -> MasterKey:
        """The master key named `key_id`; raises UnknownKeyError if this ring has none."""
        key = self._state.master_key(key_id)
        if key is None:
            raise UnknownKeyError(f"no master key with id {key_id!r} in the key ring")
        return key

    def rotate_master_key(self, *, activate: bool = True) -> MasterKey:
        """Add a new master key and persist; old keys stay for unwrapping. Returns the new key.

        With `activate=False` the key is only staged: every holder of this ring can
        unwrap under it, but nothing is wrapped under it until `activate_newest_master_key`.
        A ring copied to many processes is rotated that way, so that no process meets a
        data key wrapped under a key its copy lacks.
        """
        created: list[MasterKey] = []

        def change(state: _RingState, now: float) -> _RingState:
            used = {k.id for k in state.master_keys}
            new = MasterKey(
                id=_new_id(_MASTER_KEY_PREFIX, used, self._token_bytes),
                key=_random_key(self._token_bytes),
                created_at=now,
            )
            created.append(new)
            active = new.id if activate else state.active_master_key_id
            return replace(
                state, master_keys=(*state.master_keys, new), active_master_key_id=active
            )

        self._update(change)
        return created[-1]

    def activate_newest_master_key(self) -> MasterKey:
        """Make the newest master key the active one (a staged rotation's second step)."""

        def change(state: _RingState, now: float) -> _RingState:
            return replace(state, active_master_key_id=state.master_keys[-1].id)

        self._update(change)
        return self.active_master_key

    # -- other symmetric keys ----------------------------------------------

    @property
    def blind_index_key(self) -> bytes:
        """HMAC key for blind indexes of identifiers (never rotated with the master key)."""
        return self._state.blind_index_key

    @property
    def code_hmac_key(self) -> bytes:
        """HMAC key for hashing one-time codes and deriving pseudonymous Redis key tags."""
        return self._state.code_hmac_key

    @property
    def audit_pseudonym_key(self) -> bytes:
        """HMAC key for pseudonymous audit-log targets."""
        return self._state.audit_pseudonym_key

    @property
    def audit_keys(self) -> AuditKeys:
        """The audit chain's MAC and checkpoint keys, derived from the audit pseudonym key."""
        return self._state.audit_keys

    # -- signing keys --------------------------------------------------------

    @property
    def active_signing_key(self) -> SigningKey:
        """The key that signs new tokens."""
        key = self._state.signing_key(self._state.active_signing_kid)
        assert key is not None  # validated on load
        return key

    @property
    def signing_keys(self) -> list[SigningKey]:
        """The active key first, then the staged key and the retired keys still within their
        keep window, newest first: every key a token may carry, published."""
        now = self._clock.now()
        active = self.active_signing_key
        retired = sorted(
            (k for k in self._state.signing_keys if k.kid != active.kid and k.is_kept_at(now)),
            key=lambda k: k.created_at,
            reverse=True,
        )
        return [active, *retired]

    def signing_key(self, kid: str) -> SigningKey:
        """The kept signing key named `kid`; raises UnknownKeyError if none."""
        for key in self.signing_keys:
            if key.kid == kid:
                return key
        raise UnknownKeyError(f"no signing key with kid {kid!r} in the key ring")

    def public_keys(self) -> dict[str, bytes]:
        """Raw 32-byte Ed25519 public keys of all kept signing keys, by kid."""
        return {k.kid: k.public_key for k in self.signing_keys}

    @property
    def staged_signing_key(self) -> SigningKey | None:
        """The next signing key, published but not signing yet (`rotate_signing_key(activate=
        False)`), or None."""
        return self._state.staged_signing_key()

    def rotate_signing_key(self, keep_retired_for: float, *, activate: bool = True) -> SigningKey:
        """Stage or activate the next signing key; the key that signs now stays published for
        `keep_retired_for` s once it retires.

        With `activate=False` the next key is added and published (JWKS, ValidateToken) but
        signs nothing yet: every replica and every gateway's JWKS cache can learn it before
        the first token it signs. A key already staged is kept (and returned). With
        `activate=True` the staged key, or a new one if none is staged, becomes the active
        key, and the previous active key retires. The keep window should exceed the
        access-token lifetime so tokens signed just before the rotation still verify.
        Retired keys past their window are dropped from the file in the same update.
        Returns the staged key (`activate=False`) or the active one.
        """
        if keep_retired_for < 0:
            raise ValueError("keep_retired_for must not be negative")

        def change(state: _RingState, now: float) -> _RingState:
            staged = state.staged_signing_key()
            if not activate and staged is not None:
                return state
            following = staged or SigningKey(
                kid=_new_id(
                    _SIGNING_KEY_PREFIX, {k.kid for k in state.signing_keys}, self._token_bytes
                ),
                seed=_random_key(self._token_bytes),
                created_at=now,
            )
            kept: list[SigningKey] = []
            for key in state.signing_keys:
                if key.kid == following.kid:
                    continue
                if key.kid == state.active_signing_kid and activate:
                    kept.append(replace(key, retired_at=now, drop_after=now + keep_retired_for))
                elif key.is_kept_at(now):
                    kept.append(key)
            active = following.kid if activate else state.active_signing_kid
            return replace(state, signing_keys=(*kept, following), active_signing_kid=active)

        self._update(change)
        if activate:
            return self.active_signing_key
        staged = self.staged_signing_key
        assert staged is not None  # just written
        return staged

    def prune_signing_keys(self) -> None:
        """Drop retired signing keys whose keep window has passed, and persist."""

        def change(state: _RingState, now: float) -> _RingState:
            kept = tuple(k for k in state.signing_keys if k.is_kept_at(now))
            return replace(state, signing_keys=kept)

        self._update(change)

    # -- persistence -----------------------------------------------------------

    def _update(self, change: Callable[[_RingState, float], _RingState]) -> None:
        """Apply `change` to the file's current content under an exclusive lock, then persist."""
        with _exclusive_lock(self._path):
            try:
                current = _read_state(self._path)
            except FileNotFoundError as exc:
                raise KeyRingError(f"key ring file {self._path} has disappeared") from exc
            new = change(current, self._clock.now())
            _validate(new)
            _replace_file(self._path, _encode_state(new))
            self._state = new


# -- creation ------------------------------------------------------------------


def _random_key(token_bytes: Callable[[int], bytes]) -> bytes:
    key = token_bytes(KEY_BYTES)
    if len(key) != KEY_BYTES:
        raise KeyRingError("the randomness source returned a key of the wrong length")
    return key


def _new_id(prefix: str, used: set[str], token_bytes: Callable[[int], bytes]) -> str:
    for _ in range(100):
        candidate = prefix + token_bytes(_ID_RANDOM_BYTES).hex()
        if candidate not in used:
            return candidate
    raise KeyRingError("could not generate a unique key id")


def _new_state(now: float, token_bytes: Callable[[int], bytes]) -> _RingState:
    master = MasterKey(
        id=_new_id(_MASTER_KEY_PREFIX, set(), token_bytes),
        key=_random_key(token_bytes),
        created_at=now,
    )
    signing = SigningKey(
        kid=_new_id(_SIGNING_KEY_PREFIX, set(), token_bytes),
        seed=_random_key(token_bytes),
        created_at=now,
    )
    return _RingState(
        master_keys=(master,),
        active_master_key_id=master.id,
        blind_index_key=_random_key(token_bytes),
        code_hmac_key=_random_key(token_bytes),
        audit_pseudonym_key=_random_key(token_bytes),
        signing_keys=(signing,),
        active_signing_kid=signing.kid,
    )


# -- file I/O --------------------------------------------------------------------


def _check_mode(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise KeyRingError(f"key ring {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyRingError(
            f"key ring file {path} is accessible by group or others (mode {mode:04o}); "
            f"it may have leaked: rotate its keys if so, then `chmod 600 {path}`"
        )


def _read_state(path: Path) -> _RingState:
    """Read and validate the file; FileNotFoundError passes through for the caller."""
    # Symlinks are followed (secret mounts use them); the mode check is on the target.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        _check_mode(path, os.fstat(f.fileno()))
        raw = f.read()
    return _decode_state(path, raw)


def _write_temp(path: Path, data: bytes) -> Path:
    """Write `data` to a new 0600 temporary file beside `path`, fsynced; return its path."""
    # The name only has to be unique, not secret; it does not use the injected source
    # so that tests with a deterministic source cannot collide across processes.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(
        tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE
    )
    try:
        os.fchmod(fd, _FILE_MODE)  # independent of the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_new(path: Path, data: bytes) -> bool:
    """Atomically create `path` with `data`; False if it already exists (another process won)."""
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def _replace_file(path: Path, data: bytes) -> None:
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (not on the ring itself, which gets replaced)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, _FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# -- encoding --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_state(state: _RingState) -> bytes:
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "active_master_key_id": state.active_master_key_id,
        "master_keys": [
            {"id": k.id, "key": _b64(k.key), "created_at": k.created_at} for k in state.master_keys
        ],
        "blind_index_key": _b64(state.blind_index_key),
        "code_hmac_key": _b64(state.code_hmac_key),
        "audit_pseudonym_key": _b64(state.audit_pseudonym_key),
        "active_signing_kid": state.active_signing_kid,
        "signing_keys": [
            {
                "kid": k.kid,
                "seed": _b64(k.seed),
                "created_at": k.created_at,
                "retired_at": k.retired_at,
                "drop_after": k.drop_after,
            }
            for k in state.signing_keys
        ],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


class _Malformed(Exception):
    """Internal: a field of the file is missing or of the wrong type."""


def _get(doc: dict[str, Any], name: str, kind: type[Any]) -> Any:
    value = doc.get(name)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Malformed(name)
        return float(value)
    if not isinstance(value, kind):
        raise _Malformed(name)
    return value


def _get_optional_time(doc: dict[str, Any], name: str) -> float | None:
    return None if doc.get(name) is None else _get(doc, name, float)


def _get_key(doc: dict[str, Any], name: str) -> bytes:
    try:
        key = base64.b64decode(_get(doc, name, str), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _Malformed(name) from exc
    if len(key) != KEY_BYTES:
        raise _Malformed(name)
    return key


def _get_objects(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    items = _get(doc, name, list)
    if not all(isinstance(item, dict) for item in items):
        raise _Malformed(name)
    return items  # type: ignore[no-any-return]


def _decode_state(path: Path, raw: bytes) -> _RingState:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise KeyRingError(f"key ring file {path} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise KeyRingError(f"{path} is not a Xiaohe Identity key ring")
    if doc.get("version") != FORMAT_VERSION:
        raise KeyRingError(f"key ring file {path} has unsupported version {doc.get('version')!r}")
    try:
        state = _RingState(
            master_keys=tuple(
                MasterKey(
                    id=_get(item, "id", str),
                    key=_get_key(item, "key"),
                    created_at=_get(item, "created_at", float),
                )
                for item in _get_objects(doc, "master_keys")
            ),
            active_master_key_id=_get(doc, "active_master_key_id", str),
            blind_index_key=_get_key(doc, "blind_index_key"),
            code_hmac_key=_get_key(doc, "code_hmac_key"),
            audit_pseudonym_key=_get_key(doc, "audit_pseudonym_key"),
            signing_keys=tuple(
                SigningKey(
                    kid=_get(item, "kid", str),
                    seed=_get_key(item, "seed"),
                    created_at=_get(item, "created_at", float),
                    retired_at=_get_optional_time(item, "retired_at"),
                    drop_after=_get_optional_time(item, "drop_after"),
                )
                for item in _get_objects(doc, "signing_keys")
            ),
            active_signing_kid=_get(doc, "active_signing_kid", str),
        )
    except _Malformed as exc:
        raise KeyRingError(
            f"key ring file {path}: field {exc.args[0]!r} is missing or invalid"
        ) from None
    try:
        _validate(state)
    except KeyRingError as exc:
        raise KeyRingError(f"key ring file {path}: {exc}") from None
    return state


def _validate(state: _RingState) -> None:
    """Check the invariants every snapshot must hold."""
    master_ids = [k.id for k in state.master_keys]
    if len(set(master_ids)) != len(master_ids):
        raise KeyRingError("duplicate master key ids")
    if state.active_master_key_id not in master_ids:
        raise KeyRingError("the active master key is missing")
    kids = [k.kid for k in state.signing_keys]
    if len(set(kids)) != len(kids):
        raise KeyRingError("duplicate signing key ids")
    active = state.signing_key(state.active_signing_kid)
    if active is None:
        raise KeyRingError("the active signing key is missing")
    if active.retired_at is not None or active.drop_after is not None:
        raise KeyRingError("the active signing key is marked retired")
    staged = 0
    for key in state.signing_keys:
        if key.kid == active.kid:
            continue
        if key.retired_at is None and key.drop_after is None:
            staged += 1
        elif key.retired_at is None or key.drop_after is None:
            raise KeyRingError("a retired signing key needs both its retirement and drop times")
    if staged > 1:
        raise KeyRingError("more than one signing key is staged")
    distinct = {state.blind_index_key, state.code_hmac_key, state.audit_pseudonym_key}
    if len(distinct) != 3:
        raise KeyRingError("the blind index, code HMAC and pseudonym keys must differ")
