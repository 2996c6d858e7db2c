"""The example third-party plugin (docs/examples/conduit-rot13), installed as a real distribution.

These tests prove discovery through the ``trio_conduit`` entry-point group:
nothing here imports or registers the plugin before checking that the core
found it by itself.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit import Address, Connection, ConnectionRefused, HalfCloseableStreamConnection
from trio_conduit._plugins import ENTRY_POINT_GROUP, global_scope, plugin_distributions

from .conftest import free_tcp_port

try:
    DIST = importlib.metadata.distribution("conduit-rot13")
except importlib.metadata.PackageNotFoundError:
    pytest.skip(
        "conduit-rot13 is installed by the nox tests session (pip install ./docs/examples/conduit-rot13)",
        allow_module_level=True,
    )

PLAIN = b"Hello, World! 0123 \x00\xff abcxyz ABCXYZ"
ROT13 = b"Uryyb, Jbeyq! 0123 \x00\xff nopklm NOPKLM"


# ---------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------


def test_the_distribution_declares_the_entry_point() -> None:
    assert DIST.version == "0.1.0"
    [entry_point] = [ep for ep in DIST.entry_points if ep.group == ENTRY_POINT_GROUP]
    assert (entry_point.name, entry_point.value) == ("rot13", "conduit_rot13")
    requires = DIST.requires or []
    assert any(r.startswith("trio-conduit") for r in requires)


def test_the_core_found_it_through_the_entry_point() -> None:
    scope = global_scope()
    transport = scope.transports["rot13+tcp"]
    assert transport.plugin_name == "rot13"
    module = scope.pm.get_plugin("rot13")
    assert module is not None
    assert module.__name__ == "conduit_rot13"
    assert type(transport) is module.Rot13Transport
    # pluggy knows which distribution the plugin came from.
    assert ("rot13", "conduit-rot13", "0.1.0") in plugin_distributions()


def test_the_transport_describes_itself() -> None:
    transport = global_scope().transports["rot13+tcp"]
    assert transport.schemes == ("rot13+tcp",)
    assert transport.kind is conduit.Kind.STREAM
    assert transport.capabilities.half_close
    assert transport.availability().available
    assert transport.loopback_url("/tmp") == "rot13+tcp://127.0.0.1:0"


def test_rot13_is_its_own_inverse() -> None:
    from conduit_rot13 import rot13

    assert rot13(PLAIN) == ROT13
    assert rot13(ROT13) == PLAIN
    assert rot13(bytes(range(256))) == rot13(memoryview(bytes(range(256))))
    assert rot13(rot13(bytes(range(256)))) == bytes(range(256))


async def test_its_addresses_use_the_core_grammar() -> None:
    async with conduit.open_pool() as pool:
        transport, address = pool.parse("ROT13+TCP://[::1]:7")
        assert transport.plugin_name == "rot13"
        assert address == Address("rot13+tcp", host="::1", port=7)
        with pytest.raises(conduit.AddressError, match="port 0"):
            pool.parse("rot13+tcp://127.0.0.1:0")
        with pytest.raises(conduit.AddressError, match="unknown option 'nope'"):
            await pool.connect("rot13+tcp://127.0.0.1:7?nope=1")


# ---------------------------------------------------------------------------
# the wire
# ---------------------------------------------------------------------------


@asynccontextmanager
async def plain_tcp_listener() -> AsyncIterator[tuple[trio.SocketListener, int]]:
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        yield listener, listener.socket.getsockname()[1]


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def test_bytes_on_the_wire_are_rot13() -> None:
    async with conduit.open_pool() as pool, plain_tcp_listener() as (listener, port):
        conn = await pool.connect(f"rot13+tcp://127.0.0.1:{port}")
        raw = await listener.accept()
        async with conn, raw:
            await conn.send_all(PLAIN)
            assert await receive_exactly(raw, len(PLAIN)) == ROT13
            await raw.send_all(ROT13)
            assert await receive_exactly(conn, len(PLAIN)) == PLAIN
            # Half-close passes through.
            await conn.send_eof()
            assert await raw.receive_some() == b""
            await raw.send_all(b"Ol!")
            assert await receive_exactly(conn, 3) == b"By!"


async def test_a_conduit_listener_decodes() -> None:
    received: list[bytes] = []
    got = trio.Event()

    async def handler(conn: Connection) -> None:
        assert isinstance(conn, HalfCloseableStreamConnection)
        data = b""
        while chunk := await conn.receive_some():
            data += chunk
        received.append(data)
        got.set()
        await conn.send_all(b"thanks: " + data)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "rot13+tcp://127.0.0.1:0", handler)
        assert address.scheme == "rot13+tcp"
        assert address.port
        # A plain TCP client writes rot13 by hand; the handler reads plain text.
        raw = await trio.open_tcp_stream("127.0.0.1", address.port)
        async with raw:
            await raw.send_all(ROT13)
            await raw.send_eof()
            await got.wait()
            assert received == [PLAIN]
            assert await receive_exactly(raw, 8 + len(PLAIN)) == b"gunaxf: " + ROT13
        nursery.cancel_scope.cancel()


async def test_round_trip_between_conduit_peers() -> None:
    async def echo(conn: Connection) -> None:
        assert isinstance(conn, HalfCloseableStreamConnection)
        async for chunk in conn:
            await conn.send_all(chunk)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "rot13+tcp://127.0.0.1:0", echo)
        conn = await pool.connect(address)
        async with conn:
            payload = PLAIN * 1000
            async with trio.open_nursery() as io:
                io.start_soon(conn.send_all, payload)
                assert await receive_exactly(conn, len(payload)) == payload
        nursery.cancel_scope.cancel()


async def test_info_and_id_come_from_the_inner_connection() -> None:
    from conduit_rot13 import Rot13Stream

    async with conduit.open_pool() as pool:
        listener = await pool.listen("rot13+tcp://127.0.0.1:0")
        async with listener:
            client = await pool.connect(listener.address)
            server = await listener.accept()
            for conn in (client, server):
                assert isinstance(conn, Rot13Stream)
                assert conn.id == conn.inner.id
                assert conn.info is conn.inner.info
                assert conn.info.transport == "rot13+tcp"
            assert client.info.remote == ("127.0.0.1", listener.address.port)
            assert server.info.remote == client.info.local
            assert client.id != server.id
            assert set(pool.connections) == {client, server}


async def test_refused_like_tcp() -> None:
    port = free_tcp_port()
    async with conduit.open_pool() as pool:
        with pytest.raises(ConnectionRefused):
            await pool.connect(f"rot13+tcp://127.0.0.1:{port}")


async def test_passes_trios_half_closeable_stream_checks() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("rot13+tcp://127.0.0.1:0")
        async with listener:

            async def pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
                client = await pool.connect(listener.address)
                server = await listener.accept()
                assert isinstance(server, trio.abc.HalfCloseableStream)
                return client, server

            await trio.testing.check_half_closeable_stream(pair, None)


async def test_async_lifecycle_hooks_count_connections() -> None:
    from conduit_rot13 import ConnectionCounter

    counter = ConnectionCounter()
    async with conduit.open_pool(plugins=[counter]) as pool:
        listener = await pool.listen("rot13+tcp://127.0.0.1:0")
        plain = await pool.listen("tcp://127.0.0.1:0")
        async with listener, plain:
            client = await pool.connect(listener.address)
            server = await listener.accept()
            assert (counter.made, counter.lost, counter.open) == (2, 0, 2)
            await pool.connect(plain.address)  # not rot13: not counted
            await plain.accept()
            assert counter.made == 2
            await client.aclose()
            await client.aclose()
            assert (counter.made, counter.lost, counter.open) == (2, 1, 1)
            await server.aclose()
            assert counter.open == 0
    assert (counter.made, counter.lost) == (2, 2)
