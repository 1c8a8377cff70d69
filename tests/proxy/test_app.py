"""ProxyApp without sockets: ASGI scopes in, sent messages out, the upstream client a FakeUpstream.

The end-to-end tests (tests/e2e/) run the same crossings over real sockets; these pin the pipeline's order and
the one place that answers and audits every refusal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Config, LoadedConfig, UpstreamConfig, load_config
from gateway.issuer.keystore import KeyStore
from gateway.proxy.app import ProxyApp
from gateway.proxy.forward import UpstreamError
from gateway.proxy.snapshot import Leases, Snapshot, build_snapshot, retire_snapshot
from gateway.state import RevocationList
from gateway.tokens.access_token import mint_access_token
from gateway.trust import JwksCaches
from tests.list_sink import ListSink
from tests.proxy.fake_upstream import FakeReply, FakeUpstream

pytestmark = pytest.mark.anyio

PUBLIC = "http://127.0.0.1:8080"
ISSUER = "http://127.0.0.1:8081"
UPSTREAM_KEY = b"Bearer upstream-key"

CONFIG = f"""
version: 1
proxy:
  public_url: {PUBLIC}
  max_body_bytes: 64
issuer:
  url: {ISSUER}
  keys_dir: keys
upstreams:
  crm:
    url: http://crm.internal:9000/api
    headers:
      Authorization: Bearer upstream-key
routes:
  - name: get-customer
    methods: [GET, POST]
    path: /v1/customers/{{id}}
    scopes: [crm.read]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Harness:
    def __init__(self, tmp: Path, config_text: str = CONFIG) -> None:
        (tmp / "tollbooth.yaml").write_text(config_text)
        self.loaded: LoadedConfig = load_config(tmp / "tollbooth.yaml", env={})
        self.keys = KeyStore.load(tmp / "keys", "ES256")
        self.fakes: list[FakeUpstream] = []
        self.leases = Leases()
        self.revocations = RevocationList()
        self.snapshot = self.build(self.loaded.config)
        self.audit = ListSink()
        self.app = ProxyApp(lambda: self.snapshot, self.audit)

    def make_fake(self, upstreams: dict[str, UpstreamConfig]) -> FakeUpstream:
        fake = FakeUpstream(upstreams)
        self.fakes.append(fake)
        return fake

    def build(self, config: Config, previous: Snapshot | None = None) -> Snapshot:
        return build_snapshot(
            config,
            keys=self.keys.verification_keys,
            revocations=self.revocations,
            jwks=JwksCaches(),
            leases=self.leases,
            previous=previous,
            upstream_client=self.make_fake,
        )

    @property
    def fake(self) -> FakeUpstream:
        return self.fakes[-1]

    def token(self, scopes: list[str] | None = None) -> tuple[str, dict[str, Any]]:
        return mint_access_token(
            self.keys.active,
            issuer=ISSUER,
            audience=PUBLIC,
            subject="user:alice",
            client_id="billing-bot",
            scopes=scopes if scopes is not None else ["crm.read"],
            ttl=300,
        )

    async def call(
        self,
        method: str,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        host: bytes | None = b"127.0.0.1:8080",
        body: list[bytes] | None = None,
    ) -> Answer:
        all_headers = ([(b"host", host)] if host is not None else []) + (headers or [])
        scope = {
            "type": "http",
            "method": method,
            "raw_path": raw_path.split(b"?", 1)[0],
            "query_string": raw_path.split(b"?", 1)[1] if b"?" in raw_path else b"",
            "http_version": "1.1",
            "headers": all_headers,
            "client": ("10.1.2.3", 50000),
        }
        chunks = list(body or [])
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            await asyncio.Event().wait()  # the client stays connected until the test ends
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        return Answer(sent)

    def bearer(self, scopes: list[str] | None = None) -> tuple[list[tuple[bytes, bytes]], dict[str, Any]]:
        token, claims = self.token(scopes)
        return [(b"authorization", b"Bearer " + token.encode())], claims


class Answer:
    def __init__(self, sent: list[dict[str, Any]]) -> None:
        assert sent and sent[0]["type"] == "http.response.start", sent
        self.status: int = sent[0]["status"]
        self.headers: list[tuple[bytes, bytes]] = sent[0]["headers"]
        self.body = b"".join(m.get("body", b"") for m in sent[1:])

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield Harness(tmp_path)


async def test_an_allowed_request_reaches_the_upstream_without_the_agents_token(harness: Harness) -> None:
    headers, claims = harness.bearer()
    answer = await harness.call("GET", b"/v1/customers/7?x=1", headers)
    assert answer.status == 200 and answer.body == b'{"ok":true}'
    [sent] = harness.fake.sent
    assert (sent.upstream, sent.method, sent.target) == ("crm", "GET", b"/api/v1/customers/7?x=1")
    # The agent's token never leaves: the upstream gets the injected credential, and only that one.
    assert sent.header(b"authorization") == [UPSTREAM_KEY]
    assert sent.header(b"host") == [b"crm.internal:9000"]
    assert harness.fake.reply.closed
    [event] = harness.audit.events
    assert (event.decision, event.route, event.status, event.jti, event.agent) == (
        "allow",
        "get-customer",
        200,
        claims["jti"],
        "billing-bot",
    )


async def test_the_request_body_is_streamed_up(harness: Harness) -> None:
    headers, _ = harness.bearer()
    headers.append((b"content-length", b"10"))
    answer = await harness.call("POST", b"/v1/customers/7", headers, body=[b"hello", b"world"])
    assert answer.status == 200
    assert harness.fake.sent[0].body == b"helloworld"
    assert harness.audit.events[0].bytes_in == 10


async def test_no_token_is_a_401_with_a_challenge_and_nothing_goes_upstream(harness: Harness) -> None:
    answer = await harness.call("GET", b"/v1/customers/7")
    assert answer.status == 401
    challenge = answer.header(b"www-authenticate")
    assert challenge is not None and challenge.startswith(b"Bearer ")
    assert b"resource_metadata=" in challenge
    assert harness.fake.sent == []
    assert (harness.audit.events[0].decision, harness.audit.events[0].status) == ("deny", 401)


async def test_a_bad_token_is_invalid_token_with_a_reason(harness: Harness) -> None:
    answer = await harness.call("GET", b"/v1/customers/7", [(b"authorization", b"Bearer not.a.jwt")])
    assert answer.status == 401
    assert b'error="invalid_token"' in (answer.header(b"www-authenticate") or b"")
    assert answer.json()["error"] == "invalid_token"
    assert harness.audit.events[0].reason == "malformed"
    assert harness.fake.sent == []


async def test_a_token_without_the_routes_scope_is_insufficient_scope(harness: Harness) -> None:
    headers, claims = harness.bearer(["crm.write"])
    answer = await harness.call("GET", b"/v1/customers/7", headers)
    assert answer.status == 403
    challenge = answer.header(b"www-authenticate") or b""
    assert b'error="insufficient_scope"' in challenge and b'scope="crm.read"' in challenge
    assert harness.fake.sent == []
    event = harness.audit.events[0]
    assert (event.decision, event.route, event.jti) == ("deny", "get-customer", claims["jti"])


async def test_a_path_no_route_names_is_denied(harness: Harness) -> None:
    headers, _ = harness.bearer()
    answer = await harness.call("GET", b"/v1/invoices", headers)
    assert (answer.status, answer.json()["error"]) == (403, "no_matching_route")
    assert harness.fake.sent == []
    assert (harness.audit.events[0].decision, harness.audit.events[0].reason) == ("deny", "no_matching_route")


@pytest.mark.parametrize("path", [b"/v1/customers/%2e%2e/admin", b"/v1/customers/7%2fx", b"/v1/./customers/7"])
async def test_an_ambiguous_path_is_refused_before_identification(harness: Harness, path: bytes) -> None:
    headers, _ = harness.bearer()
    answer = await harness.call("GET", path, headers)
    assert answer.status == 400
    assert answer.json()["error"] == "invalid_request"
    assert harness.fake.sent == []
    assert harness.audit.events[0].reason == "path_rejected"


async def test_a_host_we_do_not_answer_for_is_refused(harness: Harness) -> None:
    headers, _ = harness.bearer()
    answer = await harness.call("GET", b"/v1/customers/7", headers, host=b"evil.example")
    assert (answer.status, answer.json()["error"]) == (421, "invalid_host")
    assert harness.fake.sent == []
    assert harness.audit.events[0].reason == "foreign_host"


async def test_two_authorization_headers_are_refused(harness: Harness) -> None:
    headers, _ = harness.bearer()
    answer = await harness.call("GET", b"/v1/customers/7", headers + headers)
    assert answer.status == 400
    assert harness.fake.sent == []
    assert harness.audit.events[0].reason == "duplicate_authorization"


async def test_an_upstream_failure_is_a_502_and_is_audited_as_allowed(harness: Harness) -> None:
    harness.fake.error = UpstreamError(502, "upstream_unreachable", "connection refused")
    headers, _ = harness.bearer()
    answer = await harness.call("GET", b"/v1/customers/7", headers)
    assert answer.status == 502
    assert b"refused" not in answer.body  # the cause is for the operator's log, not for the agent
    event = harness.audit.events[0]
    assert (event.decision, event.reason, event.status) == ("allow", "upstream_unreachable", 502)


async def test_a_body_over_the_limit_is_a_413(harness: Harness) -> None:
    headers, _ = harness.bearer()
    headers.append((b"transfer-encoding", b"chunked"))
    answer = await harness.call("POST", b"/v1/customers/7", headers, body=[b"x" * 40, b"y" * 40])
    assert answer.status == 413
    assert harness.audit.events[0].status == 413


async def test_an_upstream_error_status_passes_through(harness: Harness) -> None:
    harness.fake.reply = FakeReply(status=409, chunks=[b"conflict"])
    headers, _ = harness.bearer()
    answer = await harness.call("GET", b"/v1/customers/7", headers)
    assert (answer.status, answer.body) == (409, b"conflict")
    assert harness.audit.events[0].bytes_out == len(b"conflict")


async def test_protected_resource_metadata_is_public(harness: Harness) -> None:
    answer = await harness.call("GET", b"/.well-known/oauth-protected-resource")
    assert answer.status == 200
    document = answer.json()
    assert document["resource"] == PUBLIC
    assert document["authorization_servers"] == [ISSUER]
    assert "crm.read" in document["scopes_supported"]
    assert harness.fake.sent == []


async def test_a_request_holds_its_snapshots_parts_until_it_ends(harness: Harness) -> None:
    gate, entered = asyncio.Event(), asyncio.Event()
    seen: list[int] = []
    original = harness.fake.send

    async def slow_send(*args: Any) -> FakeReply:
        seen.append(harness.leases._users.get(harness.fake, 0))
        entered.set()
        await gate.wait()
        return await original(*args)

    harness.fake.send = slow_send  # type: ignore[method-assign]
    headers, _ = harness.bearer()
    request = asyncio.ensure_future(harness.call("GET", b"/v1/customers/7", headers))
    await asyncio.wait_for(entered.wait(), 5)
    assert seen == [1]
    gate.set()
    await request
    assert harness.fake not in harness.leases._users


# ---- snapshots and leases ------------------------------------------------------------------------------------------


def test_a_reload_with_the_same_upstreams_and_issuer_reuses_the_pools_and_verifier(harness: Harness) -> None:
    first = harness.snapshot
    second = harness.build(harness.loaded.config.model_copy(update={"routes": []}), previous=first)
    assert second.forwarder is first.forwarder and second.verifier is first.verifier
    assert len(harness.fakes) == 1


async def test_a_retired_upstream_client_closes_only_after_its_last_request(harness: Harness) -> None:
    first = harness.snapshot
    changed = dict(harness.loaded.config.upstreams)
    changed["crm"] = changed["crm"].model_copy(update={"url": "http://crm2.internal:9000"})
    second = harness.build(harness.loaded.config.model_copy(update={"upstreams": changed}), previous=first)
    assert second.forwarder is not first.forwarder
    first.enter()  # a request still in flight on the old snapshot
    retire_snapshot(first, second)
    await asyncio.sleep(0)
    assert not harness.fakes[0].closed
    first.exit()
    closed = asyncio.get_running_loop().time() + 5
    while not harness.fakes[0].closed:
        assert asyncio.get_running_loop().time() < closed, "the retired client was never closed"
        await asyncio.sleep(0.001)
    assert not harness.fakes[1].closed


async def test_a_part_shared_by_two_snapshots_survives_the_first_ones_retirement() -> None:
    leases = Leases()
    part = object()
    closed: list[object] = []

    async def close() -> None:
        closed.append(part)

    leases.take((part,))
    leases.take((part,))
    leases.retire(part, close)
    leases.give_back((part,))
    await asyncio.sleep(0)
    assert closed == []
    leases.give_back((part,))
    deadline = asyncio.get_running_loop().time() + 5
    while not closed:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.001)
    assert closed == [part]


async def test_an_idle_part_is_closed_when_retired() -> None:
    leases = Leases()
    done = asyncio.Event()

    async def close() -> None:
        done.set()

    leases.retire(object(), close)
    await asyncio.wait_for(done.wait(), 5)
