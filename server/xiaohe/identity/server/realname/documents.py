"""Identity documents: stored encrypted, read only with an audit record (SECURITY.md D1, I1).

A document (an ID scan, a business licence, a publicity-system screenshot) is
the most sensitive thing the service holds, so:

- Its bytes are encrypted before they leave the process, in segments of
  `SEGMENT_BYTES` with AES-256-GCM under the owner's data key: the account's
  own data key for an account (deleting that key crypto-shreds the document
  with the rest of the account), or for a phone holder without an account (an
  upload made with a phone ticket) a data key of the document's own, wrapped
  under the master key and kept in the document's row. Each segment's
  associated data names the document, the segment's index and whether it is
  the last one, so segments cannot be reordered, dropped, cut off at the end or
  moved to another document without decryption failing.
- The encrypted blob goes to a `DocumentStore` (put/get/delete of opaque blobs
  by key): files in the data directory by default (`FileDocumentStore`), an
  object store later. Its metadata row (owner, kind, type, size, encrypted file
  name) is in SQL. The blob is written inside the caller's unit of work and
  removed again if that rolls back (`Database.on_rollback`), so a failure or a
  cancelled call leaves neither the file nor the row.
- Every read (`read`, `chunks`) records an audit entry naming who read it and
  why, before the first byte is decrypted. Deciding *whether* someone may read
  a document is the caller's: the owner's flows, or the reviewer of a case
  that references it (flows/review).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import sqlalchemy as sa

from xiaohe.identity.server.clock import Clock
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import (
    DataKeyCipher,
    DecryptionError,
    WrappedDataKey,
    field_aad,
)
from xiaohe.identity.server.errors import NotFound
from xiaohe.identity.server.storage.database import SqlConnection, epoch, translate_errors, utc
from xiaohe.identity.server.storage.schema import documents

DOCUMENT_KINDS: Final = (
    "id_scan",
    "business_licence",
    "publicity_screenshot",
    "representative_id_scan",
)
"""What a document shows (the proto's DocumentKind, lower case without its prefix)."""

PHONE_OWNER_PREFIX: Final = "phone:"
"""Owner strings of phone holders: `phone:` + the phone's blind index (hex)."""

SEGMENT_BYTES: Final = 65536
"""Plaintext bytes per encrypted segment: a read decrypts one segment at a time."""

READ_ACTION: Final = "document.read"
STORE_ACTION: Final = "document.upload"

_ID_PREFIX: Final = "doc_"
_ID_BYTES: Final = 12
_BLOB_MAGIC: Final = b"XHD1"
_LENGTH = struct.Struct("!I")
_WHY = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/#-]{0,49}")
_STORAGE_KEY = re.compile(r"[A-Za-z0-9_-]{1,120}")
_TEMPORARY = re.compile(r"\.[A-Za-z0-9_-]{1,120}\.[0-9a-f]{16}\.tmp")
_FILE_MODE: Final = 0o600


@dataclass(frozen=True)
class DocumentInfo:
    """A stored document's metadata (never its bytes)."""

    document_id: str
    owner: str
    """The account id, or `phone:<hex blind index>` for an upload made with a phone ticket."""
    kind: str
    """`id_scan` | `business_licence` | `publicity_screenshot` | `representative_id_scan`."""
    content_type: str
    """`image/jpeg` | `image/png` | `application/pdf`, as sniffed."""
    size: int
    """Plaintext bytes, after metadata was stripped."""
    file_name: str
    created_at: float
    """Epoch seconds."""


class DocumentStore(Protocol):
    """Where encrypted document blobs live: opaque bytes by key."""

    async def put(self, key: str, blob: bytes) -> None:
        """Store `blob` under `key` (a new key; written atomically)."""
        ...

    async def get(self, key: str) -> bytes:
        """The blob under `key`; raises FileNotFoundError if there is none."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob under `key`; nothing if there is none."""
        ...


class FileDocumentStore:
    """Blobs as files in one directory: written to a temporary file, fsynced, renamed; 0600."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def __repr__(self) -> str:
        return f"FileDocumentStore({str(self._dir)!r})"

    def _path(self, key: str) -> Path:
        if not _STORAGE_KEY.fullmatch(key):
            raise ValueError("a document storage key is 1-120 characters of [A-Za-z0-9_-]")
        return self._dir / key

    async def put(self, key: str, blob: bytes) -> None:
        """Write `blob` to `<dir>/<key>` atomically (temporary file, fsync, rename)."""
        await asyncio.to_thread(self._put, self._path(key), blob)

    async def get(self, key: str) -> bytes:
        """The content of `<dir>/<key>`."""
        return await asyncio.to_thread(self._path(key).read_bytes)

    async def delete(self, key: str) -> None:
        """Remove `<dir>/<key>` if it exists."""
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    # -- issue 14: retention (realname/retention.OrphanDocumentFiles) --

    async def stale_files(self, older_than: float) -> list[str]:
        """Names of blobs and left-over temporary files last written before `older_than`."""
        return await asyncio.to_thread(self._stale_files, older_than)

    async def discard(self, name: str) -> None:
        """Remove a blob or a left-over temporary file `stale_files` named; nothing if gone."""
        if not (_STORAGE_KEY.fullmatch(name) or _TEMPORARY.fullmatch(name)):
            raise ValueError("not a document blob or temporary file name")
        with contextlib.suppress(FileNotFoundError):
            (self._dir / name).unlink()

    def _stale_files(self, older_than: float) -> list[str]:
        names = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._dir):
                if not entry.is_file(follow_symlinks=False):
                    continue
                if not (_STORAGE_KEY.fullmatch(entry.name) or _TEMPORARY.fullmatch(entry.name)):
                    continue
                if entry.stat(follow_symlinks=False).st_mtime < older_than:
                    names.append(entry.name)
        return sorted(names)

    # -- end retention --

    def _put(self, path: Path, blob: bytes) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, _FILE_MODE)
        try:
            os.fchmod(fd, _FILE_MODE)  # independent of the umask
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self._dir, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class AccountDataKeys(Protocol):
    """An account's data key (accounts.AccountService.data_key)."""

    async def data_key(self, account_id: str) -> bytes:
        """The account's unwrapped data key; raises NotFound for an unknown account."""
        ...


class DocumentAudit(Protocol):
    """The audit log, with the acting account given explicitly (`audit.log.AuditLog`)."""

    async def record(
        self, action: str, target: str, outcome: str, *, actor_account: str | None = None
    ) -> object:
        """Append one audit record."""
        ...


class DocumentDatabase(Protocol):
    """The unit of work as documents need it: `Database` (begin, connect, on_rollback)."""

    def begin(self) -> AbstractAsyncContextManager[SqlConnection]:
        """Open (or join) the use case's transaction."""
        ...

    def connect(self) -> AbstractAsyncContextManager[SqlConnection]:
        """A connection for reads."""
        ...

    def on_rollback(self, work: Callable[[], Awaitable[object] | object]) -> None:
        """Run `work` if the open unit of work rolls back."""
        ...


class DocumentService:
    """Stores identity documents encrypted and reads them back, auditing every read."""

    def __init__(
        self,
        *,
        database: DocumentDatabase,
        store: DocumentStore,
        cipher: DataKeyCipher,
        account_keys: AccountDataKeys,
        blind_index: BlindIndex,
        audit: DocumentAudit,
        clock: Clock,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self._db = database
        self._store = store
        self._cipher = cipher
        self._account_keys = account_keys
        self._blind = blind_index
        self._audit = audit
        self._clock = clock
        self._token_bytes = token_bytes

    def __repr__(self) -> str:
        return "DocumentService()"

    def phone_owner(self, phone: str) -> str:
        """The owner string of a phone's holder: `phone:` + the E.164 phone's blind index.

        The index is the one accounts keep for phones (kind `phone`), so a reviewer's
        flow can match a holder's documents with the phone a request names.
        """
        if not phone.startswith("+") or not phone[1:].isdigit():
            raise ValueError("phone_owner takes a normalised E.164 phone number")
        return PHONE_OWNER_PREFIX + self._blind.compute("phone", phone)

    async def store(
        self, *, owner: str, kind: str, file_name: str, content_type: str, content: bytes
    ) -> DocumentInfo:
        """Encrypt and store a sniffed, stripped document for `owner`; returns its info.

        Joins the caller's unit of work: the blob is written first and removed if
        the transaction rolls back; the row and an audit record (`document.upload`)
        commit with the caller's other changes.
        """
        if kind not in DOCUMENT_KINDS:
            raise ValueError("unknown document kind")
        document_id = self._new_id()
        wrapped: bytes | None = None
        if owner.startswith(PHONE_OWNER_PREFIX):
            new_key = self._cipher.new_data_key()
            key, wrapped = new_key.key, new_key.wrapped.to_bytes()
        else:
            key = await self._account_keys.data_key(owner)
        blob = self._encrypt(key, document_id, content)
        name_enc = self._cipher.encrypt_field(key, file_name, field_aad(document_id, "file_name"))
        now = self._clock.now()
        storage_key = document_id
        async with self._db.begin() as conn:
            self._db.on_rollback(lambda: self._store.delete(storage_key))
            await self._store.put(storage_key, blob)
            with translate_errors():
                await conn.execute(
                    documents.insert().values(
                        document_id=document_id,
                        owner=owner,
                        kind=kind,
                        content_type=content_type,
                        size=len(content),
                        file_name_enc=name_enc,
                        storage_key=storage_key,
                        data_key_wrapped=wrapped,
                        created_at=utc(now),
                    )
                )
            await self._audit.record(STORE_ACTION, document_id, "ok")
        return DocumentInfo(
            document_id=document_id,
            owner=owner,
            kind=kind,
            content_type=content_type,
            size=len(content),
            file_name=file_name,
            created_at=now,
        )

    async def info(self, document_id: str) -> DocumentInfo | None:
        """The document's metadata, or None if there is no such document.

        The file name is "" when the owner's data key is gone (an anonymised account).
        """
        row = await self._row(document_id)
        if row is None:
            return None
        try:
            key = await self._key(row)
            name = self._cipher.decrypt_field(
                key, bytes(row.file_name_enc), field_aad(document_id, "file_name")
            )
        except (DecryptionError, NotFound):
            name = ""  # the owner's key is gone (crypto-shredded): the metadata still holds
        return DocumentInfo(
            document_id=document_id,
            owner=str(row.owner),
            kind=str(row.kind),
            content_type=str(row.content_type),
            size=int(row.size),
            file_name=name,
            created_at=epoch(row.created_at),
        )

    async def owned_by(self, owner: str) -> list[DocumentInfo]:
        """The documents of `owner` (an account id), oldest first (issue 14: export)."""
        query = (
            sa.select(documents.c.document_id)
            .where(documents.c.owner == owner)
            .order_by(documents.c.created_at, documents.c.document_id)
        )
        async with self._db.connect() as conn:
            with translate_errors():
                ids = [str(r.document_id) for r in (await conn.execute(query)).all()]
        found = [await self.info(document_id) for document_id in ids]
        return [info for info in found if info is not None]

    async def chunks(
        self, document_id: str, *, reader: str, why: str, chunk_size: int = 65536
    ) -> AsyncIterator[bytes]:
        """The decrypted bytes in pieces of at most `chunk_size`; the read is audited first.

        The audit record (action `document.read`, target the document id, acting
        account `reader`, outcome `why`) is committed before the first byte is
        decrypted; `why` is a short reason such as `review:cas_...` or `submission` (1-50
        characters: letters, digits, space and `_.:/#-`; never personal data).
        Raises LookupError for an unknown document.
        """
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if not _WHY.fullmatch(why):
            raise ValueError("why is 1-50 characters: letters, digits, space and _.:/#-")
        row = await self._row(document_id)
        if row is None:
            raise LookupError("no such document")
        await self._audit.record(READ_ACTION, document_id, why, actor_account=reader)
        key = await self._key(row)
        blob = await self._store.get(str(row.storage_key))
        for segment in self._decrypt(key, document_id, blob):
            for start in range(0, len(segment), chunk_size):
                yield segment[start : start + chunk_size]

    async def read(self, document_id: str, *, reader: str, why: str) -> bytes:
        """The whole decrypted document; audited like `chunks`."""
        return b"".join([part async for part in self.chunks(document_id, reader=reader, why=why)])

    # -- helpers ---------------------------------------------------------------------

    def _new_id(self) -> str:
        raw = self._token_bytes(_ID_BYTES)
        if len(raw) != _ID_BYTES:
            raise ValueError("the randomness source returned the wrong number of bytes")
        return _ID_PREFIX + raw.hex()

    async def _row(self, document_id: str) -> sa.Row[tuple[object, ...]] | None:
        if not document_id.startswith(_ID_PREFIX) or len(document_id) > 40:
            return None
        query = sa.select(documents).where(documents.c.document_id == document_id)
        async with self._db.connect() as conn:
            with translate_errors():
                return (await conn.execute(query)).first()

    # -- issue 14: deactivation --

    async def forget_owner(self, owner: str) -> list[str]:
        """Delete the metadata rows of `owner`'s documents, in the caller's unit of work, and
        return their storage keys: the caller removes the bytes once that commits (they are
        under the owner's data key, unreadable once it is destroyed either way)."""
        async with self._db.begin() as conn:
            with translate_errors():
                rows = (
                    await conn.execute(
                        sa.select(documents.c.storage_key).where(documents.c.owner == owner)
                    )
                ).all()
                await conn.execute(documents.delete().where(documents.c.owner == owner))
        return [str(r.storage_key) for r in rows]

    async def forget_held_by_phones(self, document_ids: list[str]) -> list[str]:
        """Delete the rows of those documents that a phone's holder uploaded (for a review
        case), in the caller's unit of work; returns their storage keys. Documents owned
        by accounts are left to their owners."""
        if not document_ids:
            return []
        held = sa.and_(
            documents.c.document_id.in_(document_ids),
            documents.c.owner.startswith(PHONE_OWNER_PREFIX, autoescape=True),
        )
        async with self._db.begin() as conn:
            with translate_errors():
                rows = (await conn.execute(sa.select(documents.c.storage_key).where(held))).all()
                await conn.execute(documents.delete().where(held))
        return [str(r.storage_key) for r in rows]

    async def delete_stored(self, storage_keys: list[str]) -> None:
        """Remove stored document bytes (after the rows naming them are gone)."""
        for key in storage_keys:
            await self._store.delete(key)

    # -- end deactivation --

    async def _key(self, row: sa.Row[tuple[object, ...]]) -> bytes:
        if row.data_key_wrapped is not None:
            return self._cipher.unwrap(WrappedDataKey.from_bytes(bytes(row.data_key_wrapped)))
        return await self._account_keys.data_key(str(row.owner))

    def _encrypt(self, key: bytes, document_id: str, content: bytes) -> bytes:
        """`XHD1`, then per segment: its length (4 bytes) and its AES-GCM blob."""
        out = bytearray(_BLOB_MAGIC)
        starts = range(0, max(len(content), 1), SEGMENT_BYTES)
        last = len(starts) - 1
        for index, start in enumerate(starts):
            part = content[start : start + SEGMENT_BYTES]
            sealed = self._cipher.encrypt_bytes(
                key, part, _segment_aad(document_id, index, index == last)
            )
            out += _LENGTH.pack(len(sealed)) + sealed
        return bytes(out)

    def _decrypt(self, key: bytes, document_id: str, blob: bytes) -> Iterator[bytes]:
        """The plaintext segments in order, each decrypted only when it is reached."""
        if not blob.startswith(_BLOB_MAGIC):
            raise DecryptionError("not a document blob")
        segments: list[tuple[int, int]] = []
        pos = len(_BLOB_MAGIC)
        while pos < len(blob):
            if pos + _LENGTH.size > len(blob):
                raise DecryptionError("truncated document blob")
            (length,) = _LENGTH.unpack_from(blob, pos)
            pos += _LENGTH.size
            if pos + length > len(blob):
                raise DecryptionError("truncated document blob")
            segments.append((pos, length))
            pos += length
        if not segments:
            raise DecryptionError("empty document blob")
        last = len(segments) - 1
        for i, (start, length) in enumerate(segments):
            aad = _segment_aad(document_id, i, i == last)
            yield self._cipher.decrypt_bytes(key, blob[start : start + length], aad)


def _segment_aad(document_id: str, index: int, last: bool) -> bytes:
    return field_aad(document_id, "document") + struct.pack("!I?", index, last)
