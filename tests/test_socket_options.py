"""The shared socket path (nsock_make_socket): local bind, device, IP options, broadcast, reuse."""

from __future__ import annotations

import os
import socket

import pytest
import trio

import trio_conduit as conduit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _sink(conn: conduit.StreamConnection) -> None:
    while await conn.receive_some():
        pass


async def test_local_bind_keyword_and_query(nursery: trio.Nursery) -> None:
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        port = _free_port()
        conn = await pool.connect(addr, local=f"127.0.0.1:{port}")
        assert conn.info.local == ("127.0.0.1", port)
        port2 = _free_port()
        conn2 = await pool.connect(f"{addr}?local=127.0.0.1:{port2}")
        assert conn2.info.local == ("127.0.0.1", port2)
        conn3 = await pool.connect(addr, local="127.0.0.1")  # any port
        assert conn3.info.local[0] == "127.0.0.1"
        assert conn3.info.local[1] not in (0, port, port2)


async def test_local_bind_in_use_is_typed(nursery: trio.Nursery) -> None:
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(conduit.AddressInUse) as info:
                await pool.connect(addr, local=taken.getsockname())
        assert "local address" in str(info.value)


async def test_local_of_wrong_family_is_an_address_error(nursery: trio.Nursery) -> None:
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        with pytest.raises(conduit.AddressError, match="address family"):
            await pool.connect(addr, local="[::1]:0")
        with pytest.raises(conduit.AddressError, match="not an IP address"):
            await pool.connect(addr, local="example.org:5")


async def test_device_binds_and_unknown_device_is_clear(nursery: trio.Nursery) -> None:
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        if os.geteuid() != 0:  # without CAP_NET_RAW the error must say why
            with pytest.raises(conduit.PermissionDenied, match="CAP_NET_RAW"):
                await pool.connect(addr, device="lo")
            return
        conn = await pool.connect(addr, device="lo")
        bound = conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
        assert bound.rstrip(b"\0") == b"lo"
        with pytest.raises(conduit.ConnectError, match="nosuchdev0"):
            await pool.connect(addr, device="nosuchdev0")


async def test_ip_options_are_set_on_ipv4_and_refused_on_ipv6(nursery: trio.Nursery) -> None:
    nops = b"\x01\x01\x01\x01"  # four IPOPT_NOP: a valid, harmless option list
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        conn = await pool.connect(addr, ip_options=nops)
        assert conn.socket.getsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, 40) == nops
        await conn.send_all(b"through")  # the kernel accepts segments with these options
        with pytest.raises(TypeError, match="bytes"):
            await pool.connect(addr, ip_options="0101")
        addr6 = await nursery.start(pool.serve, "tcp://[::1]:0", _sink)
        with pytest.raises(conduit.AddressError, match="IPv4"):
            await pool.connect(addr6, ip_options=nops)


async def test_broadcast_only_when_asked(nursery: trio.Nursery) -> None:
    async def echo(ch: conduit.DatagramConnection) -> None:
        async for data in ch:
            await ch.send(data)

    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "udp://127.0.0.1:0", echo)
        plain = await pool.connect(addr)
        assert plain.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        asked = await pool.connect(addr, broadcast=True)
        assert asked.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        via_query = await pool.connect(f"{addr}?broadcast=1")
        assert via_query.socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        await asked.send(b"still works")
        assert await asked.receive() == b"still works"
        with pytest.raises(conduit.AddressError, match="datagram"):
            await pool.connect("tcp://127.0.0.1:9", broadcast=True)


async def test_listener_reuses_address_and_sets_nodelay(nursery: trio.Nursery) -> None:
    accepted: list[conduit.StreamConnection] = []
    got = trio.Event()

    async def keep(conn: conduit.StreamConnection) -> None:
        accepted.append(conn)
        got.set()
        await _sink(conn)

    async with conduit.open_pool() as pool:
        listener = await pool.listen("tcp://127.0.0.1:0")
        assert listener.inner.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        await listener.aclose()
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", keep)
        conn = await pool.connect(addr)
        await got.wait()
        for c in (conn, accepted[0]):
            assert c.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        no_delay_off = await pool.connect(f"{addr}?nodelay=0")
        assert no_delay_off.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0


async def test_congestion_control_option(nursery: trio.Nursery) -> None:
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        conn = await pool.connect(f"{addr}?congestion=cubic")
        algo = conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16)
        assert algo.rstrip(b"\0") == b"cubic"


async def test_keepalive_timing_and_user_timeout_are_set_on_the_socket(nursery: trio.Nursery) -> None:
    accepted: list[conduit.StreamConnection] = []
    got = trio.Event()

    async def keep(conn: conduit.StreamConnection) -> None:
        accepted.append(conn)
        got.set()
        await _sink(conn)

    timing = "keepalive_idle=7&keepalive_interval=3&keepalive_count=4&user_timeout=2.5"
    async with conduit.open_pool() as pool:
        addr = await nursery.start(pool.serve, f"tcp://127.0.0.1:0?{timing}", keep)
        by_url = await pool.connect(f"tcp://127.0.0.1:{addr.port}?{timing}")
        by_keyword = await pool.connect(
            f"tcp://127.0.0.1:{addr.port}",
            keepalive_idle=7,
            keepalive_interval=3,
            keepalive_count=4,
            user_timeout=2.5,
        )
        await got.wait()
        for c in (by_url, by_keyword, accepted[0]):
            sock = c.socket
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        plain = await pool.connect(f"tcp://127.0.0.1:{addr.port}")
        assert plain.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert plain.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
        for bad in ("keepalive_idle=0", "keepalive_count=128", "user_timeout=-1"):
            with pytest.raises(conduit.AddressError, match="bad value"):
                await pool.connect(f"tcp://127.0.0.1:{addr.port}?{bad}")


async def test_unknown_options_are_named() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match="unknown option 'nodelai'"):
            await pool.connect("tcp://127.0.0.1:9?nodelai=1")
        with pytest.raises(TypeError, match="unknown option 'nodelai'"):
            await pool.connect("tcp://127.0.0.1:9", nodelai=True)
        with pytest.raises(conduit.AddressError, match="bad value for option 'nodelay'"):
            await pool.connect("tcp://127.0.0.1:9?nodelay=maybe")


async def test_socket_created_hook_sees_every_socket(nursery: trio.Nursery) -> None:
    roles: list[conduit.SocketRole] = []

    class Spy:
        @conduit.hookimpl
        async def conduit_socket_created(
            self, sock: trio.socket.SocketType, role: conduit.SocketRole
        ) -> None:
            await trio.lowlevel.checkpoint()
            roles.append(role)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    async with conduit.open_pool(plugins=[Spy()]) as pool:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _sink)
        conn = await pool.connect(addr)
        assert conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert roles[:2] == [conduit.SocketRole.LISTEN, conduit.SocketRole.CONNECT]
