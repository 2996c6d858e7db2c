"""``vsock://`` over CID 1 (the loopback transport): streams and message mode.

Only CID 1 is ever connected to here. (CID 2 is the hypervisor on our machines.)
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit.transport import HalfCloseableSocketStream, MessageSocketChannel

from ._lane import bounded, needs_vsock_loopback, sha256

pytestmark = needs_vsock_loopback

Pair = tuple[Any, Any]


@asynccontextmanager
async def pair_maker(
    url: str, *, accepted_first: bool = False
) -> AsyncIterator[Callable[[], Awaitable[Pair]]]:
    async with conduit.open_pool() as pool:
        listener = await pool.listen(url)
        assert listener.address.port not in (0, socket.VMADDR_PORT_ANY)

        async def make() -> Pair:
            client = await pool.connect(f"vsock://local:{listener.address.port}{_query(url)}")
            server = await listener.accept()
            return (server, client) if accepted_first else (client, server)

        yield make


def _query(url: str) -> str:
    return "?" + url.partition("?")[2] if "?" in url else ""


async def clog(stream: Any) -> None:
    """Fill the send buffer of ``stream`` (and its peer's receive window) so a send would block.

    Acknowledgements (SCTP's are delayed up to 200 ms) free send buffer space after
    a write has failed: fill again whenever the socket turns writable within 250 ms.
    """
    fd = stream.socket.fileno()
    while True:
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"x" * size)
                except BlockingIOError:
                    break
        with trio.move_on_after(0.25) as waited:
            await stream.socket.wait_writable()
        if waited.cancelled_caught:
            return


@bounded(120)
@pytest.mark.parametrize("accepted_first", [False, True], ids=["connecting-side", "accepted-side"])
async def test_vsock_stream_passes_trio_stream_checks(accepted_first: bool) -> None:
    # Without the clogged-stream checks: on Linux 6.1 a vsock sender blocked for
    # credit is not woken when its peer closes while it still holds unread data
    # (trio's check closes a receiver under a blocked, doubly clogged sender).
    # test_vsock_clogged_sender_wakes_when_the_peer_reads covers the rest.
    async with pair_maker("vsock://any:0", accepted_first=accepted_first) as make:
        await trio.testing.check_half_closeable_stream(make, None)


@bounded(60)
async def test_vsock_clogged_sender_wakes_when_the_peer_reads() -> None:
    async with pair_maker("vsock://local:0") as make:
        client, server = await make()
        await clog(client)
        record = []

        async def waiter(cancel_scope: trio.CancelScope) -> None:
            record.append("waiting")
            await client.wait_send_all_might_not_block()
            record.append("woke")
            cancel_scope.cancel()

        async def reader() -> None:
            await trio.testing.wait_all_tasks_blocked(0.2)
            record.append("reading")
            while True:
                await server.receive_some(65536)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, nursery.cancel_scope)
            await trio.testing.wait_all_tasks_blocked(0.2)
            with pytest.raises(trio.BusyResourceError):
                await client.send_all(b"busy")
            nursery.start_soon(reader)
        assert record == ["waiting", "reading", "woke"]
        await client.send_all(b"after")


async def test_vsock_stream_info_and_bulk() -> None:
    async with pair_maker("vsock://local:0") as make:
        client, server = await make()
        for conn in (client, server):
            assert isinstance(conn, HalfCloseableSocketStream)
            assert conn.info.transport == "vsock"
            assert conn.info.family == socket.AF_VSOCK
            assert conn.info.socktype == socket.SOCK_STREAM
        assert client.info.remote == (1, server.info.local[1])
        assert server.info.remote[1] == client.info.local[1]
        payload = os.urandom(2 * 1024 * 1024)
        received = bytearray()

        async def sender() -> None:
            await client.send_all(payload)
            await client.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            while chunk := await server.receive_some():
                received += chunk
        assert sha256(bytes(received)) == sha256(payload)


async def test_vsock_listen_port_any_and_a_named_port() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("vsock://any:0")
        assert listener.address.host == "any"
        assert 1024 <= listener.address.port < socket.VMADDR_PORT_ANY
        port = listener.address.port + 1
        fixed = await pool.listen(f"vsock://local:{port}")
        assert str(fixed.address) == f"vsock://local:{port}"
        conn = await pool.connect(f"vsock://1:{port}")
        accepted = await fixed.accept()
        await conn.send_all(b"hi")
        assert await accepted.receive_some() == b"hi"


async def test_vsock_seqpacket_keeps_boundaries() -> None:
    async with pair_maker("vsock://local:0?mode=message&max_size=100000") as make:
        client, server = await make()
        for conn in (client, server):
            assert isinstance(conn, MessageSocketChannel)
            assert conn.info.socktype == socket.SOCK_SEQPACKET
        sizes = [1, 5, 4096, 65536, 3, 100_000]
        sent = [os.urandom(n) for n in sizes]
        for message in sent:
            await client.send(message)
        assert [await server.receive() for _ in sent] == sent
        await server.send(b"back")
        assert await client.receive() == b"back"
        await client.aclose()
        with pytest.raises(trio.EndOfChannel):
            await server.receive()


async def test_vsock_seqpacket_too_large_for_max_size() -> None:
    async with pair_maker("vsock://local:0?mode=message&max_size=100") as make:
        client, server = await make()
        await client.send(b"z" * 101)
        await client.send(b"next")
        with pytest.raises(conduit.MessageTooLarge):
            await server.receive()
        assert await server.receive() == b"next"


@pytest.mark.parametrize("mode", ["stream", "message"])
async def test_vsock_refused_is_typed(mode: str) -> None:
    with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as probe:
        probe.bind((1, socket.VMADDR_PORT_ANY))
        port = probe.getsockname()[1]  # bound, not listening
        async with conduit.open_pool() as pool:
            with pytest.raises(conduit.ConnectionRefused) as info:
                await pool.connect(f"vsock://local:{port}?mode={mode}", timeout=30)
        assert info.value.errno == errno.ECONNREFUSED
