"""The HTTP/1.1 server protocol: uvicorn's httptools protocol with limits on the request head.

Two gaps in the stock protocol matter for a gateway. It has no limit on the header section, so one
request could hold megabytes of headers in memory and relay them upstream; and it appends chunked
trailer fields to the same list as the headers, so a trailer `Authorization` would authenticate a
request that had none (RFC 9110 §6.5.1: trailers are not headers).
"""

from __future__ import annotations

from collections.abc import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadTooLarge(Exception):
    """The request line and header section exceed the configured limits."""


# Called for a request the HTTP layer refuses before any app runs: (client, target so far, status, reason).
OnRefuse = Callable[[tuple[str, int] | None, bytes, int, str], None]


def guarded_protocol(
    max_header_bytes: int, max_headers: int, on_refuse: OnRefuse | None = None
) -> type[HttpToolsProtocol]:
    """An HttpToolsProtocol class answering 431 past the limits, ignoring trailer fields, and reporting refusals
    (431 here, 400 for what llhttp cannot parse) to `on_refuse`, so they are audited like any other request."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._head_done = False

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._head_done:
                return  # a trailer field: never a header
            self._count(len(name) + len(value) + 4)
            if len(self.headers) >= max_headers:
                self._refuse(f"more than {max_headers} header fields")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_done = True
            super().on_headers_complete()

        def _count(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > max_header_bytes:
                self._refuse(f"request line and headers exceed {max_header_bytes} bytes")

        def _refuse(self, reason: str) -> None:
            # RFC 6585 §5. Answered here because uvicorn turns every parser error into 400; raising then stops
            # the parser, and send_400_response below stays silent for a request already answered.
            self._head_refused = True
            body = f'{{"error": "request_header_fields_too_large", "error_description": "{reason}"}}'.encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            self.transport.close()
            if on_refuse is not None:
                on_refuse(self.client, self.url, 431, "header_too_large")
            raise HeadTooLarge(reason)

        def send_400_response(self, msg: str) -> None:
            if not getattr(self, "_head_refused", False):
                super().send_400_response(msg)
                if on_refuse is not None:
                    on_refuse(self.client, getattr(self, "url", b""), 400, "malformed_request")

    return GuardedHttpToolsProtocol
