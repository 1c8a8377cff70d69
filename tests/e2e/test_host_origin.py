"""DNS rebinding, end to end: a Host or Origin the gateway does not answer for never reaches the upstream.

A page on evil.example whose name resolves to the gateway's address sends `Host: evil.example` and, on most
requests, `Origin: http://evil.example`. Each refusal is checked over a raw socket for what the caller gets, that
nothing was forwarded (Watch), and that the audit event records the status that was sent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from raw_http import Response, Watch, bearer, request, send_raw
from support import Gateway, Upstream, start_gateway, wait_until


def _send(gw: Gateway, target: bytes, *lines: bytes, host: bytes | None, version: bytes = b"HTTP/1.1") -> Response:
    response = send_raw(gw.proxy_url, request(target, *lines, host=host, version=version))
    assert response is not None
    return response


def _authority(url: str) -> bytes:
    return url.removeprefix("http://").encode()


def _refused_and_audited(gw: Gateway, response: Response, status: int, error: str, reason: str) -> None:
    assert response.status == status
    assert json.loads(response.body)["error"] == error
    request_id = response.header("x-request-id")
    event = gw.wait_audit(lambda e: e.get("request_id") == request_id, what=f"audit event of {request_id}")
    assert (event["decision"], event["reason"], event["status"]) == ("deny", reason, str(status))


# --- each refusal, on the default test gateway (public_url http://127.0.0.1:<port>, listening there) ------------

REFUSALS = [
    pytest.param(b"evil.example", [], 421, "invalid_host", "foreign_host", id="foreign-host"),
    pytest.param(b"tollbooth.test.evil.example", [], 421, "invalid_host", "foreign_host", id="allowed-name-as-prefix"),
    pytest.param(b"evil.tollbooth.test", [], 421, "invalid_host", "foreign_host", id="allowed-name-as-suffix"),
    pytest.param(b"localhost:1", [], 421, "invalid_host", "foreign_host", id="loopback-name-other-port"),
    pytest.param(b"tollbooth.test@evil.example", [], 400, "invalid_request", "malformed_host", id="userinfo"),
    pytest.param(b"evil.example#tollbooth.test", [], 400, "invalid_request", "malformed_host", id="fragment"),
    pytest.param(b"tollbooth%2etest", [], 400, "invalid_request", "malformed_host", id="percent-escape"),
    pytest.param(b"tollbooth.test evil.example", [], 400, "invalid_request", "malformed_host", id="space"),
    pytest.param(b"tollbooth.test:0", [], 400, "invalid_request", "malformed_host", id="port-zero"),
    pytest.param(b"tollbooth.test:99999", [], 400, "invalid_request", "malformed_host", id="port-99999"),
    pytest.param(b"tollbooth.test", [b"Origin: null"], 403, "invalid_origin", "null_origin", id="origin-null"),
    pytest.param(b"x", [b"Origin: http://evil.example"], 403, "invalid_origin", "foreign_origin", id="foreign-origin"),
    pytest.param(
        b"tollbooth.test",
        [b"Origin: http://tollbooth.test/app"],
        403,
        "invalid_origin",
        "malformed_origin",
        id="origin-with-path",
    ),
    pytest.param(
        b"tollbooth.test",
        [b"Origin: http://tollbooth.test", b"Origin: http://evil.example"],
        403,
        "invalid_origin",
        "malformed_origin",
        id="two-origins",
    ),
    pytest.param(
        b"tollbooth.test", [b"Origin: file://tollbooth.test"], 403, "invalid_origin", "malformed_origin", id="file"
    ),
    # The classic rebinding request: the page's own name in both.
    pytest.param(
        b"evil.example:8080",
        [b"Origin: http://evil.example:8080"],
        421,
        "invalid_host",
        "foreign_host",
        id="rebinding",
    ),
]


@pytest.mark.parametrize(("host", "lines", "status", "error", "reason"), REFUSALS)
@pytest.mark.parametrize("target", [b"/v1/customers/42", b"/status", b"/.well-known/oauth-protected-resource"])
def test_a_host_or_origin_we_do_not_answer_for_is_refused_audited_and_never_forwarded(
    gateway: Gateway,
    watch: Watch,
    target: bytes,
    host: bytes,
    lines: list[bytes],
    status: int,
    error: str,
    reason: str,
) -> None:
    # A valid token, a public route and the metadata document: the check comes before each of them.
    response = _send(gateway, target, bearer(gateway.mint()), *lines, host=host)
    _refused_and_audited(gateway, response, status, error, reason)
    assert watch.forwarded() == []


def test_the_host_is_judged_before_the_token(gateway: Gateway, watch: Watch) -> None:
    response = _send(gateway, b"/v1/customers/42", b"Authorization: Bearer not-a-token", host=b"evil.example")
    _refused_and_audited(gateway, response, 421, "invalid_host", "foreign_host")
    assert watch.forwarded() == []


def test_two_hosts_in_http10_are_a_malformed_host(gateway: Gateway, watch: Watch) -> None:
    # HTTP/1.0 framing allows the repeat (HTTP/1.1 refuses it earlier): the first may be ours, the second not.
    response = _send(
        gateway, b"/status", b"Host: tollbooth.test", b"Host: evil.example", host=None, version=b"HTTP/1.0"
    )
    _refused_and_audited(gateway, response, 400, "invalid_request", "malformed_host")
    assert watch.forwarded() == []


@pytest.mark.parametrize(
    "target", [b"http://evil.example/status", b"http://EVIL.example:80/status?x=1", b"https://evil.example/"]
)
def test_an_absolute_form_target_naming_another_host_is_421(gateway: Gateway, watch: Watch, target: bytes) -> None:
    # RFC 9112 §3.2.2: the target's authority replaces Host, so an allowed Host cannot vouch for it.
    response = _send(gateway, target, host=b"tollbooth.test")
    _refused_and_audited(gateway, response, 421, "invalid_host", "foreign_host")
    assert watch.forwarded() == []


# --- what passes, and what the upstream sees ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [b"tollbooth.test", b"TOLLBOOTH.Test", b"tollbooth.test.", b"tollbooth.test:1234", b"x"],
    ids=["listed", "case", "trailing-dot", "any-port", "second-entry"],
)
def test_a_listed_name_passes_on_any_port_in_any_case(gateway: Gateway, upstream: Upstream, host: bytes) -> None:
    marker = uuid.uuid4().hex.encode()
    response = _send(gateway, b"/status", b"X-Request-Id: " + marker, host=host)
    assert response.status == 200
    assert upstream.last().header("x-request-id") == marker.decode()


@pytest.mark.parametrize("name", [b"localhost", b"127.0.0.1", b"[::1]"])
def test_the_loopback_names_pass_on_the_listen_port(gateway: Gateway, name: bytes) -> None:
    port = gateway.proxy_url.rsplit(":", 1)[1].encode()
    origin = b"Origin: http://" + name + b":" + port
    assert _send(gateway, b"/status", origin, host=name + b":" + port).status == 200


def test_the_upstream_sees_its_own_host_our_public_host_and_the_callers_origin(
    gateway: Gateway, upstream: Upstream
) -> None:
    # The gateway checks Host itself, then rewrites it: the upstream's own check sees the upstream's own name (and
    # the name the agent used never leaks), X-Forwarded-Host is public_url's authority, Origin passes unchanged.
    port = gateway.proxy_url.rsplit(":", 1)[1]
    origin = f"http://localhost:{port}"
    response = _send(gateway, b"/v1/customers/42", bearer(gateway.mint()), f"Origin: {origin}".encode(), host=b"x")
    assert response.status == 200
    seen = upstream.last()
    assert seen.headers_named("host") == [_authority(upstream.url).decode()]
    assert seen.headers_named("x-forwarded-host") == [_authority(gateway.proxy_url).decode()]
    assert seen.headers_named("origin") == [origin]


# --- public_url on another name, and allowed_hosts entries with a port --------------------------------------------


@pytest.fixture(scope="module")
def public(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # TLS is terminated in front (https public_url), the proxy listens on loopback; a browser MCP client is served
    # from http://inspector.local:6274. Only public routes here: the minted tokens name proxy_url as audience.
    extra = {"proxy": {"public_url": "https://gw.example.com", "allowed_hosts": ["inspector.local:6274"]}}
    gw = start_gateway(tmp_path_factory.mktemp("public-host"), upstream.url, extra=extra)
    yield gw
    gw.stop()


@pytest.mark.parametrize(
    ("host", "origin", "status"),
    [
        pytest.param(b"gw.example.com", None, 200, id="public-host-default-port"),
        pytest.param(b"gw.example.com:443", b"https://gw.example.com", 200, id="public-origin"),
        pytest.param(b"gw.example.com", b"http://inspector.local:6274", 200, id="listed-origin"),
        pytest.param(b"127.0.0.1:{port}", None, 200, id="loopback-listen-port"),
        pytest.param(b"localhost:443", None, 200, id="loopback-public-port"),
        pytest.param(b"gw.example.com:{port}", None, 421, id="public-host-listen-port"),
        pytest.param(b"gw.example.com:80", None, 421, id="public-host-other-port"),
        pytest.param(b"inspector.local", None, 421, id="listed-authority-default-port"),
        pytest.param(b"gw.example.com", b"http://gw.example.com", 403, id="origin-scheme-mismatch"),
        pytest.param(b"gw.example.com", b"http://inspector.local", 403, id="listed-authority-other-port"),
    ],
)
def test_public_url_and_listed_authorities_pin_their_port(
    public: Gateway, upstream: Upstream, host: bytes, origin: bytes | None, status: int
) -> None:
    port = public.proxy_url.rsplit(":", 1)[1].encode()
    lines = [b"Origin: " + origin] if origin is not None else []
    response = _send(public, b"/status", *lines, host=host.replace(b"{port}", port))
    assert response.status == status
    if status == 200:
        assert upstream.last().headers_named("x-forwarded-host") == ["gw.example.com"]


# --- hot reload -------------------------------------------------------------------------------------------------


def test_a_reload_changes_the_names_answered_for(upstream: Upstream, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, upstream.url, extra={"proxy": {"allowed_hosts": ["old.example"]}})
    try:
        assert _send(gw, b"/status", host=b"old.example").status == 200
        assert _send(gw, b"/status", host=b"new.example").status == 421

        config = yaml.safe_load(gw.config_path.read_text())
        config["proxy"]["allowed_hosts"] = ["new.example"]
        gw.config_path.write_text(yaml.safe_dump(config))
        gw.wait_audit(lambda e: e["event"] == "config.reloaded")

        wait_until(lambda: _send(gw, b"/status", host=b"new.example").status == 200, what="new.example allowed")
        _refused_and_audited(gw, _send(gw, b"/status", host=b"old.example"), 421, "invalid_host", "foreign_host")

        # A reload that would open the check to every name is rejected, and the last good list stays in force.
        config["proxy"]["allowed_hosts"] = ["*"]
        gw.config_path.write_text(yaml.safe_dump(config))
        rejected = gw.wait_audit(lambda e: e["event"] == "config.rejected")
        assert "wildcard" in rejected["reason"]
        assert _send(gw, b"/status", host=b"evil.example").status == 421
        assert _send(gw, b"/status", host=b"new.example").status == 200
    finally:
        gw.stop()


def test_an_absolute_form_target_with_userinfo_is_a_malformed_host(gateway: Gateway, watch: Watch) -> None:
    response = _send(gateway, b"http://tollbooth.test@evil.example/status", host=b"tollbooth.test")
    _refused_and_audited(gateway, response, 400, "invalid_request", "malformed_host")
    assert watch.forwarded() == []
