"""The proxy connection's writes: made in one turn of the event loop, they leave as one (a response's head and
body in one system call); a close sends what was written first; an abort drops it."""

from __future__ import annotations

import asyncio
import socket

import pytest

from gateway.proxy.protocol import CoalescingTransport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_writes_of_one_turn_leave_together_and_close_flushes_first() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    coalesced = CoalescingTransport(transport, loop)
    coalesced.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    coalesced.write(b"ok")
    assert coalesced.get_write_buffer_size() == 40  # still ours, not yet the socket's
    await asyncio.sleep(0)  # one turn of the loop: the flush runs
    theirs.setblocking(False)
    assert theirs.recv(1024) == b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    coalesced.write(b"last words")
    coalesced.close()  # before the turn ends: the write still goes out, then the close
    await asyncio.sleep(0.01)  # let the transport finish closing
    theirs.setblocking(True)
    assert theirs.recv(1024) == b"last words" and theirs.recv(1024) == b""
    theirs.close()


async def test_an_abort_drops_what_was_not_sent() -> None:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    coalesced = CoalescingTransport(transport, loop)
    coalesced.write(b"never")
    coalesced.abort()
    await asyncio.sleep(0.01)
    theirs.setblocking(True)
    assert theirs.recv(1024) == b""
    theirs.close()
