"""What `serve` owns alone: the data directory's lock and its ports, on real files and sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from xiaohe.identity.server.ownership import AlreadyInUse, DataDirLock, reserve_port


def listener(port: int = 0, *, reuseport: bool = False) -> socket.socket:
    """A listening socket on 127.0.0.1, as a worker (SO_REUSEPORT) or any other server has."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


@pytest.fixture
def closing() -> Iterator[list[socket.socket]]:
    """Sockets a test opened, closed after it."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_a_locked_data_directory_is_refused_naming_it_and_its_holder(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path / "var")
    try:
        with pytest.raises(AlreadyInUse) as caught:
            DataDirLock.acquire(tmp_path / "var")
        message = str(caught.value)
        assert str((tmp_path / "var").resolve()) in message
        assert "by process" in message
        assert "\n" not in message
    finally:
        first.release()
    DataDirLock.acquire(tmp_path / "var").release()  # released: free again


def test_a_port_with_a_listener_is_refused_even_one_sharing_it(
    closing: list[socket.socket],
) -> None:
    """A listener with SO_REUSEPORT (another serve's worker) is found too."""
    other = listener(reuseport=True)
    closing.append(other)
    port = other.getsockname()[1]
    with pytest.raises(AlreadyInUse) as caught:
        reserve_port(f"127.0.0.1:{port}", "XIAOHE_IDENTITY_LISTEN")
    assert str(caught.value).startswith(
        f"XIAOHE_IDENTITY_LISTEN: 127.0.0.1:{port} is already in use"
    )


def test_port_zero_is_resolved_and_our_workers_can_join_it(closing: list[socket.socket]) -> None:
    """The held socket keeps other instances off, lets SO_REUSEPORT workers in, takes nothing."""
    reservation = reserve_port("127.0.0.1:0", "XIAOHE_IDENTITY_LISTEN")
    try:
        port = int(reservation.listen.rpartition(":")[2])
        assert port != 0
        with pytest.raises(AlreadyInUse):
            reserve_port(reservation.listen, "XIAOHE_IDENTITY_LISTEN")
        worker = listener(port, reuseport=True)
        closing.append(worker)
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                accepted, _ = worker.accept()
                accepted.close()
    finally:
        reservation.release()


def test_connections_of_a_previous_run_in_time_wait_do_not_count() -> None:
    """A restart right after a stop: the server closed its connections, so they linger."""
    old = listener(reuseport=True)
    port = old.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port), timeout=2)
    accepted, _ = old.accept()
    accepted.close()  # the server side closes first: its end goes to TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    old.close()
    reservation = reserve_port(f"127.0.0.1:{port}", "XIAOHE_IDENTITY_LISTEN")
    reservation.release()


def test_an_address_this_machine_does_not_have_is_one_line() -> None:
    with pytest.raises(AlreadyInUse) as caught:
        reserve_port("192.0.2.1:50051", "XIAOHE_IDENTITY_LISTEN")
    assert "cannot listen on 192.0.2.1:50051" in str(caught.value)
