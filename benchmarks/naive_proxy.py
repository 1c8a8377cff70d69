"""A naive pass-through proxy for the benchmark: the same upstream client as Tollbooth, none of its steps.

    python benchmarks/naive_proxy.py PORT UPSTREAM_URL

Whatever Tollbooth costs beyond this is the price of identify, authorize, stamp and audit.
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from gateway.config import UpstreamConfig
from gateway.proxy.forward import Forwarder


def make_app(upstream_url: str) -> Any:
    forwarder = Forwarder({"up": UpstreamConfig(url=upstream_url)})
    host = upstream_url.split("://", 1)[1].encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        headers = [(k, v) for k, v in scope["headers"] if k != b"host"] + [(b"host", host)]
        response = await forwarder.send("up", scope["method"], target, headers, None)
        try:
            await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
            async for chunk in response.iter_body():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    return app


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(
        make_app(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="off",
    )
