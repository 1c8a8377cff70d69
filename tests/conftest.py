"""Fixtures shared by every test folder; the helpers behind them live in tests/support.py."""

import os

import pytest
from hypothesis import is_hypothesis_test, settings
from people_support import client_host  # noqa: F401
from raw_http import watch  # noqa: F401
from support import gateway, redis_server, upstream  # noqa: F401  (pytest finds fixtures by name)
from token_support import idp  # noqa: F401

# Property tests run a bounded number of examples in `make test`; `make fuzz` runs many more (HYPOTHESIS_PROFILE=
# fuzz). Example counts live here only, so a profile scales every property alike. CI runs the same examples every
# time (a property failure there is reproducible); developers explore new ones.
settings.register_profile("bounded", max_examples=100, deadline=None)
settings.register_profile("ci", settings.get_profile("bounded"), derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", max_examples=5000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "bounded"))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every hypothesis test is a property test, so `make fuzz` (-m property) cannot miss one that forgot its mark.
    for item in items:
        if isinstance(item, pytest.Function) and is_hypothesis_test(item.obj):
            item.add_marker(pytest.mark.property)
