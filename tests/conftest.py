"""Fixtures shared by every test folder; the helpers behind them live in tests/support.py."""

from support import gateway, redis_server, upstream  # noqa: F401  (pytest finds fixtures by name)
