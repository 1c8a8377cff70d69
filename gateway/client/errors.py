"""What the SDK raises. Every error says what failed and where; none carries a token or a secret."""

from __future__ import annotations


class TollboothError(Exception):
    """Base of every error the Tollbooth client SDK raises."""


class ProtocolError(TollboothError):
    """A server answered something the standards do not allow (bad metadata, not JSON, unreachable)."""


class DiscoveryError(ProtocolError):
    """The proxy or token service could not be discovered (RFC 9728 / RFC 8414)."""


class TokenRequestError(TollboothError):
    """The token service refused a request with an RFC 6749 §5.2 error."""

    def __init__(self, error: str, description: str, status: int, url: str) -> None:
        self.error = error
        self.description = description
        self.status = status
        self.url = url
        detail = f": {description}" if description else ""
        super().__init__(f"{url} refused the request ({status} {error}{detail})")


class InsufficientScope(TollboothError):
    """RFC 6750 §3.1: the proxy answered 403 `insufficient_scope`; the token lacks a scope the route needs."""

    def __init__(self, required: tuple[str, ...], granted: tuple[str, ...], method: str, url: str) -> None:
        self.required = required
        self.granted = granted
        self.missing = tuple(scope for scope in required if scope not in granted)
        self.method = method
        self.url = url
        missing = " ".join(self.missing or required) or "(not named by the server)"
        super().__init__(
            f"{method} {url} needs scope {missing}; the token holds {' '.join(granted) or 'no scopes'}. "
            "Ask for it in `scopes=` (and make sure the agent is allowed it in the gateway config)"
        )
