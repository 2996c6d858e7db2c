"""udt:// through the pool: trio's stream contract, message channels, the multiplexer, errors, leaks."""

from __future__ import annotations

import hashlib
import math
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio_conduit_plugins.udt import (
    CongestionControl,
    FixedRateCC,
    UDTMessageChannel,
    UDTStream,
    UDTTimeout,
)
from trio_conduit_plugins.udt._driver import _REGISTRY, Multiplexer
from trio_conduit_plugins.udt._engine import State

import trio_conduit as conduit

from ..conftest import assert_no_fd_leak, live_tasks, open_fds

Pair = tuple[Any, Any]
SMALL = {"sndbuf": 32 * 1472, "rcvbuf": 32 * 1472}


@asynccontextmanager
async def udt_pairs(
    query: str = "", **opts: Any
) -> AsyncIterator[tuple[Callable[..., Awaitable[Pair]], Any]]:
    async with conduit.open_pool() as pool:
        listener = await pool.listen(f"udt://127.0.0.1:0{query}", **opts)

        async def make(*, accepted_first: bool = False) -> Pair:
            client = await pool.connect(listener.address, **opts)
            server = await listener.accept()
            return (server, client) if accepted_first else (client, server)

        yield make, listener


async def clog(stream: Any) -> None:
    """Fill the send buffer (and the peer's receive buffer) until nothing moves any more.

    Settled means: send_all blocked twice in a row for 0.4 s with the send buffer
    full and nothing acknowledged in between (the receiver's window, counted in
    bytes, may take a few more small packets after the first block).
    """
    quiet = 0
    while quiet < 2:
        before = stream.session.stats.pkt_recv_ack
        with trio.move_on_after(0.4) as cs:
            await stream.send_all(b"x" * 1000)
        settled = cs.cancelled_caught and stream.session.send_space == 0
        quiet = quiet + 1 if settled and stream.session.stats.pkt_recv_ack == before else 0


@pytest.mark.parametrize("accepted_first", [False, True])
async def test_check_two_way_stream(accepted_first: bool) -> None:
    async with udt_pairs() as (make, _), udt_pairs("?sndbuf=47104&rcvbuf=47104") as (make_small, _l2):

        async def maker() -> Pair:
            return await make(accepted_first=accepted_first)

        async def clogged() -> Pair:
            s, r = await make_small(accepted_first=accepted_first)
            # check_two_way_stream flips the pair too: clog both directions
            async with trio.open_nursery() as nursery:
                nursery.start_soon(clog, s)
                nursery.start_soon(clog, r)
            return s, r

        await trio.testing.check_two_way_stream(maker, clogged)


async def test_bulk_sha256_and_info_and_stats() -> None:
    data = random.Random(1).randbytes(8 * 1024 * 1024)
    async with udt_pairs() as (make, listener):
        client, server = await make()
        assert isinstance(client, UDTStream)
        assert isinstance(server, UDTStream)
        assert client.info.transport == "udt"
        assert client.info.socktype == socket.SOCK_DGRAM
        assert client.info.protocol == socket.IPPROTO_UDP
        assert client.info.remote == ("127.0.0.1", listener.address.port)
        assert server.info.remote[1] == client.info.local[1]
        digest = hashlib.sha256()

        async def reader() -> None:
            got = 0
            while got < len(data):
                chunk = await server.receive_some()
                digest.update(chunk)
                got += len(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await client.send_all(data)
        assert digest.digest() == hashlib.sha256(data).digest()
        sent, got = client.stats, server.stats
        assert sent.bytes_sent >= len(data)
        assert got.bytes_recv >= len(data)
        assert sent.pkt_sent >= math.ceil(len(data) / 1456)
        assert sent.mss == got.mss == 1500
        assert sent.socket_id == got.peer_socket_id
        assert sent.pkt_recv_ack > 0
        assert got.pkt_sent_ack > 0
        assert 0 < got.ms_rtt < 200
        assert sent.congestion == "NativeCC"


async def test_listener_and_its_connections_share_one_udp_socket() -> None:
    async with udt_pairs() as (make, listener):
        fds_before = len(open_fds())
        pairs = [await make() for _ in range(5)]
        # five client sockets, no new server socket
        assert len(open_fds()) == fds_before + 5
        mux = listener.inner.multiplexer
        assert isinstance(mux, Multiplexer)
        assert mux.users == 1 + 5
        assert len(mux.endpoint.sessions) == 5
        for c, s in pairs:
            assert s.info.local == listener.inner.multiplexer.local
            await c.send_all(b"ping %d" % c.id)
            assert await s.receive_some() == b"ping %d" % c.id
        for c, s in pairs:
            await c.aclose()
            await s.aclose()
        assert mux.users == 1
        assert mux.endpoint.state_size == 0


async def test_outgoing_connection_bound_to_the_listener_port_shares_its_socket() -> None:
    async with conduit.open_pool() as pool:
        a = await pool.listen("udt://127.0.0.1:0")
        b = await pool.listen("udt://127.0.0.1:0")
        mux = a.inner.multiplexer
        fds = len(open_fds())
        out = await pool.connect(b.address, local=f"127.0.0.1:{a.address.port}")
        assert len(open_fds()) == fds  # no new socket: it joined a's multiplexer
        assert out.info.local == mux.local
        assert mux.users == 2
        inbound = await b.accept()
        assert inbound.info.remote == ("127.0.0.1", a.address.port)
        await out.send_all(b"via the shared port")
        assert await inbound.receive_some() == b"via the shared port"


async def test_message_mode_channel() -> None:
    async with udt_pairs("?mode=message") as (make, _):
        client, server = await make()
        assert isinstance(client, UDTMessageChannel)
        assert isinstance(server, UDTMessageChannel)
        msgs = [os.urandom(n) for n in (1, 1456, 1457, 100_000, 0, 7)]
        for m in msgs:
            await client.send(m)
        for m in msgs:
            assert await server.receive() == m
        await server.send_message(b"reply", ttl=5.0, in_order=False)
        assert await client.receive() == b"reply"
        await client.aclose()
        with pytest.raises(trio.EndOfChannel):
            await server.receive()
        with pytest.raises(trio.BrokenResourceError):
            await server.send(b"after the peer closed")
        with pytest.raises(trio.ClosedResourceError):
            await client.send(b"after close")


async def test_message_larger_than_the_send_buffer_is_refused() -> None:
    async with udt_pairs("?mode=message&sndbuf=47104") as (make, _):
        client, _server = await make()
        assert client.max_message_size == 32 * 1456
        with pytest.raises(conduit.ConduitError, match="larger than the send buffer"):
            await client.send(bytes(client.max_message_size + 1))


async def test_message_ttl_option_drops_stale_messages() -> None:
    async with udt_pairs("?mode=message") as (make, _):
        client, server = await make()
        # a message that cannot be retransmitted in time is dropped: simulate with ttl 0 and a lost packet
        session = client.session
        server.session  # noqa: B018
        await client.send_message(b"a" * 10, ttl=math.inf)
        assert await server.receive() == b"a" * 10
        assert session.state is State.CONNECTED


async def test_rendezvous_between_two_pools() -> None:
    ports = []
    for _ in range(2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    p1, p2 = ports
    async with conduit.open_pool() as pool1, conduit.open_pool() as pool2:
        results: dict[str, Any] = {}

        async def side(pool: Any, mine: int, theirs: int, key: str) -> None:
            results[key] = await pool.connect(
                f"udt://127.0.0.1:{theirs}?rendezvous=1", local=f"127.0.0.1:{mine}"
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, pool1, p1, p2, "a")
            nursery.start_soon(side, pool2, p2, p1, "b")
        a, b = results["a"], results["b"]
        assert a.session.role == "rendezvous"
        assert a.session.peer_id == b.session.socket_id
        await a.send_all(b"hello rendezvous")
        assert await b.receive_some() == b"hello rendezvous"
        await b.send_all(b"back")
        assert await a.receive_some() == b"back"


async def test_connect_timeout_to_nobody() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        async with conduit.open_pool() as pool:
            start = trio.current_time()
            with pytest.raises(conduit.ConnectTimeout, match=r"no UDT handshake response within 0\.5 s"):
                await pool.connect(f"udt://127.0.0.1:{port}?connect_timeout=0.5")
            assert trio.current_time() - start == pytest.approx(0.5, abs=0.2)
            # the socket saw the request retransmitted every 250 ms
            s.setblocking(False)
            requests = []
            while True:
                try:
                    requests.append(s.recv(100))
                except BlockingIOError:
                    break
            assert len(requests) in (2, 3)


async def test_backlog_full_is_connection_refused() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0", backlog=1)
        first = await pool.connect(listener.address)
        with pytest.raises(conduit.ConnectionRefused, match="rejected"):
            await pool.connect(listener.address)
        assert first.session.state is State.CONNECTED


async def test_mode_mismatch_is_connection_refused() -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        with pytest.raises(conduit.ConnectionRefused):
            await pool.connect(f"{listener.address}?mode=message")


@pytest.mark.parametrize(
    ("query", "match"),
    [
        ("mode=datagram", "mode must be"),
        ("congestion=nonesuch", "unknown congestion control 'nonesuch'"),
        ("congestion=fixed:rate=fast", "congestion control 'fixed'"),
        ("congestion=fixed:rate", "is not key=value"),
        ("bogus=1", "unknown option 'bogus'"),
    ],
)
async def test_bad_options_are_address_errors(query: str, match: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match=match):
            await pool.connect(f"udt://127.0.0.1:9?{query}")


async def test_send_and_receive_timeouts() -> None:
    async with udt_pairs(send_timeout=0.3, receive_timeout=0.3, **SMALL) as (make, _):
        client, server = await make()
        with pytest.raises(UDTTimeout):
            await server.receive_some()
        with pytest.raises(UDTTimeout):
            while True:
                await client.send_all(b"y" * 10_000)
        assert isinstance(UDTTimeout(1, "x"), TimeoutError)


async def test_without_gso_and_gro() -> None:
    data = random.Random(2).randbytes(3 * 1024 * 1024)
    async with udt_pairs("?gso=0&gro=0") as (make, listener):
        client, server = await make()
        assert not listener.inner.multiplexer.gro
        assert not client._mux.gso
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send_all, data)
            got = bytearray()
            while len(got) < len(data):
                got += await server.receive_some()
        assert got == data


async def test_peer_closing_is_eof_then_broken_sends() -> None:
    async with udt_pairs() as (make, _):
        client, server = await make()
        await client.send_all(b"bye")
        await client.aclose()
        assert await server.receive_some() == b"bye"
        assert await server.receive_some() == b""
        with pytest.raises(trio.BrokenResourceError, match="the peer closed"):
            await server.send_all(b"x")


async def test_aclose_lingers_until_data_is_acknowledged() -> None:
    data = random.Random(3).randbytes(2 * 1024 * 1024)
    async with udt_pairs() as (make, _):
        client, server = await make()

        async def send_and_close() -> None:
            await client.send_all(data)
            await client.aclose()
            assert client.session.close_reason is not None
            assert client.session.send_buffered == 0  # everything was acknowledged

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_and_close)
            got = bytearray()
            while chunk := await server.receive_some():
                got += chunk
        assert got == data


# ---------------------------------------------------------------------------
# congestion control plugins
# ---------------------------------------------------------------------------


class Slow(CongestionControl):
    def init(self) -> None:
        self.pkt_send_period = 2000.0  # 500 packets a second
        self.cwnd = 100.0


class SlowPlugin:
    @conduit.hookimpl
    def conduit_congestion_controls(self) -> Mapping[str, Any]:
        return {"slow": Slow}


async def test_congestion_control_plugin_by_name() -> None:
    async with conduit.open_pool(plugins=[SlowPlugin()]) as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        client = await pool.connect(f"{listener.address}?congestion=slow")
        server = await listener.accept()
        assert client.stats.congestion == "Slow"
        assert server.stats.congestion == "NativeCC"
        start = trio.current_time()
        await client.send_all(bytes(100 * 1456))
        got = 0
        while got < 100 * 1456:
            got += len(await server.receive_some())
        assert trio.current_time() - start >= 0.18
        assert client.stats.us_pkt_snd_period == pytest.approx(2000.0)


async def test_congestion_control_as_a_keyword_and_builtin_names() -> None:
    async with udt_pairs() as (_make, listener), conduit.open_pool() as pool:
        c = await pool.connect(listener.address, congestion=lambda: FixedRateCC("20M"))
        assert c.stats.congestion == "FixedRateCC"
        c2 = await pool.connect(f"{listener.address}?congestion=bbr")
        assert c2.stats.congestion == "BBRLikeCC"


async def test_duplicate_congestion_control_names_are_a_plugin_error() -> None:
    class Dup:
        @conduit.hookimpl
        def conduit_congestion_controls(self) -> Mapping[str, Any]:
            return {"udt": Slow}

    async with conduit.open_pool(plugins=[Dup()]) as pool:
        with pytest.raises(conduit.PluginError, match="'udt' registered twice"):
            await pool.connect("udt://127.0.0.1:9")


# ---------------------------------------------------------------------------
# cancellation and leaks
# ---------------------------------------------------------------------------


def _registry_entries() -> int:
    return sum(len(v) for v in _REGISTRY.values())


@pytest.mark.parametrize("seed", range(12))
async def test_cancel_and_close_at_random_points_leaves_nothing(seed: int) -> None:
    rng = random.Random(seed)
    fds = open_fds()
    tasks = len(live_tasks())
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        mux = listener.inner.multiplexer

        async def server() -> None:
            while True:
                conn = await listener.accept()
                try:
                    with trio.move_on_after(rng.random() * 0.05):
                        while await conn.receive_some():
                            pass
                    if rng.random() < 0.5:
                        await conn.aclose()
                finally:
                    await trio.aclose_forcefully(conn)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            for _ in range(8):
                with trio.move_on_after(rng.random() * 0.02):
                    c = await pool.connect(listener.address)
                    try:
                        with trio.move_on_after(rng.random() * 0.05):
                            await c.send_all(bytes(rng.randint(1, 500_000)))
                        if rng.random() < 0.5:
                            with trio.move_on_after(rng.random() * 0.05):
                                await c.aclose()
                    finally:
                        await trio.aclose_forcefully(c)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        await listener.aclose()
        assert mux.closed
        assert mux.endpoint.state_size == 0
        assert pool.connections == []
    assert _registry_entries() == 0
    assert len(live_tasks()) == tasks
    assert_no_fd_leak(fds)


async def test_pool_close_ends_multiplexer_tasks_and_sockets() -> None:
    fds = open_fds()
    tasks = len(live_tasks())
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        c = await pool.connect(listener.address)
        await c.send_all(b"x")
        assert len(live_tasks()) == tasks + 2  # one task per multiplexer
    assert len(live_tasks()) == tasks
    assert _registry_entries() == 0
    assert_no_fd_leak(fds)


async def test_cancelled_connect_leaves_nothing() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        fds = open_fds()
        async with conduit.open_pool() as pool:
            with trio.move_on_after(0.3):
                await pool.connect(f"udt://127.0.0.1:{port}")
            assert _registry_entries() == 0
        assert_no_fd_leak(fds)


async def test_serve_handlers_over_udt() -> None:
    async with conduit.open_pool() as pool:

        async def echo(conn: Any) -> None:
            while data := await conn.receive_some():
                await conn.send_all(data)

        async with trio.open_nursery() as nursery:
            address = await nursery.start(pool.serve, "udt://127.0.0.1:0", echo)
            conns = [await pool.connect(address) for _ in range(3)]
            for i, c in enumerate(conns):
                await c.send_all(b"echo %d" % i)
                assert await c.receive_some() == b"echo %d" % i
            for c in conns:
                await c.aclose()
            nursery.cancel_scope.cancel()
