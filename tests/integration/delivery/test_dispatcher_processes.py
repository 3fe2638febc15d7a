"""Several worker processes dispatch from one database: every message reaches the provider once.

The provider in the workers appends one line per call to a shared file
without any deduplication, so a message claimed by two processes would show up
twice. Runs on SQLite (one shared file, as `make serve` does) and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.schema import outbox as outbox_table

WORKERS = 3

WORKER = r"""
import asyncio, os, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from xiaohe.identity.server.clock import SystemClock
from xiaohe.identity.server.delivery.dispatcher import Dispatcher
from xiaohe.identity.server.storage.database import Database

class Sealer:
    def __init__(self, key):
        self._aead = AESGCM(key)
    def seal(self, plaintext, aad):
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)
    def open(self, blob, aad):
        return self._aead.decrypt(blob[:12], blob[12:], aad)

class CallLog:
    name = "calllog"
    def __init__(self, path):
        self.path = path
    async def send(self, message):
        await asyncio.sleep(0.005)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{message.message_id} {os.getpid()}\n".encode())
        finally:
            os.close(fd)

async def main(url, key_hex, log_path, go_path):
    db = Database.from_url(url)
    provider = CallLog(log_path)
    d = Dispatcher(db, Sealer(bytes.fromhex(key_hex)), {"SMS": provider}, SystemClock(),
                   concurrency=4)
    open(f"{go_path}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(go_path):  # all workers start at the same moment
        await asyncio.sleep(0.005)
    idle = 0
    while idle < 3:
        idle = idle + 1 if await d.run_once(limit=10) == 0 else 0
    await db.close()

asyncio.run(main(*sys.argv[1:]))
"""


class Sealer:
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad)


async def test_worker_processes_send_each_message_once(
    database: Database, database_url: str, tmp_path: Path
) -> None:
    key = AESGCM.generate_key(bit_length=256)
    box = Outbox(database, Sealer(key), SystemClock())
    ids = [
        await box.enqueue("SMS", f"+8613900{i:06d}", "LOGIN", f"验证码：{i:06d}") for i in range(40)
    ]
    log_path, go_path = tmp_path / "calls.log", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [database_url, key.hex(), str(log_path), str(go_path)]
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", WORKER, *args, env=env)
        for _ in range(WORKERS)
    ]

    def ready() -> int:
        return len(list(tmp_path.glob("go.ready.*")))

    for _ in range(3000):  # wait until every worker has imported everything and is ready
        if await asyncio.to_thread(ready) == WORKERS:
            break
        await asyncio.sleep(0.01)
    go_path.touch()
    codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout=60)
    assert codes == [0] * WORKERS

    calls = [line.split() for line in log_path.read_text().splitlines()]
    assert Counter(mid for mid, _ in calls) == Counter(dict.fromkeys(ids, 1))
    assert len({pid for _, pid in calls}) >= 2  # the work really was shared
    async with database.connect() as conn:
        statuses = Counter((await conn.execute(sa.select(outbox_table.c.status))).scalars())
    assert statuses == Counter({"sent": len(ids)})
