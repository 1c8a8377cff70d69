"""Client ID Metadata Documents, fetched from real servers on loopback: plain http, and https with a test CA."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from support import Clock, free_port, serve_in_thread
from tls_support import CertificateFiles, make_test_ca

from gateway.issuer import client_documents
from gateway.issuer.client_documents import (
    MAX_LIFETIME,
    ClientDocument,
    ClientDocumentError,
    ClientDocuments,
    cache_lifetime,
    is_allowed_address,
    is_document_client_id,
    parse_document,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the module uses asyncio tasks and timeouts directly


# ---------------------------------------------------------------------------------------------------------------
# A document server that counts what reaches it


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    hold: threading.Event | None = None  # answer only once this is set
    drip: threading.Event | None = None  # send headers, then a byte every 50 ms until this is set
    chunks: int = 0  # send `body` this many times, without a Content-Length


@dataclass
class DocumentServer:
    url: str
    port: int
    replies: dict[str, Reply] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    hosts: dict[str, str] = field(default_factory=dict)
    arrived: threading.Event = field(default_factory=threading.Event)

    def serve(self, path: str, reply: Reply) -> str:
        self.replies[path] = reply
        return self.url + path

    def document(self, path: str, headers: list[tuple[bytes, bytes]] | None = None, **fields: Any) -> str:
        """Serve a good document for url+path, with `fields` merged in (None removes one)."""
        url = self.url + path
        body = {"client_id": url, "redirect_uris": ["http://127.0.0.1/callback"], **fields}
        return self.serve(
            path,
            Reply(body=json.dumps({k: v for k, v in body.items() if v is not None}).encode(), headers=headers or []),
        )


def document_app(server: DocumentServer) -> Callable[..., Any]:
    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        server.hits[path] += 1
        server.hosts[path] = dict(scope["headers"]).get(b"host", b"").decode()
        server.arrived.set()
        reply = server.replies.get(path, Reply(status=404))
        loop = asyncio.get_running_loop()
        if reply.hold is not None:
            await loop.run_in_executor(None, reply.hold.wait, 10)
        length = [] if reply.chunks or reply.drip else [(b"content-length", str(len(reply.body)).encode())]
        headers = [(b"content-type", b"application/json"), *length, *reply.headers]
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        if reply.drip is not None:
            for _ in range(200):
                if reply.drip.is_set():
                    break
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.05)  # the server's behaviour (a slow drip), not a test's synchronisation
            await send({"type": "http.response.body", "body": b""})
            return
        for _ in range(max(reply.chunks - 1, 0)):
            await send({"type": "http.response.body", "body": reply.body, "more_body": True})
        await send({"type": "http.response.body", "body": reply.body})

    return app


def start_server(certificate: CertificateFiles | None = None) -> tuple[DocumentServer, Callable[[], None]]:
    """Plain http on 127.0.0.1, or https (named `localhost`, as its certificate is) when given a certificate."""
    port = free_port()
    url = f"https://localhost:{port}" if certificate else f"http://127.0.0.1:{port}"
    server = DocumentServer(url=url, port=port)
    config = uvicorn.Config(
        document_app(server),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ssl_certfile=certificate.cert_file if certificate else None,
        ssl_keyfile=certificate.key_file if certificate else None,
    )
    return server, serve_in_thread(uvicorn.Server(config), f"{url} document server")


@pytest.fixture(scope="module")
def plain() -> Iterator[DocumentServer]:
    server, stop = start_server()
    yield server
    stop()


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateFiles:
    return make_test_ca(tmp_path_factory.mktemp("client-documents-ca"))


@pytest.fixture(scope="module")
def tls(test_ca: CertificateFiles) -> Iterator[DocumentServer]:
    server, stop = start_server(test_ca)
    yield server
    stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def documents(clock: Clock) -> AsyncIterator[ClientDocuments]:
    docs = ClientDocuments(clock=clock, timeout=5.0)
    yield docs
    await docs.aclose()


async def refused(docs: ClientDocuments, url: str) -> ClientDocumentError:
    with pytest.raises(ClientDocumentError) as caught:
        await docs.fetch(url)
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# Fetching


async def test_a_good_document_is_read(plain: DocumentServer, documents: ClientDocuments) -> None:
    url = plain.document("/good", client_name="Editor", logo_uri="https://editor.example/logo.png")
    document = await documents.fetch(url)
    assert document == ClientDocument(
        client_id=url,
        redirect_uris=("http://127.0.0.1/callback",),
        client_name="Editor",
        logo_uri="https://editor.example/logo.png",
        token_endpoint_auth_method="none",
    )


async def test_a_document_over_https_is_checked_against_the_name_on_the_checked_address(
    tls: DocumentServer, test_ca: CertificateFiles, clock: Clock
) -> None:
    url = tls.document("/tls-good", token_endpoint_auth_method="private_key_jwt")
    docs = ClientDocuments(ca_file=test_ca.ca_file, clock=clock)
    try:
        document = await docs.fetch(url)
    finally:
        await docs.aclose()
    assert document.client_id == url
    assert document.token_endpoint_auth_method == "private_key_jwt"
    assert tls.hosts["/tls-good"] == f"localhost:{tls.port}"  # the name travels in Host, the IP in the socket


async def test_https_without_the_private_ca_is_refused(tls: DocumentServer, documents: ClientDocuments) -> None:
    url = tls.document("/tls-untrusted")
    error = await refused(documents, url)
    assert error.reason == "fetch_failed"
    assert "localhost" in error.description
    assert tls.hits["/tls-untrusted"] == 0


async def test_https_to_an_address_the_certificate_does_not_name_is_refused(
    tls: DocumentServer, test_ca: CertificateFiles
) -> None:
    path = "/tls-by-ip"
    url = f"https://127.0.0.1:{tls.port}{path}"
    tls.serve(path, Reply(body=json.dumps({"client_id": url, "redirect_uris": ["http://127.0.0.1/cb"]}).encode()))
    docs = ClientDocuments(ca_file=test_ca.ca_file)
    try:
        error = await refused(docs, url)
    finally:
        await docs.aclose()
    assert error.reason == "fetch_failed"
    assert tls.hits[path] == 0


async def test_proxy_settings_in_the_environment_are_ignored(
    plain: DocumentServer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would resolve the name itself, past the address check; this one does not even listen.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    url = plain.document("/no-proxy")
    docs = ClientDocuments(clock=clock)
    try:
        assert (await docs.fetch(url)).client_id == url
    finally:
        await docs.aclose()
    assert plain.hits["/no-proxy"] == 1


async def test_a_document_naming_another_client_id_is_refused(
    plain: DocumentServer, documents: ClientDocuments
) -> None:
    url = plain.document("/mismatch", client_id="https://famous.example/client")
    error = await refused(documents, url)
    assert error.reason == "client_id_mismatch"
    assert "127.0.0.1" in error.description


@pytest.mark.parametrize("redirect_uris", [None, [], "http://127.0.0.1/cb", [""], [7]], ids=repr)
async def test_a_document_without_redirect_uris_is_refused(
    plain: DocumentServer, documents: ClientDocuments, redirect_uris: object
) -> None:
    url = plain.document(f"/no-redirects-{len(plain.replies)}", redirect_uris=redirect_uris)
    assert (await refused(documents, url)).reason == "bad_document"


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_is_refused_and_not_followed(
    plain: DocumentServer, documents: ClientDocuments, status: int
) -> None:
    target = plain.document(f"/redirect-target-{status}")
    source = f"/redirect-{status}"
    url = plain.serve(source, Reply(status=status, headers=[(b"location", target.encode())]))
    error = await refused(documents, url)
    assert error.reason == "redirect"
    assert plain.hits[source] == 1
    assert plain.hits[f"/redirect-target-{status}"] == 0


@pytest.mark.parametrize("status", [201, 204, 404, 500])
async def test_a_status_other_than_200_is_refused(
    plain: DocumentServer, documents: ClientDocuments, status: int
) -> None:
    url = plain.serve(f"/status-{status}", Reply(status=status, body=b"{}" if status != 204 else b""))
    error = await refused(documents, url)
    assert error.reason == "bad_status"
    assert str(status) in error.description


async def test_a_document_past_the_byte_limit_is_refused_while_streaming(plain: DocumentServer, clock: Clock) -> None:
    # No Content-Length: the limit has to be found by counting what arrives.
    url = plain.serve("/too-large-stream", Reply(body=b" " * 16384, chunks=64))
    docs = ClientDocuments(max_bytes=32 * 1024, clock=clock)
    try:
        error = await refused(docs, url)
    finally:
        await docs.aclose()
    assert error.reason == "too_large"
    assert "32768" in error.description


async def test_a_document_declaring_a_length_past_the_limit_is_refused_before_its_body(
    plain: DocumentServer, clock: Clock
) -> None:
    # The body only drips: refused at once from the Content-Length, or else the deadline would end the fetch.
    drip = threading.Event()
    url = plain.serve("/too-large-declared", Reply(drip=drip, headers=[(b"content-length", b"40000")]))
    docs = ClientDocuments(max_bytes=32 * 1024, timeout=2, clock=clock)
    try:
        assert (await refused(docs, url)).reason == "too_large"
    finally:
        drip.set()
        await docs.aclose()


async def test_a_server_that_never_answers_times_out(plain: DocumentServer, clock: Clock) -> None:
    hold = threading.Event()
    url = plain.serve("/silent", Reply(body=b"{}", hold=hold))
    docs = ClientDocuments(timeout=0.3, clock=clock)
    try:
        started = time.monotonic()
        error = await refused(docs, url)
        assert time.monotonic() - started < 5
    finally:
        hold.set()
        await docs.aclose()
    assert error.reason == "timeout"


async def test_a_server_dripping_bytes_meets_the_deadline_for_the_whole_fetch(
    plain: DocumentServer, clock: Clock
) -> None:
    # Each byte arrives well within the per-read timeout; only a deadline over the whole fetch ends this.
    drip = threading.Event()
    url = plain.serve("/drip", Reply(drip=drip))
    docs = ClientDocuments(timeout=0.4, clock=clock)
    try:
        started = time.monotonic()
        error = await refused(docs, url)
        assert time.monotonic() - started < 5
    finally:
        drip.set()
        await docs.aclose()
    assert error.reason == "timeout"


@pytest.mark.parametrize("body", [b"<html>hello</html>", b"[1, 2]", b'"https://x.example/c"', b""], ids=repr)
async def test_a_body_that_is_not_a_json_object_is_refused(
    plain: DocumentServer, documents: ClientDocuments, body: bytes
) -> None:
    url = plain.serve(f"/not-json-{len(plain.replies)}", Reply(body=body))
    assert (await refused(documents, url)).reason == "bad_document"


async def test_a_url_that_is_not_a_document_url_is_refused_without_a_request(documents: ClientDocuments) -> None:
    error = await refused(documents, "http://example.com/client")
    assert error.reason == "not_a_document_url"


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/client",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/client",
        "https://0.0.0.0/client",
        "https://100.64.0.1/client",
        "https://[::ffff:10.0.0.1]/client",
    ],
)
async def test_a_url_to_a_blocked_address_is_refused_before_connecting(clock: Clock, url: str) -> None:
    # A long deadline: had a connection been tried, 10.0.0.1 would time out instead of being refused at once.
    docs = ClientDocuments(timeout=30, clock=clock)
    try:
        started = time.monotonic()
        error = await refused(docs, url)
        assert time.monotonic() - started < 5
    finally:
        await docs.aclose()
    assert error.reason == "blocked_address"


async def test_the_unspecified_address_does_not_reach_a_local_server(
    tls: DocumentServer, test_ca: CertificateFiles, clock: Clock
) -> None:
    # On Linux, connecting to 0.0.0.0 reaches the local host: this server would answer.
    path = "/via-unspecified"
    tls.document(path)
    docs = ClientDocuments(ca_file=test_ca.ca_file, clock=clock)
    try:
        error = await refused(docs, f"https://0.0.0.0:{tls.port}{path}")
    finally:
        await docs.aclose()
    assert error.reason == "blocked_address"
    assert tls.hits[path] == 0


async def test_loopback_is_refused_when_not_allowed_even_through_a_name(
    tls: DocumentServer, test_ca: CertificateFiles, clock: Clock
) -> None:
    url = tls.document("/loopback-forbidden")  # https://localhost:port/...: the name resolves to 127.0.0.1
    docs = ClientDocuments(ca_file=test_ca.ca_file, clock=clock, allow_loopback=False)
    try:
        error = await refused(docs, url)
    finally:
        await docs.aclose()
    assert error.reason == "blocked_address"
    assert "localhost" in error.description
    assert tls.hits["/loopback-forbidden"] == 0


async def test_a_host_that_does_not_resolve_fails_to_fetch(documents: ClientDocuments) -> None:
    error = await refused(documents, "https://no-such-host.invalid/client")
    assert error.reason == "fetch_failed"
    assert "no-such-host.invalid" in error.description


# ---------------------------------------------------------------------------------------------------------------
# Caching and sharing


async def test_max_age_serves_the_second_fetch_from_the_cache_until_it_expires(
    plain: DocumentServer, documents: ClientDocuments, clock: Clock
) -> None:
    url = plain.document("/max-age", headers=[(b"cache-control", b"public, max-age=60")])
    first = await documents.fetch(url)
    clock.now += 59
    assert await documents.fetch(url) == first
    assert plain.hits["/max-age"] == 1
    clock.now += 2
    await documents.fetch(url)
    assert plain.hits["/max-age"] == 2


async def test_without_cache_control_a_document_is_kept_five_minutes(
    plain: DocumentServer, documents: ClientDocuments, clock: Clock
) -> None:
    url = plain.document("/default-lifetime")
    await documents.fetch(url)
    clock.now += 299
    await documents.fetch(url)
    assert plain.hits["/default-lifetime"] == 1
    clock.now += 2
    await documents.fetch(url)
    assert plain.hits["/default-lifetime"] == 2


@pytest.mark.parametrize("directive", [b"no-store", b"no-cache", b"max-age=0"])
async def test_an_uncacheable_document_is_fetched_every_time(
    plain: DocumentServer, documents: ClientDocuments, directive: bytes
) -> None:
    path = f"/uncacheable-{directive.decode()}"
    url = plain.document(path, headers=[(b"cache-control", directive)])
    await documents.fetch(url)
    await documents.fetch(url)
    assert plain.hits[path] == 2


async def test_a_refused_document_is_not_cached(plain: DocumentServer, documents: ClientDocuments) -> None:
    url = plain.document("/refused-not-cached", redirect_uris=[], headers=[(b"cache-control", b"max-age=600")])
    await refused(documents, url)
    await refused(documents, url)
    assert plain.hits["/refused-not-cached"] == 2


async def test_the_cache_is_bounded_and_evicts_the_least_recently_used(
    plain: DocumentServer, documents: ClientDocuments, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_documents, "MAX_ENTRIES", 2)
    a, b, c = (plain.document(f"/lru-{name}") for name in "abc")
    await documents.fetch(a)
    await documents.fetch(b)
    await documents.fetch(a)  # a is now the most recently used
    await documents.fetch(c)  # evicts b
    await documents.fetch(a)
    await documents.fetch(b)
    assert (plain.hits["/lru-a"], plain.hits["/lru-b"], plain.hits["/lru-c"]) == (1, 2, 1)


async def test_concurrent_fetches_of_one_url_share_one_request(
    plain: DocumentServer, documents: ClientDocuments
) -> None:
    hold = threading.Event()
    path = "/shared"
    url = plain.url + path
    body = json.dumps({"client_id": url, "redirect_uris": ["http://127.0.0.1/cb"]}).encode()
    plain.serve(path, Reply(body=body, hold=hold, headers=[(b"cache-control", b"no-store")]))
    plain.arrived.clear()
    try:
        fetches = [asyncio.create_task(documents.fetch(url)) for _ in range(5)]
        # Every task has run to its await once the request is at the server: they all wait on that one request.
        assert await asyncio.to_thread(plain.arrived.wait, 5)
        hold.set()
        results = await asyncio.gather(*fetches)
    finally:
        hold.set()
    assert plain.hits[path] == 1
    assert all(result == results[0] for result in results)
    await documents.fetch(url)  # no-store, and nothing left in flight: a new request
    assert plain.hits[path] == 2


async def test_one_caller_giving_up_does_not_cancel_the_shared_fetch(
    plain: DocumentServer, documents: ClientDocuments
) -> None:
    hold = threading.Event()
    path = "/shared-cancel"
    url = plain.url + path
    body = json.dumps({"client_id": url, "redirect_uris": ["http://127.0.0.1/cb"]}).encode()
    plain.serve(path, Reply(body=body, hold=hold))
    plain.arrived.clear()
    try:
        leaving, staying = (asyncio.create_task(documents.fetch(url)) for _ in range(2))
        assert await asyncio.to_thread(plain.arrived.wait, 5)
        leaving.cancel()
        hold.set()
        document = await staying
    finally:
        hold.set()
    assert document.client_id == url
    assert leaving.cancelled()
    assert plain.hits[path] == 1


# ---------------------------------------------------------------------------------------------------------------
# Pure parts


@pytest.mark.parametrize(
    "value",
    [
        "https://example.com/client",
        "https://example.com:8443/oauth/client.json",
        "https://example.com/client?v=2",
        "https://10.0.0.1/client",  # a URL form; the address check refuses it at fetch time
        "http://127.0.0.1:8080/client",
        "http://127.9.9.9/client",
        "http://[::1]:3000/client",
    ],
)
def test_client_identifier_urls(value: str) -> None:
    assert is_document_client_id(value)


@pytest.mark.parametrize(
    "value",
    [
        "http://example.com/client",  # plain http off loopback
        "http://localhost:8080/client",  # a name, not a loopback literal
        "http://0.0.0.0/client",
        "http://10.0.0.1/client",
        "http://[::ffff:127.0.0.1]/client",
        "https://example.com",  # no path
        "https://example.com/",  # root path
        "https://example.com/client#frag",
        "https://example.com/client#",
        "https://user@example.com/client",
        "https://user:pass@example.com/client",
        "https://example.com/a/../client",
        "https://example.com/./client",
        "https://example.com/%2E%2e/client",
        "https://example.com:99999/client",
        "https://example.com:/client",
        "https://exa mple.com/client",
        "https://example.com\\@evil.example/client",
        "https://exämple.com/client",
        "https://%65xample.com/client",
        "https:///client",
        "HTTPS://example.com/client",
        "ftp://example.com/client",
        "client-1234",
        "",
        "https://example.com/" + "a" * 2100,
    ],
)
def test_not_client_identifier_urls(value: str) -> None:
    assert not is_document_client_id(value)


@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",  # IPv4-mapped private
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    ],
)
def test_special_use_addresses_are_not_allowed(address: str) -> None:
    assert not is_allowed_address(ipaddress.ip_address(address), allow_loopback=True)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_allowed_address(ipaddress.ip_address(address), allow_loopback=False)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"])
def test_loopback_is_allowed_only_when_asked(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_allowed_address(ip, allow_loopback=True)
    assert not is_allowed_address(ip, allow_loopback=False)


@pytest.mark.parametrize(
    ("cache_control", "age", "lifetime"),
    [
        (None, None, 300.0),
        ("public", None, 300.0),
        ("max-age=60", None, 60.0),
        ("public, MAX-AGE=120", None, 120.0),
        ('max-age="90"', None, 90.0),
        ("max-age=60, max-age=600", None, 60.0),  # the first of a repeated directive
        ("max-age=999999999", None, MAX_LIFETIME),
        ("max-age=60", "20", 40.0),
        ("max-age=60", "90", 0.0),
        ("max-age=soon", None, 0.0),
        ("max-age=-5", None, 0.0),
        ("max-age=0", None, 0.0),
        ("no-store", None, 0.0),
        ("max-age=600, no-cache", None, 0.0),
        ("private, no-store, max-age=600", None, 0.0),
    ],
)
def test_cache_lifetime(cache_control: str | None, age: str | None, lifetime: float) -> None:
    assert cache_lifetime(cache_control, age) == lifetime


URL = "https://editor.example/client"


def body(**fields: Any) -> bytes:
    merged = {"client_id": URL, "redirect_uris": ["https://editor.example/cb"], **fields}
    return json.dumps({k: v for k, v in merged.items() if v is not None}).encode()


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (body(client_id=None), "client_id_mismatch"),
        (body(client_id=URL + "/"), "client_id_mismatch"),
        (body(client_id="https://editor.example:443/client"), "client_id_mismatch"),  # draft §3: string comparison
        (body(client_secret="s3cret"), "bad_document"),
        (body(client_secret_expires_at=0), "bad_document"),
        (body(token_endpoint_auth_method="client_secret_basic"), "bad_document"),
        (body(token_endpoint_auth_method="client_secret_post"), "bad_document"),
        (body(token_endpoint_auth_method=None, client_name=5), "bad_document"),
        (body(logo_uri=["x"]), "bad_document"),
        (body(jwks={"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "private"}]}), "bad_document"),
        (body(jwks={"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}), "bad_document"),
        (b'{"client_id": "%s", "client_id": "x", "redirect_uris": ["https://e/cb"]}' % URL.encode(), "bad_document"),
        (b"[" * 100_000, "bad_document"),
    ],
    ids=lambda v: v[:60].decode() if isinstance(v, bytes) else v,
)
def test_documents_that_are_refused(document: bytes, reason: str) -> None:
    with pytest.raises(ClientDocumentError) as caught:
        parse_document(URL, document)
    assert caught.value.reason == reason
    assert "editor.example" in caught.value.description
    assert len(caught.value.description) < 400


def test_a_document_with_public_keys_and_private_key_jwt_is_accepted() -> None:
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}
    document = parse_document(URL, body(token_endpoint_auth_method="private_key_jwt", jwks=jwks))
    assert document.token_endpoint_auth_method == "private_key_jwt"
    assert document.client_name is None and document.logo_uri is None


def test_a_mismatch_description_stays_short_whatever_the_document_says() -> None:
    with pytest.raises(ClientDocumentError) as caught:
        parse_document(URL, body(client_id="https://x.example/" + "a" * 50_000))
    assert len(caught.value.description) < 400
