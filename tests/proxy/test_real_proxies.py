"""Against real proxies started by the tests: Dante, tinyproxy, squid, microsocks.

Each proxy listens on 127.0.0.1 and connects out from 127.0.0.1 only; the
targets are echo and banner servers in this process. What is checked: data
through the tunnel both ways, ``conn.info`` (the target as ``remote``, the
chain in ``via`` with passwords hidden), bytes sent by the target right after
the tunnel opens (a banner) arriving whole, authentication with right, wrong
and missing credentials, refused targets, UDP ASSOCIATE, and chains of three
different proxies.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import trio_conduit as conduit

from ..conftest import closed_udp_port, free_tcp_port
from .conftest import RealProxy

pytestmark = pytest.mark.interop

BANNER = bytes(range(256)) * 400  # 100 KiB, arriving right after the tunnel opens


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def banner_then_echo(conn: Any) -> None:
    await conn.send_all(BANNER)
    await echo(conn)


@asynccontextmanager
async def targets(host: str = "127.0.0.1") -> AsyncIterator[tuple[conduit.Pool, str, str]]:
    """A pool, an echo server's URL and a banner server's URL."""
    where = f"[{host}]" if ":" in host else host
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        echo_at = await nursery.start(pool.serve, f"tcp://{where}:0", echo)
        banner_at = await nursery.start(pool.serve, f"tcp://{where}:0", banner_then_echo)
        yield pool, str(echo_at), str(banner_at)
        nursery.cancel_scope.cancel()


async def round_trip(conn: Any, payload: bytes = b"ping through the proxy") -> None:
    await conn.send_all(payload)
    got = b""
    while len(got) < len(payload):
        data = await conn.receive_some()
        assert data, "the tunnel closed early"
        got += data
    assert got == payload


async def read_exactly(conn: Any, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = await conn.receive_some(n - len(got))
        assert data, f"the tunnel closed after {len(got)} of {n} bytes"
        got += data
    return bytes(got)


def closed_tcp_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (just freed)."""
    return free_tcp_port()


# ---------------------------------------------------------------------------
# Dante
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4"])
async def test_dante_connect(dante: RealProxy, scheme: str) -> None:
    async with targets() as (pool, echo_url, _):
        conn = await pool.connect(echo_url, proxies=[dante.url_with(scheme)], timeout=10)
        async with conn:
            await round_trip(conn)
            port = int(echo_url.rsplit(":", 1)[1])
            assert conn.info.remote == ("127.0.0.1", port)
            assert conn.info.via == (dante.url_with(scheme),)
            assert conn.info.transport == "tcp"
            assert isinstance(conn, conduit.HalfCloseableStreamConnection)


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4"])
async def test_dante_host_names(dante: RealProxy, scheme: str) -> None:
    """``localhost``: resolved here for socks5 and socks4, by Dante for socks5h."""
    async with targets() as (pool, echo_url, _):
        url = echo_url.replace("127.0.0.1", "localhost")
        conn = await pool.connect(url, proxies=[dante.url_with(scheme)], timeout=10)
        async with conn:
            await round_trip(conn)
            assert conn.info.remote == ("localhost", int(url.rsplit(":", 1)[1]))


async def test_dante_refuses_socks4a_names(dante: RealProxy) -> None:
    """Dante speaks SOCKS4 but not 4a: a name is rejected (reply 91), and the error names the hop."""
    async with targets() as (pool, echo_url, _):
        url = echo_url.replace("127.0.0.1", "localhost")
        with pytest.raises(conduit.ProxyRejected) as info:
            await pool.connect(url, proxies=[dante.url_with("socks4a")], timeout=10)
    exc = info.value
    assert exc.hop == 1
    assert exc.proxy == dante.url_with("socks4a")
    assert "SOCKS4a reply 91" in str(exc)
    assert "proxy hop 1" in str(exc)


async def test_dante_banner_arrives_whole(dante: RealProxy) -> None:
    async with targets() as (pool, _, banner_url):
        for scheme in ("socks5", "socks4"):
            conn = await pool.connect(banner_url, proxies=[dante.url_with(scheme)], timeout=10)
            async with conn:
                assert await read_exactly(conn, len(BANNER)) == BANNER
                await round_trip(conn)


async def test_dante_refused_target(dante: RealProxy) -> None:
    async with targets() as (pool, _, _):
        port = closed_tcp_port()
        with pytest.raises(conduit.ProxyTargetRefused) as info:
            await pool.connect(f"tcp://127.0.0.1:{port}", proxies=[dante.url_with("socks5")], timeout=10)
    exc = info.value
    assert isinstance(exc, conduit.ConnectionRefused)
    assert isinstance(exc, ConnectionRefusedError)
    assert exc.hop == 1
    assert "SOCKS5 reply 5: connection refused" in str(exc)
    assert exc.address == f"tcp://127.0.0.1:{port}"


async def test_dante_ruleset_refusal(dante: RealProxy) -> None:
    """Dante's configuration blocks port 1: reply 2, "not allowed by ruleset"."""
    async with targets() as (pool, _, _):
        with pytest.raises(conduit.ProxyRejected) as info:
            await pool.connect("tcp://127.0.0.1:1", proxies=[dante.url_with("socks5")], timeout=10)
    assert "SOCKS5 reply 2: connection not allowed by ruleset" in str(info.value)


async def test_dante_username_auth(dante_auth: RealProxy) -> None:
    user, password = dante_auth.user, dante_auth.password
    assert user is not None
    assert password is not None
    async with targets() as (pool, echo_url, _):
        good = dante_auth.url_with("socks5", user, password)
        conn = await pool.connect(echo_url, proxies=[good], timeout=10)
        async with conn:
            await round_trip(conn)
            assert conn.info.via == (f"socks5://{user}:***@127.0.0.1:{dante_auth.port}",)

        wrong = dante_auth.url_with("socks5", user, password + "x")
        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[wrong], timeout=10)
        assert "user name or password refused" in str(info.value)
        assert info.value.hop == 1
        assert password not in str(info.value)

        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[dante_auth.url_with("socks5")], timeout=10)
        assert "no acceptable authentication method (it wants credentials)" in str(info.value)


@pytest.mark.parametrize("auth", [False, True])
async def test_dante_udp_associate(dante: RealProxy, dante_auth: RealProxy, auth: bool) -> None:
    proxy = dante_auth if auth else dante
    url = proxy.url_with("socks5", proxy.user, proxy.password) if auth else proxy.url_with("socks5")
    async with conduit.open_pool() as pool:
        server = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        with server:
            channel = await pool.connect(f"udp://127.0.0.1:{port}", proxies=[url], timeout=10)
            async with channel:
                assert channel.info.remote == ("127.0.0.1", port)
                assert channel.info.via == (url.replace(f":{proxy.password}@", ":***@") if auth else url,)
                await channel.send(b"datagram one")
                data, relay = await server.recvfrom(65536)
                assert data == b"datagram one"
                # The relay is Dante, on loopback, not our own socket.
                assert relay[0] == "127.0.0.1"
                assert relay[1] != channel.info.local[1]
                await server.sendto(b"reply one", relay)
                with trio.fail_after(5):
                    assert await channel.receive() == b"reply one"
                # Through the relay, to anyone: send_to / receive_from.
                await channel.send_to(b"two", ("127.0.0.1", port))
                data, relay = await server.recvfrom(65536)
                assert data == b"two"
                await server.sendto(b"reply two", relay)
                with trio.fail_after(5):
                    assert await channel.receive_from() == (b"reply two", ("127.0.0.1", port))


async def test_dante_udp_drops_strangers(dante: RealProxy) -> None:
    """A connected channel keeps only the target's datagrams, even though the relay forwards anyone's."""
    async with conduit.open_pool() as pool:
        target = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with target, stranger:
            await target.bind(("127.0.0.1", 0))
            await stranger.bind(("127.0.0.1", 0))
            port = target.getsockname()[1]
            channel = await pool.connect(
                f"udp://127.0.0.1:{port}", proxies=[dante.url_with("socks5")], timeout=10
            )
            async with channel:
                await channel.send(b"hello")
                _, relay = await target.recvfrom(100)
                # Dante only forwards replies from hosts the client sent to: send to the stranger too.
                await channel.send_to(b"hi stranger", stranger.getsockname())
                await stranger.recvfrom(100)
                await stranger.sendto(b"from the stranger", relay)
                await trio.sleep(0.2)
                await target.sendto(b"from the target", relay)
                with trio.fail_after(5):
                    assert await channel.receive() == b"from the target"
                assert channel.dropped >= 1


async def test_dante_udp_refused_target(dante: RealProxy) -> None:
    """Dante passes a refused datagram back: the next receive raises ConnectionRefused, as on a
    connected UDP socket, naming the target and the relay."""
    async with conduit.open_pool() as pool:
        port = closed_udp_port()
        channel = await pool.connect(
            f"udp://127.0.0.1:{port}", proxies=[dante.url_with("socks5")], timeout=10
        )
        async with channel:
            await channel.send(b"anyone?")
            with trio.fail_after(5), pytest.raises(conduit.ConnectionRefused) as info:
                await channel.receive()
    assert f"127.0.0.1:{port} through the SOCKS5 UDP relay at 127.0.0.1:" in str(info.value)


# ---------------------------------------------------------------------------
# HTTP: tinyproxy and squid
# ---------------------------------------------------------------------------


async def test_tinyproxy_basic_auth(tinyproxy: RealProxy) -> None:
    async with targets() as (pool, echo_url, banner_url):
        conn = await pool.connect(echo_url, proxies=[tinyproxy.url], timeout=10)
        async with conn:
            await round_trip(conn)
            assert conn.info.via == (f"http://alice:***@127.0.0.1:{tinyproxy.port}",)
        conn = await pool.connect(banner_url, proxies=[tinyproxy.url], timeout=10)
        async with conn:
            assert await read_exactly(conn, len(BANNER)) == BANNER

        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[tinyproxy.url_with("http", "alice", "wrong")], timeout=10)
        assert "401 Unauthorized (credentials refused)" in str(info.value)
        assert info.value.hop == 1
        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[tinyproxy.url_with("http")], timeout=10)
        assert "(the proxy wants credentials)" in str(info.value)


async def test_tinyproxy_refused_target(tinyproxy: RealProxy) -> None:
    """tinyproxy says only "500 Unable to connect": a rejection carrying its status line."""
    async with targets() as (pool, _, _):
        with pytest.raises(conduit.ProxyRejected) as info:
            await pool.connect(f"tcp://127.0.0.1:{closed_tcp_port()}", proxies=[tinyproxy.url], timeout=10)
    assert "HTTP/1.1 500 Unable to connect" in str(info.value)
    assert info.value.hop == 1


async def test_squid_basic_auth(squid: RealProxy) -> None:
    async with targets() as (pool, echo_url, banner_url):
        conn = await pool.connect(echo_url, proxies=[squid.url], timeout=10)
        async with conn:
            await round_trip(conn)
        conn = await pool.connect(banner_url, proxies=[squid.url], timeout=10)
        async with conn:
            assert await read_exactly(conn, len(BANNER)) == BANNER
        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[squid.url_with("http", "bob", "nope")], timeout=10)
        assert "407" in str(info.value)
        assert squid.password is not None
        assert squid.password not in str(info.value)


async def test_squid_refused_target(squid: RealProxy) -> None:
    """squid names the errno (X-Squid-Error: ERR_CONNECT_FAIL 111): a typed refusal."""
    async with targets() as (pool, _, _):
        with pytest.raises(conduit.ProxyTargetRefused) as info:
            await pool.connect(f"tcp://127.0.0.1:{closed_tcp_port()}", proxies=[squid.url], timeout=10)
    assert "503 Service Unavailable" in str(info.value)
    assert "ERR_CONNECT_FAIL 111" in str(info.value)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_squid_ipv6_target(squid: RealProxy) -> None:
    """CONNECT [::1]:port with the same authority in Host: squid parses it and connects over IPv6."""
    async with targets("::1") as (pool, echo_url, _):
        assert echo_url.startswith("tcp://[::1]:")
        conn = await pool.connect(echo_url, proxies=[squid.url], timeout=10)
        async with conn:
            await round_trip(conn)
            assert conn.info.remote == ("::1", int(echo_url.rsplit(":", 1)[1]))
    # squid logs a tunnel once it has seen both ends close, in its own time: wait for the line
    # (up to 10 s) rather than read the log at once (a race a fast client loses)
    line = f"CONNECT [::1]:{echo_url.rsplit(':', 1)[1]}"
    log = ""
    with trio.move_on_after(10):
        while line not in (log := (squid.directory / "access.log").read_text()):
            await trio.sleep(0.02)
    assert line in log


# ---------------------------------------------------------------------------
# microsocks
# ---------------------------------------------------------------------------


async def test_microsocks(microsocks: RealProxy) -> None:
    async with targets() as (pool, echo_url, banner_url):
        for scheme in ("socks5", "socks5h"):
            url = microsocks.url_with(scheme, microsocks.user, microsocks.password)
            conn = await pool.connect(banner_url.replace("127.0.0.1", "localhost"), proxies=[url], timeout=10)
            async with conn:
                assert await read_exactly(conn, len(BANNER)) == BANNER
                await round_trip(conn)
        wrong = microsocks.url_with("socks5", "carol", "wrong")
        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[wrong], timeout=10)
        assert "RFC 1929 status" in str(info.value)


# ---------------------------------------------------------------------------
# chains
# ---------------------------------------------------------------------------


async def test_chain_of_three_different_proxies(
    dante: RealProxy, tinyproxy: RealProxy, microsocks: RealProxy
) -> None:
    """Dante (SOCKS5) → tinyproxy (HTTP, Basic) → microsocks (SOCKS5h, user/password) → the target."""
    chain = [dante.url_with("socks5"), tinyproxy.url, microsocks.url.replace("socks5://", "socks5h://")]
    async with targets() as (pool, echo_url, banner_url):
        conn = await pool.connect(echo_url, proxies=chain, timeout=10)
        async with conn:
            await round_trip(conn, b"x" * 200_000)
            assert conn.info.via == (
                f"socks5://127.0.0.1:{dante.port}",
                f"http://alice:***@127.0.0.1:{tinyproxy.port}",
                f"socks5h://carol:***@127.0.0.1:{microsocks.port}",
            )
            assert conn.info.remote == ("127.0.0.1", int(echo_url.rsplit(":", 1)[1]))
            # Half-close goes through all three.
            await conn.send_eof()
            assert await conn.receive_some() == b""
        conn = await pool.connect(banner_url.replace("127.0.0.1", "localhost"), proxies=chain, timeout=10)
        async with conn:
            assert await read_exactly(conn, len(BANNER)) == BANNER


async def test_chain_with_squid_and_socks4(dante: RealProxy, squid: RealProxy, microsocks: RealProxy) -> None:
    chain = [squid.url, dante.url_with("socks4"), microsocks.url]
    async with targets() as (pool, echo_url, _):
        conn = await pool.connect(echo_url, proxies=chain, timeout=10)
        async with conn:
            await round_trip(conn)


async def test_chain_failure_names_the_hop(
    dante: RealProxy, tinyproxy: RealProxy, microsocks: RealProxy
) -> None:
    async with targets() as (pool, echo_url, _):
        wrong = microsocks.url_with("socks5", "carol", "wrong")
        with pytest.raises(conduit.ProxyAuthenticationError) as info:
            await pool.connect(echo_url, proxies=[dante.url_with("socks5"), tinyproxy.url, wrong], timeout=10)
        assert info.value.hop == 3
        assert str(info.value).startswith(f"proxy hop 3 (socks5://carol:***@127.0.0.1:{microsocks.port})")
        with pytest.raises(conduit.ProxyTargetRefused) as refused:
            await pool.connect(
                f"tcp://127.0.0.1:{closed_tcp_port()}",
                proxies=[tinyproxy.url, dante.url_with("socks5")],
                timeout=10,
            )
        assert refused.value.hop == 2


async def test_own_server_in_a_chain_with_real_proxies(
    own_server: Any, dante: RealProxy, tinyproxy: RealProxy
) -> None:
    """Our ProxyServer (another process) as a hop between real ones, each protocol it speaks."""
    own = f"127.0.0.1:{own_server.proxy}"
    for scheme in ("socks5h", "socks4a", "http"):
        chain = [tinyproxy.url, f"{scheme}://{own}", dante.url_with("socks5")]
        async with targets() as (pool, echo_url, _):
            conn = await pool.connect(echo_url.replace("127.0.0.1", "localhost"), proxies=chain, timeout=10)
            async with conn:
                await round_trip(conn)
