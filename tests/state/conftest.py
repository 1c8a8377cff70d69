"""Fixtures for the shared-state tests: async tests on asyncio, and polling with a deadline."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def until() -> Callable[..., Awaitable[Any]]:
    """`await until(predicate, what, within=...)`: poll until truthy (returned), fail after the deadline. Polling,
    because the conditions are met by background tasks, other processes' writes or a Redis server."""

    async def poll(predicate: Callable[[], Any], what: str, within: float = 5.0) -> Any:
        deadline = time.monotonic() + within
        while not (result := predicate()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            await anyio.sleep(0.01)
        return result

    return poll
