"""The HTML pages people see (sign-in, consent, errors): Jinja2 templates with autoescaping, and the headers that
keep them from being framed, scripted or cached (DESIGN.md, "Interactive clients")."""

from __future__ import annotations

import functools
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse

_TITLES = {
    "invalid_request": "This sign-in link is not valid",
    "invalid_client": "This application is not known here",
    "access_denied": "Access denied",
    "server_error": "Something went wrong",
}


@functools.cache
def _templates() -> Environment:
    return Environment(
        loader=PackageLoader("gateway.issuer", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        auto_reload=False,
    )


# A CSP source expression: scheme://host[:port] or scheme:, nothing that could end the directive (`;`, `,`, spaces).
_SOURCE = re.compile(r"^[a-z][a-z0-9+.-]*:(//[A-Za-z0-9.\-]+(:[0-9]{1,5})?|//\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?)?$")


def form_target(redirect_uri: str) -> str:
    """The CSP source that lets a form's answer redirect to `redirect_uri` (browsers apply form-action to the
    redirect after a POST): its origin, or its scheme for a native app's private-use scheme. Anything that is not
    a plain source becomes 'none': the redirect is then blocked rather than the policy rewritten."""
    parts = urlsplit(redirect_uri)
    source = f"{parts.scheme}://{parts.netloc}" if parts.netloc else f"{parts.scheme}:"
    return source if _SOURCE.match(source) else "'none'"


def page(template: str, status: int = 200, *, form_targets: tuple[str, ...] = (), **context: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    body = _templates().get_template(template).render(nonce=nonce, **context)
    policy = (
        f"default-src 'none'; style-src 'nonce-{nonce}'; img-src 'self'; "
        f"form-action 'self' {' '.join(form_targets)}".rstrip()
        + "; frame-ancestors 'none'; base-uri 'none'"
    )
    return HTMLResponse(
        body,
        status_code=status,
        headers={
            "content-security-policy": policy,
            "x-frame-options": "DENY",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-store",
        },
    )


def error_page(error: str, description: str, status: int = 400) -> HTMLResponse:
    title = _TITLES.get(error, "This request cannot be completed")
    return page("error.html", status, title=title, error=error, description=description)
