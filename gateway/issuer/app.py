"""The token service's listener. Publishes the signing keys (RFC 7517) that the proxy and others verify with."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.issuer.keys import KeyStore


def issuer_app(keys: Callable[[], KeyStore]) -> Starlette:
    """`keys` returns the key store in force (it is replaced when keys are rotated)."""

    async def jwks(request: Request) -> Response:
        # Short cache: verifiers pick up a rotated key within minutes, and refetch on an unknown kid anyway.
        return JSONResponse(keys().jwks(), headers={"cache-control": "public, max-age=300"})

    return Starlette(routes=[Route("/.well-known/jwks.json", jwks, methods=["GET", "HEAD"])])
