"""Redis Sentinel and Redis Cluster of the tests' own: real redis-servers on free loopback ports (never 6379).

with RedisSentinel.start(tmp) as sentinel:       # a master, a replica, one sentinel (quorum 1)
    sentinel.url                                 # redis+sentinel://127.0.0.1:<port>/mymaster
    sentinel.fail_master()                       # stop the master; the replica is promoted: its port
with RedisCluster.start(tmp) as cluster:         # three masters sharing the 16384 slots
    cluster.url                                  # redis+cluster://127.0.0.1:<a>,127.0.0.1:<b>

or the module-scoped fixtures `redis_sentinel` and `redis_cluster` (import them into the test module).
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest
import redis
import redis.cluster
from support import RedisServer, free_port, wait_until

MASTER_NAME = "mymaster"
_SLOTS = 16384
_CLUSTER_BUS_OFFSET = 10000  # Redis Cluster listens for its peers on port + 10000


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + _CLUSTER_BUS_OFFSET < 65536 and _bindable(port + _CLUSTER_BUS_OFFSET):
            return port


@dataclass
class RedisProcess:
    """One redis-server (or sentinel) process with extra arguments, e.g. `--replicaof` or `--cluster-enabled`."""

    port: int
    dir: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        common = ("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        self.process = subprocess.Popen(
            ["redis-server", *self.args, *common, "--dir", str(self.dir)],
            stdout=open(self.dir / "redis.log", "wb"),  # noqa: SIM115 (the process owns it)
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, what=f"redis-server {' '.join(self.args)} on {self.port}")
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"redis-server on {self.port} exited: {(self.dir / 'redis.log').read_text()}")
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@dataclass
class RedisSentinel:
    """A master, a replica of it and one sentinel monitoring them with quorum 1, so it can fail over alone."""

    master: RedisServer
    replica: RedisProcess
    sentinel: RedisProcess

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{MASTER_NAME}"

    @classmethod
    def start(cls, tmp: Path) -> RedisSentinel:
        master = RedisServer(free_port(), tmp / "master")
        master.dir.mkdir(parents=True)  # RedisServer expects its directory (it runs in it)
        master.start()
        with redis.Redis(port=master.port) as client:
            client.config_set("repl-diskless-sync-delay", 0)  # the replica's first sync at once, not after 5 s
        replica = RedisProcess(free_port(), tmp / "replica", ("--replicaof", "127.0.0.1", str(master.port)))
        conf = tmp / "sentinel.conf"  # a sentinel rewrites its config file, so it must be one of its own
        conf.write_text(
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        sentinel = RedisProcess(free_port(), tmp / "sentinel", (str(conf), "--sentinel"))
        topology = cls(master, replica, sentinel)
        try:
            replica.start()
            # In sync before the sentinel starts: its first INFO of the master then already lists the replica.
            wait_until(topology._replica_in_sync, what="the replica to sync with the master")
            sentinel.start()
            wait_until(topology._replica_known, timeout=30, what="the sentinel to know the replica")
        except BaseException:
            topology.stop()
            raise
        return topology

    def master_port(self) -> int:
        with self.sentinel.client() as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def fail_master(self) -> int:
        """Stop the master, as when its machine dies, and wait until the sentinel promotes the replica; its port.
        (Not SENTINEL FAILOVER: the old master would go on taking writes for seconds before it is demoted.)"""
        self.master.stop()
        wait_until(lambda: self.master_port() == self.replica.port, timeout=30, what="the sentinel to fail over")
        with self.replica.client() as client:
            wait_until(lambda: client.info("replication")["role"] == "master", what="the replica to be promoted")
        return self.replica.port

    def _replica_in_sync(self) -> bool:
        with self.replica.client() as client:
            return client.info("replication").get("master_link_status") == "up"

    def _replica_known(self) -> bool:
        # Sentinel learns replicas from the master's INFO; a failover needs one it sees up.
        with self.sentinel.client() as client:
            replicas = client.sentinel_slaves(MASTER_NAME)
        return any(r["port"] == self.replica.port and not r["is_sdown"] for r in replicas)

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.stop()

    def __enter__(self) -> RedisSentinel:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


@dataclass
class RedisCluster:
    """Three masters, the slots split evenly between them (CLUSTER ADDSLOTSRANGE), joined by CLUSTER MEET."""

    nodes: list[RedisProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        # Two seeds of three: the client learns the third from CLUSTER SLOTS.
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])

    @classmethod
    def start(cls, tmp: Path, size: int = 3) -> RedisCluster:
        cluster = cls()
        try:
            for i in range(size):
                port = free_cluster_port()
                node_dir = tmp / f"node-{i}"
                args = ("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf"))
                cluster.nodes.append(RedisProcess(port, node_dir, (*args, "--cluster-node-timeout", "2000")).start())
            bounds = [_SLOTS * i // size for i in range(size + 1)]
            for i, node in enumerate(cluster.nodes):
                with node.client() as client:
                    client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
            with cluster.nodes[0].client() as client:
                for node in cluster.nodes[1:]:
                    client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            wait_until(cluster._ready, timeout=30, what="cluster_state:ok on every node")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def client(self) -> redis.cluster.RedisCluster:
        return redis.cluster.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)

    def _ready(self) -> bool:
        for node in self.nodes:
            with node.client() as client:
                info = client.cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
                    return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


@pytest.fixture(scope="module")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    with RedisSentinel.start(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with RedisCluster.start(tmp_path_factory.mktemp("cluster")) as topology:
        yield topology
