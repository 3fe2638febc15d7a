"""Measuring rates and printing them as ratios against a baseline measured in the same run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class Rate:
    """Operations per second measured over a fixed duration."""

    name: str
    per_second: float


async def measure_async(
    name: str, op: Callable[[int], Awaitable[None]], *, concurrency: int, seconds: float
) -> Rate:
    """Run `op` from `concurrency` tasks for `seconds` after a warm-up; count completions."""
    stop_at = 0.0
    count = 0

    async def worker(worker_id: int, warmup: bool) -> None:
        nonlocal count
        i = 0
        while time.perf_counter() < stop_at:
            await op(worker_id * 1_000_000 + i)
            i += 1
            if not warmup:
                count += 1

    stop_at = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(worker(w, True) for w in range(concurrency)))
    count = 0
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(*(worker(w + concurrency, False) for w in range(concurrency)))
    return Rate(name, count / (time.perf_counter() - started))


def mean_rate(rates: list[Rate]) -> Rate:
    """The mean of rates measured over equal durations (one name)."""
    return Rate(rates[0].name, sum(r.per_second for r in rates) / len(rates))


async def alternating(rounds: int, *measurements: Callable[[], Awaitable[Rate]]) -> list[Rate]:
    """Run the measurements in turn, `rounds` times over; the mean rate of each.

    A measured rate and its baseline taken in alternation see the same machine: a
    change in its speed during the run (other tenants of a shared host) affects both
    alike instead of only whichever ran at the time.
    """
    taken: list[list[Rate]] = [[] for _ in measurements]
    for _ in range(rounds):
        for rates, measure in zip(taken, measurements, strict=True):
            rates.append(await measure())
    return [mean_rate(rates) for rates in taken]


def measure_sync(name: str, op: Callable[[], object], *, seconds: float) -> Rate:
    """Call `op` in a loop for `seconds`; count calls."""
    for _ in range(10):
        op()
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        op()
        count += 1
    return Rate(name, count / (time.perf_counter() - started))


def line(measured: Rate, baseline: Rate) -> str:
    """`<measured>: <n>/s; baseline <name>: <m>/s; ratio <r>`."""
    ratio = measured.per_second / baseline.per_second if baseline.per_second else 0.0
    return (
        f"{measured.name}: {measured.per_second:.0f}/s; "
        f"baseline {baseline.name}: {baseline.per_second:.0f}/s; ratio {ratio:.2f}"
    )


def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def start_echo_server() -> tuple[grpc.aio.Server, int]:
    """A bare grpc.aio server with one unary echo method: the transport baseline."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def echo_rate(concurrency: int, seconds: float, payload: bytes) -> Rate:
    """Calls per second of the bare echo server, measured with the same client shape."""
    server, port = await start_echo_server()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/bench.Echo/Echo")

    async def op(_i: int) -> None:
        await call(payload)

    try:
        return await measure_async("grpc.aio echo", op, concurrency=concurrency, seconds=seconds)
    finally:
        await channel.close()
        await server.stop(0)
