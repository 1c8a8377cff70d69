"""Trust for the HTTPS requests Tollbooth itself makes (trusted issuers' JWKS, client metadata documents, the
OpenID provider people sign in with): the system store plus `tls.ca_file`, a private CA (DESIGN.md)."""

from __future__ import annotations

import ssl


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context
