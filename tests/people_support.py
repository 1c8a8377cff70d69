"""Helpers for the tests of people's clients: PKCE pairs and the hidden fields of the sign-in and consent pages."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets


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
