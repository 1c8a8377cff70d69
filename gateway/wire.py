"""Protocol constants, each spelled once: the well-known paths, the OAuth URNs, the scope grammar, and the rule for
text inside an HTTP quoted-string. Both apps and the SDK import them; this module imports nothing of ours.
"""

from __future__ import annotations

import re

# RFC 9728 §3.1 and RFC 8414 §3.1: the metadata documents, with the resource's or issuer's path appended when it
# has one (`/.well-known/oauth-protected-resource/mcp`).
PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
AUTHORIZATION_SERVER_PATH = "/.well-known/oauth-authorization-server"
# The token service's endpoints (DESIGN.md "Endpoints"); clients find them in the metadata, never by guessing.
TOKEN_PATH = "/oauth/token"  # noqa: S105 (a path, not a secret)
AUTHORIZE_PATH = "/oauth/authorize"
REVOKE_PATH = "/oauth/revoke"
INTROSPECT_PATH = "/oauth/introspect"
JWKS_PATH = "/.well-known/jwks.json"

# RFC 8693 §2.1 and §3; RFC 7523 §2.2 (URNs, not secrets).
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# RFC 6749 §3.3: scope-token = 1*NQCHAR, NQCHAR = %x21 / %x23-5B / %x5D-7E; scopes are space-delimited.
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")

# RFC 6749 §5.2 and RFC 6750 §3: error_description and scope values MUST NOT include characters outside
# %x20-21 / %x23-5B / %x5D-7E, which keeps every quoted-string free of '"' and '\' and of anything that could end
# the header. A scope or URI is the same without space, which separates scopes.
_TEXT_CHARS = frozenset(chr(c) for c in (0x20, 0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F)))
_TOKEN_CHARS = _TEXT_CHARS - {" "}
# Readable stand-ins for the two visible characters a quoted-string cannot carry unescaped; anything else
# (controls, non-ASCII) becomes '?'.
_STAND_INS = {'"': "'", "\\": "/"}


def quotable(text: str, *, spaces: bool = True) -> str:
    """`text` as it may stand inside an OAuth quoted-string; `spaces=False` for a scope-token or a URI."""
    allowed = _TEXT_CHARS if spaces else _TOKEN_CHARS
    if allowed.issuperset(text):
        return text
    return "".join([c if c in allowed else _STAND_INS.get(c, "?") for c in text])
