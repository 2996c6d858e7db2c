"""``sctp://``: streams (IPv4, IPv6, trio's stream checks, bulk echo) and message mode."""

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
from trio_conduit_plugins.sctp import SCTPMessage, SCTPMessageChannel, SCTPStream

import trio_conduit as conduit
from trio_conduit.transport import SocketStream

from ._lane import bounded, needs_sctp, needs_sctp_one_to_many, sha256

pytestmark = needs_sctp

Pair = tuple[Any, Any]
HOSTS = {"ipv4": "127.0.0.1", "ipv6": "[::1]"}


@asynccontextmanager
async def pair_maker(
    url: str, *, accepted_first: bool = False
) -> AsyncIterator[Callable[[], Awaitable[Pair]]]:
    async with conduit.open_pool() as pool:
        listener = await pool.listen(url)

        async def make() -> Pair:
            client = await pool.connect(listener.address)
            server = await listener.accept()
            return (server, client) if accepted_first else (client, server)

        yield make


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


@bounded(240)
@pytest.mark.parametrize("accepted_first", [False, True], ids=["connecting-side", "accepted-side"])
async def test_sctp_stream_passes_trio_stream_checks(accepted_first: bool) -> None:
    async with pair_maker("sctp://127.0.0.1:0", accepted_first=accepted_first) as make:

        async def clogged() -> Pair:
            s1, s2 = await make()
            await clog(s1)
            await clog(s2)
            return s1, s2

        await trio.testing.check_two_way_stream(make, clogged)


@pytest.mark.parametrize("family", HOSTS)
async def test_sctp_stream_is_not_half_closeable_and_reports_info(family: str) -> None:
    async with pair_maker(f"sctp://{HOSTS[family]}:0") as make:
        client, server = await make()
        for conn in (client, server):
            assert isinstance(conn, SCTPStream)
            assert isinstance(conn, SocketStream)
            assert isinstance(conn, trio.abc.Stream)
            assert not isinstance(conn, trio.abc.HalfCloseableStream)
            info = conn.info
            assert info.transport == "sctp"
            assert info.family == (socket.AF_INET if family == "ipv4" else socket.AF_INET6)
            assert info.socktype == socket.SOCK_STREAM
            assert info.protocol == socket.IPPROTO_SCTP
        assert client.info.remote[:2] == server.info.local[:2]
        assert server.info.remote[:2] == client.info.local[:2]


@bounded(240)
@pytest.mark.parametrize("family", HOSTS)
async def test_sctp_stream_echoes_4_mib_both_ways(family: str) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    received = bytearray()

    async def echo(conn: Any) -> None:
        while data := await conn.receive_some():
            await conn.send_all(data)

    async with conduit.open_pool() as pool, trio.open_nursery() as serving:
        bound = await serving.start(pool.serve, f"sctp://{HOSTS[family]}:0", echo)
        conn = await pool.connect(bound)

        async def sender() -> None:
            view = memoryview(payload)
            for i in range(0, len(payload), 256 * 1024):
                await conn.send_all(view[i : i + 256 * 1024])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            while len(received) < len(payload):
                chunk = await conn.receive_some()
                assert chunk, "the echo server closed early"
                received += chunk
        await conn.aclose()
        serving.cancel_scope.cancel()
    assert len(received) == len(payload)
    assert sha256(bytes(received)) == sha256(payload)


@pytest.mark.parametrize("mode", ["stream", pytest.param("message", marks=needs_sctp_one_to_many)])
async def test_sctp_refused_is_typed(mode: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: an INIT there gets an ABORT
        async with conduit.open_pool() as pool:
            with pytest.raises(conduit.ConnectionRefused) as info:
                await pool.connect(f"sctp://127.0.0.1:{port}?mode={mode}", timeout=30)
            assert info.value.errno == errno.ECONNREFUSED
            assert f"sctp://127.0.0.1:{port}" in str(info.value)


@needs_sctp_one_to_many
async def test_sctp_streams_option_sets_the_stream_count() -> None:
    async with pair_maker("sctp://127.0.0.1:0?mode=message&streams=3") as make:
        client, server = await make()
        assert client.streams == (3, 3)
        assert server.streams == (3, 3)
        with pytest.raises(ValueError, match="out of range"):
            await client.send(b"x", stream=3)


# ---------------------------------------------------------------------------
# message mode
# ---------------------------------------------------------------------------


@needs_sctp_one_to_many
@pytest.mark.parametrize("family", HOSTS)
async def test_message_mode_keeps_boundaries_streams_and_ppids(family: str) -> None:
    sizes = [1, 7, 1000, 65536, 1, 150_000]
    async with pair_maker(f"sctp://{HOSTS[family]}:0?mode=message&streams=8&max_size=200000") as make:
        client, server = await make()
        for conn in (client, server):
            assert isinstance(conn, SCTPMessageChannel)
            assert isinstance(conn, conduit.DatagramConnection)
            assert conn.info.transport == "sctp"
            assert conn.info.socktype == socket.SOCK_SEQPACKET
            assert conn.streams == (8, 8)
        sent = [(os.urandom(n), i % 8, 1000 + i) for i, n in enumerate(sizes)]
        for data, stream, ppid in sent:
            await client.send(data, stream=stream, ppid=ppid)
        got = [await server.receive_message() for _ in sent]
        assert got == [SCTPMessage(data, stream, ppid) for data, stream, ppid in sent]
        # And back, unordered on a stream of its own, through the plain Channel API too.
        await server.send(b"reply", stream=5, ppid=51, unordered=True)
        await server.send(b"plain")
        assert await client.receive_message() == SCTPMessage(b"reply", 5, 51, unordered=True)
        assert await client.receive() == b"plain"


@needs_sctp_one_to_many
async def test_message_mode_end_of_channel_and_sizes() -> None:
    async with pair_maker("sctp://127.0.0.1:0?mode=message&max_size=1000") as make:
        client, server = await make()
        await client.send(b"y" * 1001)
        await client.send(b"fits")
        with pytest.raises(conduit.MessageTooLarge):
            await server.receive()
        assert await server.receive() == b"fits"  # the channel goes on after a too-large message
        with pytest.raises(ValueError, match="empty"):
            await client.send(b"")
        await client.aclose()
        with pytest.raises(trio.EndOfChannel):
            await server.receive()
        with pytest.raises(trio.EndOfChannel):
            await server.receive()
        with pytest.raises(trio.ClosedResourceError):
            await client.send(b"after close")


@needs_sctp_one_to_many
async def test_message_mode_accepts_many_associations() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("sctp://127.0.0.1:0?mode=message")
        clients = [await pool.connect(listener.address) for _ in range(3)]
        servers = [await listener.accept() for _ in clients]
        assert len({s.assoc_id for s in servers}) == 3
        for i, client in enumerate(clients):
            await client.send(f"from {i}".encode())
        # Each accepted channel is its own association (its own socket): no cross-talk.
        by_peer = {s.info.remote[1]: s for s in servers}
        for i, client in enumerate(clients):
            server = by_peer[client.info.local[1]]
            assert await server.receive() == f"from {i}".encode()


# ---------------------------------------------------------------------------
# tls+sctp:// (the TLS plugin over this transport)
# ---------------------------------------------------------------------------


@bounded(120)
async def test_tls_over_sctp_echo(tmp_path: Any) -> None:
    tls = pytest.importorskip("trio_conduit.tls")
    ca = tls.EphemeralCA("kernel lane CA")
    certfile, keyfile = (str(p) for p in ca.issue("localhost", "127.0.0.1").write(str(tmp_path), "server"))
    payload = os.urandom(200_000)

    async def echo(conn: Any) -> None:
        while data := await conn.receive_some():
            await conn.send_all(data)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        url = f"tls+sctp://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
        bound = await nursery.start(pool.serve, url, echo)
        conn = await pool.connect(f"tls+sctp://localhost:{bound.port}", cadata=ca.cert_pem.decode())
        assert conn.info.tls is not None
        assert conn.info.protocol == socket.IPPROTO_SCTP
        received = bytearray()

        async def sender() -> None:
            await conn.send_all(payload)

        async with trio.open_nursery() as inner:
            inner.start_soon(sender)
            while len(received) < len(payload):
                chunk = await conn.receive_some()
                assert chunk
                received += chunk
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert sha256(bytes(received)) == sha256(payload)
