"""A `redis.url`'s TLS files reach the connections of every topology: real redis-servers of the test's own that
speak TLS only with a private CA's certificate and ask for a client certificate (Redis's `tls-auth-clients yes`)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio.sentinel import MasterNotFoundError
from redis_topologies import MASTER_NAME, RedisProcess, free_cluster_port
from support import free_port, wait_until

from gateway.redis.connect import REDIS_FAILURES, async_client, sync_client

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert.pem, key.pem in `directory`): the servers' certificate, the
    client's, and the private CA both sides trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tollbooth test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return directory


@dataclass
class TlsRedis:
    """One server, a Sentinel watching it and a one-node Cluster, each with a TLS port besides its plain one (which
    only the set-up uses)."""

    certificates: Path
    server_port: int
    sentinel_port: int
    cluster_port: int

    def url(self, topology: str, files: tuple[str, ...] = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")) -> str:
        where = {
            "redis": f"rediss://127.0.0.1:{self.server_port}/0",
            "sentinel": f"rediss+sentinel://127.0.0.1:{self.sentinel_port}/{MASTER_NAME}",
            "cluster": f"rediss+cluster://127.0.0.1:{self.cluster_port}",
        }[topology]
        paths = {"ssl_ca_certs": "cert.pem", "ssl_certfile": "cert.pem", "ssl_keyfile": "key.pem"}
        return where + "?" + "&".join(f"{name}={self.certificates / paths[name]}" for name in files)


def tls_arguments(certificates: Path, port: int) -> tuple[str, ...]:
    return (
        *("--tls-port", str(port), "--tls-auth-clients", "yes"),
        *("--tls-cert-file", str(certificates / "cert.pem"), "--tls-key-file", str(certificates / "key.pem")),
        *("--tls-ca-cert-file", str(certificates / "cert.pem")),
    )


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    root = tmp_path_factory.mktemp("tls-redis")
    certificates = write_certificate(root)
    # With tls-cluster the cluster bus is on the TLS port + 10000.
    servers = TlsRedis(certificates, free_port(), free_port(), free_cluster_port())
    sentinel_conf = root / "sentinel.conf"  # a sentinel rewrites its config file, so it must be one of its own
    sentinel_conf.write_text(f"sentinel monitor {MASTER_NAME} 127.0.0.1 {servers.server_port} 1\n")
    cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", str(root / "nodes.conf"))
    processes = [
        RedisProcess(free_port(), root / "server", tls_arguments(certificates, servers.server_port)),
        # tls-replication: the sentinel reaches the master over TLS, as the clients it sends there do.
        RedisProcess(
            free_port(),
            root / "sentinel",
            (
                str(sentinel_conf),
                "--sentinel",
                "--tls-replication",
                "yes",
                *tls_arguments(certificates, servers.sentinel_port),
            ),
        ),
        # tls-cluster: CLUSTER SLOTS answers with the nodes' TLS ports.
        RedisProcess(
            free_cluster_port(),
            root / "cluster",
            (*cluster_args, "--tls-cluster", "yes", *tls_arguments(certificates, servers.cluster_port)),
        ),
    ]
    try:
        for process in processes:
            process.start()
        with processes[2].client() as node:
            node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            wait_until(lambda: node.cluster("INFO").get("cluster_state") == "ok", what="the one-node cluster")
        yield servers
    finally:
        for process in processes:
            process.stop()


@pytest.mark.parametrize("topology", ["redis", "sentinel", "cluster"])
async def test_a_private_ca_and_client_certificate_in_the_url_connect_asyncio(
    tls_redis: TlsRedis, topology: str
) -> None:
    # Without the client certificate the server would refuse the handshake (tls-auth-clients yes).
    client = async_client(tls_redis.url(topology), decode_responses=True, socket_timeout=5)
    try:
        await client.set(f"tls-async-{topology}", "over TLS")
        assert await client.get(f"tls-async-{topology}") == "over TLS"
    finally:
        await client.aclose()


@pytest.mark.parametrize("topology", ["redis", "sentinel", "cluster"])
def test_a_private_ca_and_client_certificate_in_the_url_connect_blocking(tls_redis: TlsRedis, topology: str) -> None:
    with sync_client(tls_redis.url(topology), decode_responses=True, socket_timeout=5) as client:
        client.set(f"tls-sync-{topology}", "over TLS")
        assert client.get(f"tls-sync-{topology}") == "over TLS"


def causes(error: BaseException | None) -> str:
    """The messages of `error` and the errors it was raised from or during."""
    messages = []
    while error is not None:
        messages.append(repr(error))
        error = error.__cause__ or error.__context__
    return " <- ".join(messages)


@pytest.mark.parametrize("topology", ["redis", "sentinel", "cluster"])
async def test_without_the_private_ca_the_certificate_is_refused(tls_redis: TlsRedis, topology: str) -> None:
    client = async_client(tls_redis.url(topology, ("ssl_certfile", "ssl_keyfile")), socket_timeout=5)
    try:
        with pytest.raises(REDIS_FAILURES) as caught:
            await client.ping()
    finally:
        await client.aclose()
    if topology == "sentinel":  # redis-py keeps no cause here: it says only that no Sentinel named a master
        assert isinstance(caught.value, MasterNotFoundError)
    else:
        assert "CERTIFICATE_VERIFY_FAILED" in causes(caught.value)
