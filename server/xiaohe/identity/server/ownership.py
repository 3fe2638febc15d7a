"""What one `xiaohe-identity serve` owns alone: its data directory and its listening ports.

Workers share their ports with SO_REUSEPORT, which the kernel grants to any process
of the same user: a second `serve` on the same port would start silently and take
half of the connections, answering from another database. And a second `serve` on
the same data directory would remove the first one's embedded Redis socket. So
before it touches anything, the supervisor takes both, and a second instance stops
with one line saying who holds what.

The data directory is held with an exclusive `flock` on `serve.lock` inside it, for
the supervisor's life (the kernel releases it when the process ends, however it
ends, so a crash leaves no stale lock). A port is checked by binding it *without*
SO_REUSEPORT (with SO_REUSEADDR, so connections of a previous run in TIME_WAIT do
not count): that fails while any socket listens there or holds it exclusively.
The check's socket then stays bound, with SO_REUSEPORT, and never listens: the
workers can join it, it receives no connection, and another instance's check fails
on it even before our workers listen. Port 0 is resolved here once, so every
worker listens on the same port.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

LOCK_FILE: Final = "serve.lock"


class AlreadyInUse(Exception):
    """Another process holds the data directory or a port; the message is one line."""


@dataclass
class DataDirLock:
    """An exclusive lock on a data directory, held until `release` (or the process ends)."""

    directory: Path
    _fd: int | None = field(default=None, repr=False)

    @classmethod
    def acquire(cls, directory: Path) -> DataDirLock:
        """Lock `directory` (creating it, 0700) or raise AlreadyInUse naming it."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            by = f" by process {holder}" if holder.isdigit() else ""
            raise AlreadyInUse(
                f"data directory {directory.resolve()} is in use{by} (another "
                "`xiaohe-identity serve`); stop it, or give this one its own "
                "XIAOHE_IDENTITY_DATA_DIR"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(directory, fd)

    def release(self) -> None:
        """Unlock (closing the file releases the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class PortReservation:
    """Bound, never-listening sockets that keep other instances off one listen address."""

    listen: str
    """The address with its port resolved (port 0 becomes the port picked here)."""
    _sockets: list[socket.socket] = field(default_factory=list, repr=False)

    def release(self) -> None:
        """Close the sockets (the workers' own listening sockets are unaffected)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def reserve_port(listen: str, setting: str) -> PortReservation:
    """Refuse a `host:port` another process listens on; hold it and resolve port 0.

    Every address the host resolves to is checked (`localhost` may be 127.0.0.1
    and ::1); one this machine cannot bind (no IPv6) is skipped, as long as one is
    bound. `setting` names the setting in the message.
    """
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    bare = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise AlreadyInUse(f"{setting}: cannot resolve {listen}: {exc.strerror}") from None
    reservation = PortReservation(listen)
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        try:
            sock = _claim(family, kind, proto, (address[0], port, *address[2:]))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reservation.release()
                raise AlreadyInUse(
                    f"{setting}: {host}:{port} is already in use by another process "
                    "(another `xiaohe-identity serve`?); stop it or choose another port"
                ) from None
            last = exc
            continue
        reservation._sockets.append(sock)
        port = int(sock.getsockname()[1])
    if not reservation._sockets:
        reason = last.strerror if last is not None else "no address"
        raise AlreadyInUse(f"{setting}: cannot listen on {listen}: {reason}")
    reservation.listen = f"{host}:{port}"
    return reservation


def _claim(family: int, kind: int, proto: int, address: tuple[object, ...]) -> socket.socket:
    """Bind without SO_REUSEPORT (fails if anyone listens), then allow the workers in."""
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        # From now on this socket is "strict" towards other checks (no SO_REUSEADDR)
        # and shareable by our workers (SO_REUSEPORT, same user).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except BaseException:
        sock.close()
        raise
    return sock


__all__ = ["LOCK_FILE", "AlreadyInUse", "DataDirLock", "PortReservation", "reserve_port"]
