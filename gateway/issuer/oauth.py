"""The token service's wire format: form-encoded parameters in, JSON out, errors per RFC 6749 §5.2.

Every endpoint reads its parameters with `parse_form` and answers failures by raising `OAuthError`, which
`error_response` turns into the one JSON shape clients parse (`error`, `error_description`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse, Response

from gateway.wire import quotable

FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 64 * 1024  # a token request is a few hundred bytes; an assertion or subject token a few KiB
# RFC 6749 §3.2: request parameters "MUST NOT be included more than once"; RFC 8707 §2 and RFC 8693 §2.1
# make `resource` and `audience` the exceptions.
REPEATABLE = frozenset({"resource", "audience"})
# RFC 6749 §5.1: token responses (and, by the same reasoning, errors and introspection) are never cached.
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class OAuthError(Exception):
    """An RFC 6749 §5.2 error (or RFC 7009/7662/8693/8707's additions). `reason` is for audit and metrics."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        reason: str = "",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = quotable(description)  # RFC 6749 §5.2
        self.status = status
        self.reason = reason or error
        self.headers = headers or {}


def invalid_request(description: str, reason: str = "invalid_request") -> OAuthError:
    return OAuthError("invalid_request", description, reason=reason)


def error_response(error: OAuthError) -> Response:
    body = {"error": error.error, "error_description": error.description}
    return JSONResponse(body, status_code=error.status, headers={**NO_STORE, **error.headers})


@dataclass(frozen=True)
class Form:
    """Parsed `application/x-www-form-urlencoded` parameters. Empty values count as absent (RFC 6749 §3.1)."""

    values: dict[str, list[str]] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        found = self.values.get(name)
        return found[0] if found else None  # parse_form already refused repeats

    def require(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise invalid_request(f"the {name} parameter is missing", reason="missing_parameter")
        return value

    def all(self, name: str) -> list[str]:
        return list(self.values.get(name, ()))

    def __contains__(self, name: str) -> bool:
        return bool(self.values.get(name))


def check_form_head(content_type: str | None, content_length: str | None) -> None:
    """What can be refused before reading a byte of the body: another media type, a declared size over the limit."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != FORM_TYPE:
        # RFC 6749 §3.2: parameters are form-encoded; JSON or query-string parameters are not read at all.
        raise invalid_request(f"send the parameters as {FORM_TYPE}", reason="wrong_content_type")
    if content_length is not None and content_length.isdigit() and int(content_length) > MAX_FORM_BYTES:
        raise too_large()


def too_large() -> OAuthError:
    return invalid_request(f"the request body is larger than {MAX_FORM_BYTES} bytes", reason="body_too_large")


def parse_form(content_type: str | None, body: bytes) -> Form:
    """The request's parameters; `invalid_request` for any other media type, a bad encoding or a repeat."""
    check_form_head(content_type, None)
    if len(body) > MAX_FORM_BYTES:
        raise too_large()
    try:
        text = body.decode("ascii")  # form encoding percent-escapes everything else
        if _BAD_ESCAPE.search(text):
            raise ValueError("a % not followed by two hex digits")  # parse_qsl would keep it as a literal '%'
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text), errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise invalid_request("the request body is not valid form encoding", reason="malformed_form") from None
    values: dict[str, list[str]] = {}
    for name, value in pairs:
        if value == "":
            continue
        found = values.setdefault(name, [])
        found.append(value)
        if len(found) > 1 and name not in REPEATABLE:
            raise invalid_request(f"the {name} parameter is given more than once", reason="duplicate_parameter")
    return Form(values)
