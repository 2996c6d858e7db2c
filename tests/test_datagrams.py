"""Datagram channels: udp (connected and not), the udp server, unix+dgram; ``conn.info``.

Connected-socket semantics after WSAConnect / nsock: a default peer, datagrams
from anyone else dropped, ICMP port unreachable reported on the next receive,
broadcast only when asked for. Broadcast traffic is only ever *sent* inside a
network namespace of our own.
"""

from __future__ import annotations

import errno
import os
import socket
import textwrap
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

import trio_conduit as conduit

from .conftest import NetNS, closed_udp_port, stale_unix_socket


async def udp_peer() -> tuple[trio.socket.SocketType, tuple[str, int]]:
    """A plain trio UDP socket on loopback and its address."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()


async def uecho(ch: Any) -> None:
    async for data in ch:
        await ch.send(data)


# ---------------------------------------------------------------------------
# udp, connected
# ---------------------------------------------------------------------------


async def test_udp_connected_default_peer_and_info() -> None:
    peer, peer_addr = await udp_peer()
    with peer:
        async with conduit.open_pool() as pool:
            ch = await pool.connect(f"udp://127.0.0.1:{peer_addr[1]}")
            assert isinstance(ch, conduit.DatagramConnection)
            assert isinstance(ch, trio.abc.Channel)
            ch = cast(Any, ch)  # a SocketChannel: .socket, .peer
            info = ch.info
            assert info.transport == "udp"
            assert info.family == socket.AF_INET
            assert info.socktype == socket.SOCK_DGRAM
            assert info.local == ch.socket.getsockname()
            assert info.remote == ch.socket.getpeername() == peer_addr
            assert ch.peer == peer_addr
            assert info.peer_credentials is None
            await ch.send(b"hello")
            data, sender = await peer.recvfrom(100)
            assert data == b"hello"
            assert sender == info.local
            await peer.sendto(b"world", sender)
            assert await ch.receive() == b"world"
            # Whole messages, boundaries kept.
            for size in (0, 1, 1000, 60000):
                await ch.send(b"m" * size)
            for size in (0, 1, 1000, 60000):
                assert (await peer.recvfrom(65536))[0] == b"m" * size


async def test_udp_datagrams_from_others_are_dropped() -> None:
    peer, peer_addr = await udp_peer()
    stranger, _ = await udp_peer()
    with peer, stranger:
        async with conduit.open_pool() as pool:
            ch = await pool.connect(f"udp://127.0.0.1:{peer_addr[1]}")
            me = ch.info.local
            # The stranger's datagram is sent first: if it were accepted it would arrive first.
            await stranger.sendto(b"from a stranger", me)
            await peer.sendto(b"from the peer", me)
            assert await ch.receive() == b"from the peer"
            await stranger.sendto(b"again", me)
            await peer.sendto(b"peer again", me)
            assert await ch.receive() == b"peer again"


async def test_udp_set_peer_changes_the_peer() -> None:
    first, first_addr = await udp_peer()
    second, second_addr = await udp_peer()
    with first, second:
        async with conduit.open_pool() as pool:
            ch = await pool.connect(f"udp://127.0.0.1:{first_addr[1]}")
            me = ch.info.local
            assert ch.info.remote == first_addr
            await ch.set_peer(second_addr)
            assert ch.info.remote == second_addr
            assert ch.peer == second_addr
            assert ch.info.local == me  # same socket, same local address
            await ch.send(b"to the second")
            assert (await second.recvfrom(100)) == (b"to the second", me)
            # Now the first peer is the stranger.
            await first.sendto(b"old peer", me)
            await second.sendto(b"new peer", me)
            assert await ch.receive() == b"new peer"


async def test_udp_icmp_port_unreachable_is_connection_refused() -> None:
    port = closed_udp_port()
    async with conduit.open_pool() as pool:
        ch = await pool.connect(f"udp://127.0.0.1:{port}")
        await ch.send(b"anyone there?")
        with trio.fail_after(5), pytest.raises(conduit.ConnectionRefused) as info:
            await ch.receive()
        assert isinstance(info.value, ConnectionRefusedError)
        assert info.value.errno == errno.ECONNREFUSED
        # The channel stays usable: once someone listens there, the exchange works.
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            await server.bind(("127.0.0.1", port))
            await ch.send(b"now?")
            data, sender = await server.recvfrom(100)
            assert data == b"now?"
            await server.sendto(b"yes", sender)
            with trio.fail_after(5):
                assert await ch.receive() == b"yes"


async def test_udp_broadcast_without_permission_is_eacces() -> None:
    """Connecting to (or sending to) a broadcast address without broadcast=True: PermissionDenied.

    Nothing is sent: the kernel refuses at route lookup because SO_BROADCAST is off.
    """
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.PermissionDenied) as info:
            await pool.connect("udp://255.255.255.255:9")
        assert info.value.errno == errno.EACCES
        assert isinstance(info.value, PermissionError)
        assert "broadcast=True" in str(info.value)

        ch = await pool.connect("udp://255.255.255.255:9?connected=0")
        # Guard: never let a broadcast leave this machine if the option were on by mistake.
        assert ch.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        with pytest.raises(conduit.PermissionDenied) as info:
            await ch.send(b"x")
        assert info.value.errno == errno.EACCES
        assert "broadcast=True" in str(info.value)
        with pytest.raises(conduit.PermissionDenied):
            await ch.send_to(b"x", ("255.255.255.255", 9))
        # The channel is still usable for ordinary peers.
        peer, peer_addr = await udp_peer()
        with peer:
            await ch.send_to(b"fine", peer_addr)
            assert (await peer.recvfrom(10))[0] == b"fine"


async def test_udp_broadcast_true_sets_so_broadcast() -> None:
    async with conduit.open_pool() as pool:
        # connect() on a datagram socket sends nothing; we never send broadcasts on the host.
        ch = await pool.connect("udp://255.255.255.255:9", broadcast=True)
        assert ch.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        assert ch.info.remote == ("255.255.255.255", 9)
        await ch.aclose()
        url_form = await pool.connect("udp://255.255.255.255:9?broadcast=1")
        assert url_form.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        await url_form.aclose()
        plain = await pool.connect("udp://127.0.0.1:9")
        assert plain.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        # Broadcast is a datagram thing.
        with pytest.raises(conduit.AddressError, match="broadcast"):
            await pool.connect("tcp://127.0.0.1:9", broadcast=True)


BROADCAST_SNIPPET = textwrap.dedent(
    """
    import json, socket, trio, trio_conduit as conduit

    async def main():
        out = {}
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
            await rx.bind(("0.0.0.0", 7777))
            async with conduit.open_pool() as pool:
                try:
                    await pool.connect("udp://10.77.0.255:7777")
                except conduit.PermissionDenied as exc:
                    out["without"] = exc.errno
                for target in ("10.77.0.255", "255.255.255.255"):
                    ch = await pool.connect(f"udp://{target}:7777", broadcast=True)
                    await ch.send(target.encode())
                    with trio.fail_after(5):
                        data, _ = await rx.recvfrom(100)
                    out[target] = data.decode()
        print(json.dumps(out))

    trio.run(main)
    """
)


@pytest.mark.netns
def test_udp_broadcast_inside_a_netns(netns: NetNS) -> None:
    """Inside our own namespace (a veth pair, nothing outside), a broadcast send arrives."""
    netns.ip("link", "add", "bc0", "type", "veth", "peer", "name", "bc1")
    netns.ip("addr", "add", "10.77.0.1/24", "dev", "bc0")
    netns.ip("link", "set", "bc0", "up")
    netns.ip("link", "set", "bc1", "up")
    netns.ip("route", "add", "default", "dev", "bc0")
    try:
        result = netns.python_json(BROADCAST_SNIPPET)
    finally:
        netns.ip("link", "del", "bc0")
    assert result == {
        "without": errno.EACCES,
        "10.77.0.255": "10.77.0.255",
        "255.255.255.255": "255.255.255.255",
    }


# ---------------------------------------------------------------------------
# udp, unconnected
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["url", "keyword"])
async def test_udp_unconnected_send_to_receive_from(how: str) -> None:
    a, a_addr = await udp_peer()
    b, b_addr = await udp_peer()
    with a, b:
        async with conduit.open_pool() as pool:
            if how == "url":
                ch = await pool.connect(f"udp://127.0.0.1:{a_addr[1]}?connected=0")
            else:
                ch = await pool.connect(f"udp://127.0.0.1:{a_addr[1]}", connected=False)
            me = ch.info.local
            assert me[1] != 0  # bound at once: peers may send first
            assert ch.info.remote == a_addr  # the default peer
            await a.sendto(b"first", ("127.0.0.1", me[1]))
            assert await ch.receive_from() == (b"first", a_addr)
            with pytest.raises(OSError):  # the socket itself is not connected
                ch.socket.getpeername()
            await ch.send(b"default")
            here = ("127.0.0.1", me[1])
            assert await a.recvfrom(100) == (b"default", here)
            await ch.send_to(b"to b", b_addr)
            assert await b.recvfrom(100) == (b"to b", here)
            await a.sendto(b"from a", here)
            await b.sendto(b"from b", here)
            got = {await ch.receive_from(), await ch.receive_from()}
            assert got == {(b"from a", a_addr), (b"from b", b_addr)}
            # receive() takes datagrams from anyone, too.
            await b.sendto(b"anyone", here)
            assert await ch.receive() == b"anyone"


# ---------------------------------------------------------------------------
# udp server
# ---------------------------------------------------------------------------


async def test_udp_serve_one_channel_per_peer(no_fd_leak: object) -> None:
    handled: dict[Any, Any] = {}

    async def handler(ch: Any) -> None:
        assert isinstance(ch, conduit.DatagramConnection)
        handled[ch.info.remote] = ch
        async for data in ch:
            await ch.send(b"%d:%s" % (ch.id, data))

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "udp://127.0.0.1:0", handler)
        assert address.port not in (None, 0)
        clients = [await pool.connect(address) for _ in range(3)]
        replies: dict[int, list[bytes]] = {}

        async def talk(i: int, ch: Any) -> None:
            replies[i] = []
            for n in range(5):
                await ch.send(b"client %d msg %d" % (i, n))
                replies[i].append(await ch.receive())

        with trio.fail_after(10):
            async with trio.open_nursery() as talkers:
                for i, ch in enumerate(clients):
                    talkers.start_soon(talk, i, ch)
        assert len(handled) == 3
        server_ids = set()
        for i, ch in enumerate(clients):
            server_ch = handled[ch.info.local]
            server_ids.add(server_ch.id)
            assert server_ch.info.remote == ch.info.local
            assert server_ch.info.local == ("127.0.0.1", address.port)
            assert server_ch.info.transport == "udp"
            assert replies[i] == [b"%d:client %d msg %d" % (server_ch.id, i, n) for n in range(5)]
        assert len(server_ids) == 3
        nursery.cancel_scope.cancel()


async def test_udp_serve_peer_queue_drops_beyond_its_size() -> None:
    gate = trio.Event()
    channels: list[Any] = []
    received: list[bytes] = []
    got_after = trio.Event()
    drained = trio.Event()

    async def handler(ch: Any) -> None:
        channels.append(ch)
        await gate.wait()
        async for data in ch:
            received.append(data)
            if len(received) == 2:
                drained.set()
            if data == b"after":
                got_after.set()
                await ch.send(b"still here")

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(partial(pool.serve, queue=2), "udp://127.0.0.1:0", handler)
        ch = await pool.connect(address)
        for i in range(10):
            await ch.send(b"%d" % i)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        (server_ch,) = channels
        assert server_ch.dropped == 8
        gate.set()
        with trio.fail_after(5):
            await drained.wait()
        await ch.send(b"after")
        with trio.fail_after(5):
            await got_after.wait()
            assert await ch.receive() == b"still here"
        assert received == [b"0", b"1", b"after"]
        nursery.cancel_scope.cancel()


async def test_udp_serve_handler_error_does_not_stop_listener() -> None:
    async def handler(ch: Any) -> None:
        data = await ch.receive()
        if data == b"crash":
            raise ValueError("datagram handler failed")
        await ch.send(b"ok " + data)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "udp://127.0.0.1:0", handler)
        bad = await pool.connect(address)
        await bad.send(b"crash")
        good = await pool.connect(address)
        await good.send(b"hi")
        with trio.fail_after(5):
            assert await good.receive() == b"ok hi"
        # The crashed peer's channel was closed and forgotten: its next datagram starts afresh.
        await bad.send(b"retry")
        with trio.fail_after(5):
            assert await bad.receive() == b"ok retry"
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# unix+dgram
# ---------------------------------------------------------------------------


async def test_unix_dgram_client_path_info_and_cleanup(sock_dir: Path, no_fd_leak: object) -> None:
    server_path = sock_dir / "d.sock"
    seen: list[Any] = []

    async def handler(ch: Any) -> None:
        seen.append(ch)
        await uecho(ch)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, f"unix+dgram://{server_path}", handler)
        assert address.path == str(server_path)
        assert server_path.is_socket()
        ch = await pool.connect(address)
        info = ch.info
        assert info.transport == "unix+dgram"
        assert info.family == socket.AF_UNIX
        assert info.socktype == socket.SOCK_DGRAM
        assert info.remote == str(server_path) == ch.socket.getpeername()
        client_path = info.local
        assert isinstance(client_path, str)
        assert client_path == ch.socket.getsockname()
        assert Path(client_path).is_socket()
        await ch.send(b"reply to me")
        with trio.fail_after(5):
            assert await ch.receive() == b"reply to me"
        (server_ch,) = seen
        assert server_ch.info.remote == client_path
        assert server_ch.info.local == str(server_path)
        assert server_ch.info.transport == "unix+dgram"
        await ch.aclose()
        assert not Path(client_path).exists()
        nursery.cancel_scope.cancel()
    # The listener closed with the serve task: its socket file is gone.
    assert not server_path.exists()


async def test_unix_dgram_unbound_client_cannot_get_replies(sock_dir: Path) -> None:
    errors: list[BaseException] = []
    done = trio.Event()

    async def handler(ch: Any) -> None:
        await ch.receive()
        try:
            await ch.send(b"reply")
        except trio.BrokenResourceError as exc:
            errors.append(exc)
        done.set()

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, f"unix+dgram://{sock_dir}/d.sock", handler)
        ch = await pool.connect(address, bind=False)
        assert ch.info.local in ("", None)
        await ch.send(b"hello")
        with trio.fail_after(5):
            await done.wait()
        assert len(errors) == 1
        assert "no address" in str(errors[0])
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("scheme", ["unix", "unix+dgram"])
async def test_unix_listener_removes_its_file(scheme: str, sock_dir: Path) -> None:
    path = sock_dir / "l.sock"
    async with conduit.open_pool() as pool:
        listener = await pool.listen(f"{scheme}://{path}")
        assert path.is_socket()
        await listener.aclose()
        assert not path.exists()
        listener = await pool.listen(f"{scheme}://{path}")
        assert path.is_socket()
    # Closing the pool closes the listener, which removes the file.
    assert not path.exists()


@pytest.mark.parametrize("scheme", ["unix", "unix+dgram"])
async def test_unix_stale_socket_file_is_replaced(scheme: str, sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    kind = socket.SOCK_STREAM if scheme == "unix" else socket.SOCK_DGRAM
    stale_unix_socket(path, kind)
    with socket.socket(socket.AF_UNIX, kind) as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(str(path))  # stale indeed: nobody answers there
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        handler = uecho if scheme == "unix+dgram" else _stream_echo
        address = await nursery.start(pool.serve, f"{scheme}://{path}", handler)
        assert path.is_socket()
        conn = await pool.connect(address)
        if scheme == "unix":
            await conn.send_all(b"alive")
            assert await conn.receive_some() == b"alive"
        else:
            await conn.send(b"alive")
            with trio.fail_after(5):
                assert await conn.receive() == b"alive"
        nursery.cancel_scope.cancel()


async def _stream_echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


@pytest.mark.parametrize("scheme", ["unix", "unix+dgram"])
async def test_unix_live_socket_file_is_address_in_use(scheme: str, sock_dir: Path) -> None:
    path = sock_dir / "live.sock"
    async with conduit.open_pool() as pool:
        first = await pool.listen(f"{scheme}://{path}")
        with pytest.raises(conduit.AddressInUse) as info:
            await pool.listen(f"{scheme}://{path}")
        assert info.value.errno == errno.EADDRINUSE
        assert str(path) in str(info.value)
        # The live server's file was not touched.
        assert path.is_socket()
        client = await pool.connect(first.address)
        assert client is not None
    # A live server that is not ours is left alone too.
    kind = socket.SOCK_STREAM if scheme == "unix" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_UNIX, kind) as foreign:
        foreign.bind(str(path))
        if kind == socket.SOCK_STREAM:
            foreign.listen()
        async with conduit.open_pool() as pool:
            with pytest.raises(conduit.AddressInUse):
                await pool.listen(f"{scheme}://{path}")
        assert path.is_socket()
    os.unlink(path)


async def test_unix_path_that_is_not_a_socket_is_refused(sock_dir: Path) -> None:
    path = sock_dir / "regular-file"
    path.write_text("not a socket")
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressInUse, match="not a socket"):
            await pool.listen(f"unix://{path}")
    assert path.read_text() == "not a socket"


async def test_unix_connect_to_missing_path_is_refused(sock_dir: Path) -> None:
    async with conduit.open_pool() as pool:
        for scheme in ("unix", "unix+dgram"):
            with pytest.raises(conduit.ConnectionRefused):
                await pool.connect(f"{scheme}://{sock_dir}/nobody.sock")
    # A failed unix+dgram connect removes the client path it had bound.
    assert sorted(p.name for p in sock_dir.iterdir()) == []
