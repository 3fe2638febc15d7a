"""`make bench`: Xiaohe Identity's throughput as ratios against baselines measured in the same run.

Each line reads `<measured>: <n>/s; baseline <name>: <m>/s; ratio <r>`. The
server under test runs in-process on loopback over the embedded stores (SQLite
and the embedded redis-server), exactly as `make serve` would run one worker;
the baselines use the same client shape and concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import tempfile
from pathlib import Path

import grpc

from benchmarks.harness import Rate, echo_rate, line, measure_async
from xiaohe.identity.server.app import start_server
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.container import Container
from xiaohe.identity.server.delivery.templates import render_code_message
from xiaohe.identity.server.storage.embedded_redis import EmbeddedRedis
from xiaohe.identity.server.storage.migrate import upgrade_async
from xiaohe.identity.v1 import codes_pb2, codes_pb2_grpc, common_pb2

BENCH_CODE = "246810"


def bench_settings(data_dir: Path) -> Settings:
    """The defaults, with the per-client budget lifted: the benchmark measures work, not limits."""
    return dataclasses.replace(
        Settings(listen="127.0.0.1:0", data_dir=data_dir), code_per_client_minute=10**9
    )


async def code_pairs(data_dir: Path, redis_url: str, concurrency: int, seconds: float) -> Rate:
    """IssueCode + VerifyCode pairs per second, each pair for a fresh phone number."""
    settings = bench_settings(data_dir)
    await upgrade_async(settings.effective_database_url)
    container = Container(settings, redis_url=redis_url)
    # The code generator is the one thing replaced: a known code lets the client verify
    # without reading the outbox. Everything else is the real issue and verify path.
    container.__dict__["codes"] = CodeService(
        redis=container.redis,
        policy=container.code_policy,
        hmac_key=container.keyring.code_hmac_key,
        clock=container.clock,
        queue=container.outbox,
        compose=render_code_message,
        random_digits=lambda: BENCH_CODE,
        metrics=container.metrics,
        audit=container.audit,
    )
    running = await start_server(container, settings.listen)
    client, secret = await container.clients.create("bench", ["codes", "forward-end-user"])
    credentials = (("x-client-id", client.client_id), ("x-client-secret", secret))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    stub = codes_pb2_grpc.CodeServiceStub(channel)

    async def pair(i: int) -> None:
        phone = f"+86139{i % 100_000_000:08d}"
        # A front end forwarding many users: each pair comes from its own end-user address.
        metadata = (*credentials, ("x-end-user-ip", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"))
        common = {
            "channel": common_pb2.CHANNEL_SMS,
            "destination": phone,
            "purpose": common_pb2.PURPOSE_REGISTER,
        }
        await stub.IssueCode(codes_pb2.IssueCodeRequest(**common), metadata=metadata)
        await stub.VerifyCode(
            codes_pb2.VerifyCodeRequest(**common, code=BENCH_CODE), metadata=metadata
        )

    try:
        return await measure_async(
            "code issue+verify", pair, concurrency=concurrency, seconds=seconds
        )
    finally:
        await channel.close()
        await running.stop(0)
        await container.close()


async def main(seconds: float, concurrency: int) -> None:
    with tempfile.TemporaryDirectory(prefix="xiaohe-bench-") as tmp:
        root = Path(tmp)
        redis_server = EmbeddedRedis(root / "redis")
        redis_url = redis_server.start()
        try:
            echo = await echo_rate(concurrency, seconds, b"x" * 64)
            (root / "codes").mkdir()
            pairs = await code_pairs(root / "codes", redis_url, concurrency, seconds)
            print(line(pairs, echo))
        finally:
            redis_server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency))
