"""Identity documents on SQLite and PostgreSQL: encrypted, all-or-nothing, reads audited (D1)."""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.contract.faults import INJECTED, failing_writes, row_counts
from tests.document_samples import MARKER, png_sample
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.clock import FakeClock
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher, DecryptionError
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.errors import NotFound
from xiaohe.identity.server.realname.documents import (
    SEGMENT_BYTES,
    DocumentService,
    FileDocumentStore,
)
from xiaohe.identity.server.realname.sniffing import PNG
from xiaohe.identity.server.storage.database import Database

ACCOUNT = "acc_0123456789abcdef01234567"
REVIEWER = "acc_fedcba9876543210fedcba98"


class AccountKeys:
    """Accounts' data keys as AccountService.data_key gives them (random, per account)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    async def data_key(self, account_id: str) -> bytes:
        """The account's key; NotFound for an account never added."""
        if account_id not in self.keys:
            raise NotFound("account not found")
        return self.keys[account_id]


@dataclass
class Documents:
    service: DocumentService
    store_dir: Path
    audit: AuditLog
    database: Database


@pytest.fixture
async def documents(
    database: Database, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Documents]:
    keyring = KeyRing.load_or_create(tmp_path / "keyring.json", clock)
    keys = AccountKeys()
    keys.keys[ACCOUNT] = secrets.token_bytes(32)
    audit = AuditLog(database, clock, keyring.audit_keys)
    store_dir = tmp_path / "documents"
    service = DocumentService(
        database=database,
        store=FileDocumentStore(store_dir),
        cipher=DataKeyCipher(keyring),
        account_keys=keys,
        blind_index=BlindIndex(keyring.blind_index_key),
        audit=audit,
        clock=clock,
    )
    return Documents(service, store_dir, audit, database)


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


async def _audit_rows(database: Database, action: str) -> list[sa.Row[tuple[object, ...]]]:
    async with database.connect() as conn:
        return list(
            (
                await conn.execute(
                    sa.text(
                        "SELECT actor_account, action, target, outcome FROM audit_log "
                        "WHERE action = :action ORDER BY seq"
                    ),
                    {"action": action},
                )
            ).all()
        )


async def test_a_document_is_stored_encrypted_and_read_back(documents: Documents) -> None:
    """D1: a document is stored encrypted (one 0600 file, one row) and reads back unchanged,
    in chunks as large as asked, across several encrypted segments."""
    content = png_sample(rows=3 * SEGMENT_BYTES // len(MARKER))
    assert len(content) > 2 * SEGMENT_BYTES
    info = await documents.service.store(
        owner=ACCOUNT, kind="id_scan", file_name="身份证正面.png", content_type=PNG, content=content
    )
    assert info.document_id.startswith("doc_")
    files = _files(documents.store_dir)
    assert [f.name for f in files] == [info.document_id]
    assert stat.S_IMODE(os.stat(files[0]).st_mode) == 0o600
    assert MARKER not in files[0].read_bytes()
    stored = await documents.service.info(info.document_id)
    assert stored == info
    assert (stored.owner, stored.kind, stored.content_type, stored.size) == (
        ACCOUNT,
        "id_scan",
        PNG,
        len(content),
    )
    assert stored.file_name == "身份证正面.png"
    read = await documents.service.read(info.document_id, reader=ACCOUNT, why="submission")
    assert read == content
    parts = [
        p
        async for p in documents.service.chunks(
            info.document_id, reader=REVIEWER, why="review:cas_1", chunk_size=1000
        )
    ]
    assert b"".join(parts) == content
    assert max(len(p) for p in parts) == 1000
    assert await documents.service.info("doc_" + "0" * 24) is None
    assert await documents.service.info("not-a-document") is None


async def test_every_read_is_audited_before_the_first_byte(documents: Documents) -> None:
    """D1: every read records who read which document and why, before any byte is returned."""
    info = await documents.service.store(
        owner=ACCOUNT, kind="id_scan", file_name="a.png", content_type=PNG, content=png_sample()
    )
    reader = documents.service.chunks(info.document_id, reader=REVIEWER, why="review:cas_42")
    assert await _audit_rows(documents.database, "document.read") == []
    first = await reader.__anext__()
    assert first
    rows = await _audit_rows(documents.database, "document.read")
    assert [(r.actor_account, r.target, r.outcome) for r in rows] == [
        (REVIEWER, info.document_id, "review:cas_42")
    ]
    await reader.aclose()
    await documents.service.read(info.document_id, reader=ACCOUNT, why="submission")
    rows = await _audit_rows(documents.database, "document.read")
    assert [(r.actor_account, r.outcome) for r in rows] == [
        (REVIEWER, "review:cas_42"),
        (ACCOUNT, "submission"),
    ]
    uploads = await _audit_rows(documents.database, "document.upload")
    assert [r.target for r in uploads] == [info.document_id]
    with pytest.raises(ValueError, match="why"):
        await documents.service.read(info.document_id, reader=ACCOUNT, why="because\nI said so")
    with pytest.raises(LookupError):
        await documents.service.read("doc_" + "0" * 24, reader=ACCOUNT, why="submission")


async def test_a_phone_holders_document_has_its_own_data_key(documents: Documents) -> None:
    """D1: a phone holder's upload (no account) is encrypted under a data key of its own,
    wrapped by the master key; the owner string is `phone:` + the phone's blind index."""
    owner = documents.service.phone_owner("+8613812345678")
    assert owner.startswith("phone:")
    assert len(owner) == len("phone:") + 64
    assert "13812345678" not in owner
    assert documents.service.phone_owner("+8613812345678") == owner
    assert documents.service.phone_owner("+8613987654321") != owner
    with pytest.raises(ValueError, match=r"E\.164"):
        documents.service.phone_owner("13812345678")
    content = png_sample()
    info = await documents.service.store(
        owner=owner, kind="id_scan", file_name="scan.png", content_type=PNG, content=content
    )
    async with documents.database.connect() as conn:
        wrapped = (
            await conn.execute(
                sa.text("SELECT data_key_wrapped FROM documents WHERE document_id = :d"),
                {"d": info.document_id},
            )
        ).scalar_one()
    assert wrapped
    assert (await documents.service.info(info.document_id)) == info
    assert await documents.service.read(info.document_id, reader="", why="recovery") == content


async def test_a_blob_moved_to_another_document_does_not_decrypt(documents: Documents) -> None:
    """D1: each segment is bound to its document, so swapping blobs gives an error, not bytes."""
    a = await documents.service.store(
        owner=ACCOUNT, kind="id_scan", file_name="a.png", content_type=PNG, content=png_sample()
    )
    b = await documents.service.store(
        owner=ACCOUNT, kind="id_scan", file_name="b.png", content_type=PNG, content=png_sample()
    )
    path_a, path_b = documents.store_dir / a.document_id, documents.store_dir / b.document_id
    path_a.write_bytes(path_b.read_bytes())
    with pytest.raises(DecryptionError):
        await documents.service.read(a.document_id, reader=ACCOUNT, why="submission")
    cut = path_b.read_bytes()[:-5]
    path_b.write_bytes(cut)
    with pytest.raises(DecryptionError):
        await documents.service.read(b.document_id, reader=ACCOUNT, why="submission")


@pytest.mark.parametrize("table", ["documents", "audit_log"])
async def test_a_failure_after_the_file_is_written_leaves_nothing(
    documents: Documents, table: str
) -> None:
    """D1: the file and the row are one unit of work: a failure after the file was written
    (the row's insert, the audit record's) leaves neither file nor row."""
    async with failing_writes(documents.database, table):
        with pytest.raises(Exception, match=INJECTED):
            await documents.service.store(
                owner=ACCOUNT,
                kind="id_scan",
                file_name="a.png",
                content_type=PNG,
                content=png_sample(),
            )
    assert _files(documents.store_dir) == []
    assert (await row_counts(documents.database, "documents"))["documents"] == 0


async def test_a_caller_unit_of_work_that_fails_later_removes_the_file(
    documents: Documents,
) -> None:
    """D1: stored inside a flow's unit of work that fails afterwards: no file, no row."""

    class Later(Exception):
        pass

    files_inside: list[Path] = []

    async def store_then_fail() -> None:
        async with documents.database.begin():
            await documents.service.store(
                owner=ACCOUNT,
                kind="id_scan",
                file_name="a.png",
                content_type=PNG,
                content=png_sample(),
            )
            files_inside.extend(_files(documents.store_dir))
            raise Later

    with pytest.raises(Later):
        await store_then_fail()
    assert len(files_inside) == 1
    assert _files(documents.store_dir) == []
    assert (await row_counts(documents.database, "documents"))["documents"] == 0


async def test_a_cancelled_store_leaves_nothing(documents: Documents) -> None:
    """D1: a call cancelled while its file is being written leaves neither file nor row."""
    started = asyncio.Event()
    real_put = documents.service._store.put

    async def slow_put(key: str, blob: bytes) -> None:
        await real_put(key, blob)
        started.set()
        await asyncio.sleep(10)

    documents.service._store.put = slow_put  # type: ignore[method-assign]
    task = asyncio.create_task(
        documents.service.store(
            owner=ACCOUNT, kind="id_scan", file_name="a.png", content_type=PNG, content=png_sample()
        )
    )
    await asyncio.wait_for(started.wait(), 5)
    assert len(_files(documents.store_dir)) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _files(documents.store_dir) == []
    assert (await row_counts(documents.database, "documents"))["documents"] == 0


async def test_an_unknown_account_stores_nothing(documents: Documents) -> None:
    """An owner without a data key is refused before anything is written."""
    with pytest.raises(NotFound):
        await documents.service.store(
            owner="acc_000000000000000000000000",
            kind="id_scan",
            file_name="a.png",
            content_type=PNG,
            content=png_sample(),
        )
    assert _files(documents.store_dir) == []
    with pytest.raises(ValueError, match="kind"):
        await documents.service.store(
            owner=ACCOUNT, kind="selfie", file_name="a.png", content_type=PNG, content=b"x"
        )


async def test_a_shredded_owner_leaves_metadata_but_no_bytes(documents: Documents) -> None:
    """D1, I5: once the owner's data key is gone, the document's bytes and name cannot be
    read; its metadata (kind, type, size) still answers, for the reviewer's listing."""
    info = await documents.service.store(
        owner=ACCOUNT, kind="id_scan", file_name="a.png", content_type=PNG, content=png_sample()
    )
    keys = documents.service._account_keys
    assert isinstance(keys, AccountKeys)
    del keys.keys[ACCOUNT]
    shredded = await documents.service.info(info.document_id)
    assert shredded is not None
    assert (shredded.file_name, shredded.kind, shredded.size) == ("", "id_scan", info.size)
    with pytest.raises(NotFound):
        await documents.service.read(info.document_id, reader=REVIEWER, why="review:cas_1")
