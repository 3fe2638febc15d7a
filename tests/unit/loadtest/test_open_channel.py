"""A target of several hosts is balanced call by call, as a client of such a deployment is."""

from __future__ import annotations

from collections import Counter
from concurrent import futures

import grpc

from clients.loadtest.rpc import open_channel


def _echo_server(name: str, seen: Counter[str]) -> tuple[grpc.Server, int]:
    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen[name] += 1
        return request

    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_calls_to_two_hosts_are_spread_over_both() -> None:
    seen: Counter[str] = Counter()
    (first, a), (second, b) = _echo_server("a", seen), _echo_server("b", seen)
    try:
        with open_channel(f"127.0.0.1:{a},127.0.0.1:{b}") as channel:
            call = channel.unary_unary("/bench.Echo/Echo")
            for _ in range(20):
                assert call(b"x", timeout=5, wait_for_ready=True) == b"x"
    finally:
        first.stop(0)
        second.stop(0)
    assert seen["a"] >= 5, seen
    assert seen["b"] >= 5, seen


def test_one_host_is_one_plain_channel() -> None:
    seen: Counter[str] = Counter()
    server, port = _echo_server("only", seen)
    try:
        with open_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary("/bench.Echo/Echo")(b"y", timeout=5) == b"y"
    finally:
        server.stop(0)
    assert seen == {"only": 1}
