"""Helpers for the tests of people's clients: PKCE pairs, the hidden fields of the sign-in and consent pages, and
a client host serving a Client ID Metadata Document on loopback."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from support import free_port, serve_in_thread

CALLBACK = "http://127.0.0.1/callback"  # registered without a port: RFC 8252 §7.3 lets any port match


def pkce() -> tuple[str, str]:
    """A code_verifier and its S256 code_challenge (RFC 7636 §4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def field(html: str, name: str) -> str:
    """The value of a page's form field `name` (csrf, request)."""
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no {name} field in the page:\n{html}"
    return found.group(1)


@dataclass
class ClientHost:
    url: str  # the client_id: the document's own URL
    fetched: list[str]


@pytest.fixture(scope="module")
def client_host() -> Iterator[ClientHost]:
    """Serves the client's metadata document, recording each fetch."""
    port = free_port()
    host = ClientHost(f"http://127.0.0.1:{port}/oauth/client.json", [])

    async def document(request: Request) -> Response:
        host.fetched.append(request.url.path)
        return JSONResponse(
            {
                "client_id": host.url,
                "client_name": "Test IDE",
                "redirect_uris": [CALLBACK],
                "token_endpoint_auth_method": "none",
            }
        )

    app = Starlette(routes=[Route("/oauth/client.json", document)])
    stop = serve_in_thread(
        uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")), "client host"
    )
    yield host
    stop()
