"""Request bodies of the endpoints anyone may call (the token service's pages, registration, the admin API), read
only up to a limit: past it the read stops, so an endless body costs nothing."""

from __future__ import annotations

from starlette.requests import Request


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The whole body, or None when it is longer than `limit` bytes."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)
