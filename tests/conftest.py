"""Fixtures shared by every test folder; the helpers behind them live in tests/support.py."""

import os

from hypothesis import settings
from raw_http import watch  # noqa: F401
from support import gateway, redis_server, upstream  # noqa: F401  (pytest finds fixtures by name)
from token_support import idp  # noqa: F401

# CI runs the same examples every time (a property failure there is reproducible); developers explore new ones.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
