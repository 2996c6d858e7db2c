"""Stream connections made by the pool (tcp, unix): trio's stream contract and ``conn.info``.

Both sides are checked: the connecting side (``pool.connect``) and the accepted
side (``pool.listen()`` + ``accept``), with trio's own conformance suite and the
parts of the contract it does not reach (reset peers, big transfers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit

Pair = tuple[Any, Any]
PairMaker = Callable[[], Awaitable[Pair]]


def _url(kind: str, sock_dir: Path) -> str:
    if kind == "tcp":
        return "tcp://127.0.0.1:0"
    if kind == "unix-abstract":
        return f"unix://@conduit-test-{os.getpid()}-{sock_dir.name}"
    return f"unix://{sock_dir}/s.sock"


@asynccontextmanager
async def pair_maker(kind: str, sock_dir: Path, *, accepted_first: bool) -> AsyncIterator[PairMaker]:
    """A pool, a listener, and a function making (s1, s2) connected pairs through them."""
    async with conduit.open_pool() as pool:
        listener = await pool.listen(_url(kind, sock_dir))

        async def make() -> Pair:
            client = await pool.connect(listener.address)
            server = await listener.accept()
            return (server, client) if accepted_first else (client, server)

        yield make


def clog(stream: Any) -> int:
    """Fill ``stream``'s kernel send buffer (and the peer's receive buffer) without blocking.

    Returns how many bytes it wrote. The kernel may grow the send buffer after a
    short write, so this goes on until even a one-byte write would block.
    """
    fd = stream.socket.fileno()
    total = 0
    for size in (65536, 4096, 1):
        chunk = b"x" * size
        while True:
            try:
                total += os.write(fd, chunk)
            except BlockingIOError:
                break
    return total


def clog_both(s1: Any, s2: Any) -> None:
    """Clog both directions. Data sent one way carries ACKs that free room the other
    way, so repeat until a round writes nothing in either direction."""
    while clog(s1) + clog(s2):
        pass


def clogged(make: PairMaker) -> PairMaker:
    async def make_clogged() -> Pair:
        s1, s2 = await make()
        clog_both(s1, s2)
        return s1, s2

    return make_clogged


STREAM_KINDS = ["tcp", "unix", "unix-abstract"]


@pytest.mark.parametrize("accepted_first", [False, True], ids=["connecting-side", "accepted-side"])
@pytest.mark.parametrize("kind", STREAM_KINDS)
async def test_check_half_closeable_stream(kind: str, accepted_first: bool, sock_dir: Path) -> None:
    async with pair_maker(kind, sock_dir, accepted_first=accepted_first) as make:
        await trio.testing.check_half_closeable_stream(make, clogged(make))


@pytest.mark.parametrize("kind", STREAM_KINDS)
async def test_stream_classes(kind: str, sock_dir: Path) -> None:
    async with pair_maker(kind, sock_dir, accepted_first=False) as make:
        client, server = await make()
        for conn in (client, server):
            assert isinstance(conn, trio.abc.HalfCloseableStream)
            assert isinstance(conn, conduit.HalfCloseableStreamConnection)
            assert isinstance(conn, conduit.Connection)
        assert client.id != server.id


# ---------------------------------------------------------------------------
# the contract beyond trio's checks
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_busy_resource_error(kind: str, sock_dir: Path) -> None:
    async with pair_maker(kind, sock_dir, accepted_first=False) as make:
        client, server = await make()
        clog(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.receive_some)
            nursery.start_soon(client.send_all, b"more")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await client.receive_some()
            with pytest.raises(trio.BusyResourceError):
                await client.send_all(b"x")
            with pytest.raises(trio.BusyResourceError):
                await client.send_eof()
            with pytest.raises(trio.BusyResourceError):
                await client.wait_send_all_might_not_block()
            nursery.cancel_scope.cancel()
        # Once the blocked calls are gone, the stream is usable again.
        await server.send_all(b"ok")
        assert await client.receive_some() == b"ok"


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_closed_resource_error(kind: str, sock_dir: Path) -> None:
    async with pair_maker(kind, sock_dir, accepted_first=False) as make:
        client, server = await make()
        fileno = client.socket.fileno()
        assert fileno >= 0
        await client.aclose()
        assert client.socket.fileno() == -1
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()
        with pytest.raises(trio.ClosedResourceError):
            await client.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await client.wait_send_all_might_not_block()
        await client.aclose()  # idempotent
        # The peer sees a clean end of stream.
        assert await server.receive_some() == b""


async def test_closed_while_blocked_in_receive(sock_dir: Path) -> None:
    async with pair_maker("tcp", sock_dir, accepted_first=False) as make:
        client, _server = await make()
        async with trio.open_nursery() as nursery:

            async def blocked() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await client.receive_some()

            nursery.start_soon(blocked)
            await trio.testing.wait_all_tasks_blocked()
            await client.aclose()


async def test_broken_resource_error_tcp_reset(sock_dir: Path) -> None:
    """A peer that resets (SO_LINGER 0, then close) breaks the stream: BrokenResourceError."""
    async with pair_maker("tcp", sock_dir, accepted_first=False) as make:
        client, server = await make()
        server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await server.aclose()
        with pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some()
        assert isinstance(info.value.__cause__, ConnectionResetError)
        # Sending on a reset connection is broken too (EPIPE), never an OSError.
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"x")
        await client.aclose()


async def test_broken_resource_error_unix_reset(sock_dir: Path) -> None:
    """A unix peer closing with unread data resets the connection (ECONNRESET)."""
    async with pair_maker("unix", sock_dir, accepted_first=False) as make:
        client, server = await make()
        await client.send_all(b"never read")
        await server.aclose()
        with pytest.raises(trio.BrokenResourceError):
            await client.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await client.send_all(b"x")


async def _echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


@pytest.mark.parametrize("kind", ["tcp", "unix"])
async def test_big_echo_sha256(kind: str, sock_dir: Path, no_fd_leak: object) -> None:
    """4 MiB through an echo handler and back, compared by SHA-256."""
    payload = os.urandom(4 * 1024 * 1024)
    url = "tcp://127.0.0.1:0" if kind == "tcp" else f"unix://{sock_dir}/echo.sock"
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, url, _echo)
        conn = await pool.connect(address)
        received = hashlib.sha256()
        total = 0

        async def sender() -> None:
            view = memoryview(payload)
            for i in range(0, len(payload), 100_000):
                await conn.send_all(view[i : i + 100_000])
            await conn.send_eof()

        async with trio.open_nursery() as inner:
            inner.start_soon(sender)
            while data := await conn.receive_some():
                received.update(data)
                total += len(data)
        assert total == len(payload)
        assert received.hexdigest() == hashlib.sha256(payload).hexdigest()
        await conn.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# conn.info
# ---------------------------------------------------------------------------


def test_info_with_tls_keeps_every_other_field() -> None:
    values = {
        "transport": "unix",
        "family": socket.AF_UNIX,
        "socktype": socket.SOCK_STREAM,
        "protocol": 7,
        "local": "/a",
        "remote": "/b",
        "peer_credentials": conduit.PeerCredentials(1, 2, 3),
        "tls": "before",
        "via": ("socks5://p:1",),
    }
    # every field set to something other than its default, so a field the copy forgot shows
    assert set(values) == {f.name for f in dataclasses.fields(conduit.CommunicationInfo)}
    info = conduit.CommunicationInfo(**values)  # type: ignore[arg-type]
    assert info._with_tls("after") == dataclasses.replace(info, tls="after")
    assert info._with_tls("after", "tls") == dataclasses.replace(info, tls="after", transport="tls")


async def test_info_tcp(sock_dir: Path) -> None:
    async with pair_maker("tcp", sock_dir, accepted_first=False) as make:
        client, server = await make()
        for conn in (client, server):
            info = conn.info
            assert isinstance(info, conduit.CommunicationInfo)
            assert info.transport == "tcp"
            assert info.family == socket.AF_INET
            assert info.socktype == socket.SOCK_STREAM
            assert info.protocol == conn.socket.proto
            assert info.local == conn.socket.getsockname()
            assert info.remote == conn.socket.getpeername()
            assert info.peer_credentials is None
            assert info.tls is None
        assert client.info.local == server.info.remote
        assert client.info.remote == server.info.local
        assert client.info.remote[0] == "127.0.0.1"
        assert client.info.remote[1] == client.address.port != 0
        # TCP_NODELAY is on by default, on both sides.
        for conn in (client, server):
            assert conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


async def test_info_tcp_ipv6() -> None:
    async with conduit.open_pool() as pool:
        try:
            listener = await pool.listen("tcp://[::1]:0")
        except conduit.ConnectError as exc:  # pragma: no cover - IPv6-less kernels
            pytest.skip(f"no IPv6 loopback: {exc}")
        assert listener.address.host == "::1"
        client = await pool.connect(listener.address)
        server = await listener.accept()
        assert client.info.family == server.info.family == socket.AF_INET6
        assert client.info.remote[:2] == ("::1", listener.address.port)
        assert server.info.remote == client.info.local == client.socket.getsockname()
        assert server.info.local == client.info.remote == server.socket.getsockname()


async def test_info_local_of_a_connection_accepted_on_a_wildcard() -> None:
    """Accepted on 0.0.0.0, a connection's local address is the one it came to, not the wildcard."""
    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://0.0.0.0:0")
        client = await pool.connect(f"tcp://127.0.0.1:{listener.address.port}")
        server = await listener.accept()
        assert server.info.local == ("127.0.0.1", listener.address.port) == server.socket.getsockname()
        assert client.info.remote == server.info.local
        await client.aclose()
        await server.aclose()


async def test_info_unix(sock_dir: Path) -> None:
    path = str(sock_dir / "s.sock")
    async with pair_maker("unix", sock_dir, accepted_first=False) as make:
        client, server = await make()
        for conn in (client, server):
            info = conn.info
            assert info.transport == "unix"
            assert info.family == socket.AF_UNIX
            assert info.socktype == socket.SOCK_STREAM
            assert info.local == conn.socket.getsockname()
            assert info.remote == conn.socket.getpeername()
            creds = info.peer_credentials
            assert isinstance(creds, conduit.PeerCredentials)
            assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.getuid(), os.getgid())
        assert client.info.remote == path == server.info.local
        assert client.info.local == "" == server.info.remote  # the client is unnamed


async def test_info_unix_abstract(sock_dir: Path) -> None:
    async with pair_maker("unix-abstract", sock_dir, accepted_first=False) as make:
        client, server = await make()
        name = f"conduit-test-{os.getpid()}-{sock_dir.name}".encode()
        assert client.info.remote == b"\0" + name == server.info.local
        assert client.address.path == "@" + name.decode()
        assert client.info.peer_credentials.pid == os.getpid()
