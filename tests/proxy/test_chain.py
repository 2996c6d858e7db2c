"""The chain driver against trio-conduit's own proxy server and hand-made misbehaving proxies.

Every proxy type, IPv6 proxies and targets, long chains, the bytes that come
with a proxy's reply (nmap#2534), timeouts over the whole chain (httpcore#1017),
typed errors naming the hop, passwords kept out of logs, a proxy type from a
plugin, ``spawn``, ``udp://`` through SOCKS5, and Trio's stream conformance
checks on a proxied connection.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit import hookimpl
from trio_conduit.proxy import Hop, ProxyServer, ProxyType, ProxyURL, Target, Tunnel

from ..conftest import free_tcp_port

SECRET = "hunter2-" + "x" * 8
Handler = Callable[[Any], Awaitable[object]]


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


@asynccontextmanager
async def lab(
    *, users: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[conduit.Pool, trio.Nursery, str, str]]:
    """A pool, a nursery, an echo server URL and our proxy server's host:port."""
    where = f"[{host}]" if ":" in host else host
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        target = await nursery.start(pool.serve, f"tcp://{where}:0", echo)
        proxy = await nursery.start(pool.serve, f"tcp://{where}:0", ProxyServer(pool, users=users))
        yield pool, nursery, str(target), proxy.hostport
        nursery.cancel_scope.cancel()


async def serve(nursery: trio.Nursery, pool: conduit.Pool, handler: Handler) -> str:
    address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
    return str(address.hostport)


async def round_trip(conn: Any, payload: bytes = b"through the chain") -> None:
    await conn.send_all(payload)
    got = b""
    while len(got) < len(payload):
        data = await conn.receive_some()
        assert data
        got += data
    assert got == payload


async def read_exactly(stream: Any, n: int) -> bytes:
    got = b""
    while len(got) < n:
        data = await stream.receive_some(n - len(got))
        assert data, f"closed after {got!r}"
        got += data
    return got


# ---------------------------------------------------------------------------
# every type, through our own server
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "socks4", "socks4a", "http"])
@pytest.mark.parametrize("by_name", [False, True])
async def test_each_type(scheme: str, by_name: bool) -> None:
    async with lab() as (pool, _, target, proxy):
        url = target.replace("127.0.0.1", "localhost") if by_name else target
        conn = await pool.connect(url, proxies=[f"{scheme}://{proxy}"], timeout=5)
        async with conn:
            await round_trip(conn)
            assert conn.info.via == (f"{scheme}://{proxy}",)
            assert conn.info.remote == (("localhost" if by_name else "127.0.0.1"), int(url.rsplit(":", 1)[1]))
            assert conn.info.family == socket.AF_INET
            assert conn in pool.connections
        assert conn not in pool.connections


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "http"])
async def test_ipv6_proxy_and_target(scheme: str) -> None:
    """An IPv6 proxy address and an IPv6 target (PySocks#157): brackets in URLs, ATYP 4, [::1] authority."""
    async with lab(host="::1") as (pool, _, target, proxy):
        assert proxy.startswith("[::1]:")
        conn = await pool.connect(target, proxies=[f"{scheme}://{proxy}"], timeout=5)
        async with conn:
            await round_trip(conn)
            assert conn.info.family == socket.AF_INET6
            assert conn.info.remote == ("::1", int(target.rsplit(":", 1)[1]))


async def test_socks4_refuses_ipv6_before_connecting() -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match="SOCKS4 is IPv4 only"):
            await pool.connect("tcp://[::1]:80", proxies=["socks4://127.0.0.1:1"])


async def test_long_mixed_chain() -> None:
    async with lab(users={"bob": SECRET}) as (pool, nursery, target, authed):
        plain = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        chain = [
            f"socks5h://bob:{SECRET}@{authed}",
            f"http://{plain.hostport}",
            f"socks4a://{plain.hostport}",
            f"http://bob:{SECRET}@{authed}",
            f"socks4://{plain.hostport}",
            f"socks5://{plain.hostport}",
        ]
        conn = await pool.connect(target.replace("127.0.0.1", "localhost"), proxies=chain, timeout=5)
        async with conn:
            await round_trip(conn, b"y" * 300_000)
            assert len(conn.info.via) == 6
            assert all(SECRET not in hop for hop in conn.info.via)
            assert conn.info.via[0] == f"socks5h://bob:***@{authed}"
            await conn.send_eof()
            assert await conn.receive_some() == b""


# ---------------------------------------------------------------------------
# bytes after the reply
# ---------------------------------------------------------------------------

BANNER = b"SSH-2.0-Banner right behind the proxy's reply\r\n"


async def fake_socks5(conn: Any) -> None:
    """Answers the greeting and the request, with the target's banner in the same write."""
    await read_exactly(conn, 3)
    await conn.send_all(b"\x05\x00")
    head = await read_exactly(conn, 5)
    await read_exactly(conn, {1: 5, 4: 17, 3: head[4] + 2}[head[3]])
    await conn.send_all(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00" + BANNER)
    await echo(conn)


async def fake_socks4(conn: Any) -> None:
    """nmap#2534's reproduction: ``printf '\\0Z\\0\\0\\0\\0\\0\\0BANNER'`` as the whole answer."""
    data = b""
    while data.count(b"\0", 8) < 1:
        data += await conn.receive_some()
    await conn.send_all(b"\0Z\0\0\0\0\0\0" + BANNER)
    await echo(conn)


async def fake_http(conn: Any) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        data += await conn.receive_some()
    await conn.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n" + BANNER)
    await echo(conn)


async def fake_socks5_speaking_for_the_next_hop(conn: Any) -> None:
    """Hop 1 sends its reply, hop 2's (HTTP) reply and the banner in one segment."""
    await read_exactly(conn, 3)
    await conn.send_all(b"\x05\x00")
    head = await read_exactly(conn, 5)
    await read_exactly(conn, {1: 5, 4: 17, 3: head[4] + 2}[head[3]])
    await conn.send_all(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"HTTP/1.1 200 OK\r\n\r\n" + BANNER)
    data = b""
    while b"\r\n\r\n" not in data:  # hop 2's CONNECT request, already answered
        data += await conn.receive_some()
    await echo(conn)


@pytest.mark.parametrize(
    ("handler", "scheme", "hops"),
    [
        (fake_socks5, "socks5", 1),
        (fake_socks4, "socks4", 1),
        (fake_http, "http", 1),
        (fake_socks5_speaking_for_the_next_hop, "socks5", 2),
    ],
)
async def test_no_byte_after_the_reply_is_lost(handler: Handler, scheme: str, hops: int) -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        fake = await serve(nursery, pool, handler)
        chain = [f"{scheme}://{fake}"] + ([f"http://127.0.0.1:{free_tcp_port()}"] if hops == 2 else [])
        conn = await pool.connect("tcp://127.0.0.1:22", proxies=chain, timeout=5)
        async with conn:
            # The first read returns the banner exactly: it came with the reply and was kept.
            assert await conn.receive_some(len(BANNER)) == BANNER
            await round_trip(conn)
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# timeouts cover the whole chain
# ---------------------------------------------------------------------------


async def silent(conn: Any) -> None:
    """Accepts, reads, never answers."""
    while await conn.receive_some():
        pass


async def trickle(conn: Any) -> None:
    """Answers an HTTP header that never ends, a byte every 50 ms (a per-read timeout would never fire)."""
    await conn.receive_some()
    await conn.send_all(b"HTTP/1.1 200 OK\r\n")
    while True:
        await conn.send_all(b"X")
        await trio.sleep(0.05)


@pytest.mark.parametrize(
    ("handler", "scheme", "waiting"),
    [
        (silent, "socks5", "its choice of authentication method"),
        (silent, "socks4", "its reply to CONNECT"),
        (silent, "http", "its answer to CONNECT 127.0.0.1:9"),
        (trickle, "http", "its answer to CONNECT 127.0.0.1:9"),
    ],
)
async def test_a_stalled_hop_is_cut_off_by_the_callers_timeout(
    handler: Handler, scheme: str, waiting: str
) -> None:
    async with lab() as (pool, nursery, _, proxy):
        stalled = await serve(nursery, pool, handler)
        start = trio.current_time()
        with pytest.raises(conduit.ProxyTimeout) as info:
            await pool.connect(
                "tcp://127.0.0.1:9", proxies=[f"socks5://{proxy}", f"{scheme}://{stalled}"], timeout=0.5
            )
        elapsed = trio.current_time() - start
    assert 0.5 <= elapsed < 3
    exc = info.value
    assert isinstance(exc, conduit.ConnectTimeout)
    assert isinstance(exc, TimeoutError)
    assert exc.hop == 2
    assert exc.proxy == f"{scheme}://{stalled}"
    assert f"(waiting for {waiting})" in str(exc)
    assert str(exc).startswith(f"proxy hop 2 ({scheme}://{stalled}): no answer within 0.5 s")
    assert not pool.connections


# ---------------------------------------------------------------------------
# typed errors naming the hop
# ---------------------------------------------------------------------------


async def test_refused_target_through_each_protocol() -> None:
    closed = free_tcp_port()
    async with lab() as (pool, _, _, proxy):
        for scheme, text in [
            ("socks5", "SOCKS5 reply 5: connection refused"),
            ("http", "HTTP/1.1 502 Connection Refused (Proxy-Status: conduit; error=connection_refused)"),
        ]:
            with pytest.raises(conduit.ProxyTargetRefused) as info:
                await pool.connect(
                    f"tcp://127.0.0.1:{closed}",
                    proxies=[f"socks5://{proxy}", f"{scheme}://{proxy}"],
                    timeout=5,
                )
            assert info.value.hop == 2
            assert text in str(info.value)
        with pytest.raises(conduit.ProxyRejected, match="SOCKS4 reply 91"):
            await pool.connect(f"tcp://127.0.0.1:{closed}", proxies=[f"socks4://{proxy}"], timeout=5)


async def test_unresolvable_name_at_the_proxy() -> None:
    async with lab() as (pool, _, _, proxy):
        with pytest.raises(conduit.ProxyTargetUnreachable, match="SOCKS5 reply 4: host unreachable"):
            await pool.connect("tcp://no-such-host.invalid:80", proxies=[f"socks5h://{proxy}"], timeout=5)
        with pytest.raises(conduit.NameResolutionError, match=r"hop 1/1 \(socks5://"):
            await pool.connect("tcp://no-such-host.invalid:80", proxies=[f"socks5://{proxy}"], timeout=5)


async def test_authentication_errors() -> None:
    async with lab(users={"bob": SECRET}) as (pool, _, target, proxy):
        for scheme in ("socks5", "http"):
            with pytest.raises(conduit.ProxyAuthenticationError) as info:
                await pool.connect(target, proxies=[f"{scheme}://bob:wrong@{proxy}"], timeout=5)
            assert info.value.hop == 1
            with pytest.raises(conduit.ProxyAuthenticationError):
                await pool.connect(target, proxies=[f"{scheme}://{proxy}"], timeout=5)
        # SOCKS4 has no passwords: a server that wants them refuses SOCKS4 outright.
        with pytest.raises(conduit.ProxyRejected, match="SOCKS4 reply 91"):
            await pool.connect(target, proxies=[f"socks4://bob@{proxy}"], timeout=5)


async def test_first_proxy_unreachable() -> None:
    port = free_tcp_port()
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.ProxyError) as info:
            await pool.connect("tcp://127.0.0.1:80", proxies=[f"socks5://u:{SECRET}@127.0.0.1:{port}"])
    exc = info.value
    assert type(exc) is conduit.ProxyError
    assert exc.hop == 1
    assert isinstance(exc.__cause__, conduit.ConnectionRefused)
    assert "cannot connect to the proxy: Connection refused [ECONNREFUSED]" in str(exc)
    assert SECRET not in str(exc)


async def not_a_proxy(conn: Any) -> None:
    await conn.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")
    await conn.receive_some()


@pytest.mark.parametrize("scheme", ["socks5", "socks4", "http"])
async def test_not_a_proxy_is_a_protocol_error(scheme: str) -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        wrong = await serve(nursery, pool, not_a_proxy)
        with pytest.raises(conduit.ProxyProtocolError, match="not ") as info:
            await pool.connect("tcp://127.0.0.1:80", proxies=[f"{scheme}://{wrong}"], timeout=5)
        assert info.value.hop == 1
        nursery.cancel_scope.cancel()


async def test_proxy_closing_mid_handshake() -> None:
    async def hang_up(conn: Any) -> None:
        await conn.receive_some()

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        rude = await serve(nursery, pool, hang_up)
        with pytest.raises(conduit.ProxyProtocolError, match="closed the connection instead of sending"):
            await pool.connect("tcp://127.0.0.1:80", proxies=[f"socks5://{rude}"], timeout=5)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("url", "proxies", "error", "match"),
    [
        ("unix:///tmp/x.sock", ["socks5://127.0.0.1:1"], conduit.AddressError, "carry tcp://"),
        ("udp://127.0.0.1:53", ["http://127.0.0.1:1"], conduit.AddressError, "exactly one proxy"),
        (
            "udp://127.0.0.1:53",
            ["socks5://127.0.0.1:1", "socks5://127.0.0.1:2"],
            conduit.AddressError,
            "exactly",
        ),
        ("tcp://127.0.0.1:1", ["gopher://127.0.0.1:1"], conduit.AddressError, "unknown proxy scheme"),
        ("tcp://127.0.0.1:1", "socks5://127.0.0.1:1", TypeError, "not one string"),
    ],
)
async def test_chains_that_cannot_be(url: str, proxies: Any, error: type[Exception], match: str) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises(error, match=match):
            await pool.connect(url, proxies=proxies)
        with pytest.raises(error, match=match):
            pool.spawn(url, echo, proxies=proxies)  # spawn checks at once, too


# ---------------------------------------------------------------------------
# passwords stay out of logs, reprs and errors
# ---------------------------------------------------------------------------


async def test_no_password_in_logs_reprs_or_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(conduit.DEBUG_ALL, logger="trio_conduit")
    seen: list[str] = []
    async with lab(users={"bob": SECRET}) as (pool, nursery, target, proxy):
        chain = [f"socks5://bob:{SECRET}@{proxy}", f"http://bob:{SECRET}@{proxy}"]
        conn = await pool.connect(target, proxies=chain, timeout=5)
        async with conn:
            await round_trip(conn)
            seen += [repr(conn), str(conn.info), repr(conn.info)]
        for bad in (
            [f"socks5://bob:{SECRET}x@{proxy}"],
            [f"http://bob:{SECRET}@{proxy}", f"http://bob:x{SECRET}@{proxy}"],
        ):
            with pytest.raises(conduit.ProxyError) as info:
                await pool.connect(target, proxies=bad, timeout=5)
            seen += [str(info.value), repr(info.value), str(info.value.args), str(info.value.proxy)]
        stalled = await serve(nursery, pool, silent)
        with pytest.raises(conduit.ProxyTimeout) as timeout:
            await pool.connect(target, proxies=[f"socks5://bob:{SECRET}@{stalled}"], timeout=0.2)
        seen.append(str(timeout.value))
        with pytest.raises(conduit.ProxyError) as unreachable:
            await pool.connect(target, proxies=[f"socks5://bob:{SECRET}@127.0.0.1:{free_tcp_port()}"])
        seen.append(str(unreachable.value))
    seen += [record.getMessage() for record in caplog.records]
    assert any("proxy hop" in line for line in seen)
    assert any("bob:***@" in line for line in seen)
    leaks = [line for line in seen if SECRET in line]
    assert not leaks


# ---------------------------------------------------------------------------
# stream semantics
# ---------------------------------------------------------------------------


async def test_proxied_stream_conformance() -> None:
    """Trio's half-closeable stream checks, on a connection through two proxies and the target's side."""
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        listener = await pool.listen("tcp://127.0.0.1:0")

        async def maker() -> tuple[Any, Any]:
            async with trio.open_nursery() as inner:
                accepted: list[Any] = []

                async def accept() -> None:
                    accepted.append(await listener.accept())

                inner.start_soon(accept)
                conn = await pool.connect(
                    str(listener.address),
                    proxies=[f"socks5://{proxy.hostport}", f"http://{proxy.hostport}"],
                    timeout=5,
                )
            return conn, accepted[0]

        async def reversed_maker() -> tuple[Any, Any]:
            a, b = await maker()
            return b, a

        await trio.testing.check_half_closeable_stream(maker, None)
        await trio.testing.check_half_closeable_stream(reversed_maker, None)
        await listener.aclose()
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# a proxy type from a plugin
# ---------------------------------------------------------------------------


class HAProxyV1(ProxyType):
    """``haproxy://host:port``: the PROXY protocol v1 header, then the stream as it is."""

    schemes = ("haproxy",)
    name = "HAProxy v1"
    default_port = 80

    async def open(self, stream: trio.abc.Stream, proxy: ProxyURL, target: Target, hop: Hop) -> Tunnel:
        line = f"PROXY TCP4 192.0.2.1 {target.host} 56324 {target.port}\r\n"
        await stream.send_all(line.encode())
        return Tunnel(stream, "PROXY v1 header sent")


class HAProxyPlugin:
    @hookimpl
    def conduit_proxy_types(self) -> Sequence[ProxyType]:
        return [HAProxyV1()]


async def test_a_plugin_adds_a_proxy_type() -> None:
    header: list[bytes] = []

    async def proxy_protocol_server(conn: Any) -> None:
        data = b""
        while b"\r\n" not in data:
            data += await conn.receive_some()
        line, _, rest = data.partition(b"\r\n")
        header.append(line)
        await conn.send_all(rest)
        await echo(conn)

    async with conduit.open_pool(plugins=[HAProxyPlugin()]) as pool, trio.open_nursery() as nursery:
        server = await serve(nursery, pool, proxy_protocol_server)
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        conn = await pool.connect(
            "tcp://127.0.0.1:443", proxies=[f"socks5://{proxy.hostport}", f"haproxy://{server}"], timeout=5
        )
        async with conn:
            await round_trip(conn)
        assert header == [b"PROXY TCP4 192.0.2.1 127.0.0.1 56324 443"]
        nursery.cancel_scope.cancel()
    # Only that pool has it.
    async with conduit.open_pool() as pool:
        with pytest.raises(conduit.AddressError, match="unknown proxy scheme 'haproxy'"):
            await pool.connect("tcp://127.0.0.1:1", proxies=["haproxy://127.0.0.1:1"])


async def test_a_duplicate_proxy_scheme_is_a_plugin_error() -> None:
    class Dup:
        @hookimpl
        def conduit_proxy_types(self) -> Sequence[ProxyType]:
            hijack = HAProxyV1()
            hijack.schemes = ("socks5",)
            return [hijack]

    async with conduit.open_pool(plugins=[Dup()]) as pool:
        with pytest.raises(conduit.PluginError, match="proxy scheme 'socks5' registered twice"):
            await pool.connect("tcp://127.0.0.1:1", proxies=["socks5://127.0.0.1:1"])


# ---------------------------------------------------------------------------
# spawn
# ---------------------------------------------------------------------------


async def test_spawn_through_a_chain() -> None:
    got: list[tuple[bytes, tuple[str, ...]]] = []
    done = trio.Event()

    async def handler(conn: Any) -> None:
        await conn.send_all(b"spawned")
        got.append((await read_exactly(conn, 7), conn.info.via))
        done.set()

    async with lab() as (pool, _, target, proxy):
        pool.spawn(target, handler, proxies=[f"socks5://{proxy}", f"socks4://{proxy}"], timeout=5)
        with trio.fail_after(5):
            await done.wait()
    assert got == [(b"spawned", (f"socks5://{proxy}", f"socks4://{proxy}"))]


# ---------------------------------------------------------------------------
# udp:// through SOCKS5
# ---------------------------------------------------------------------------


async def test_udp_through_our_server() -> None:
    async with lab(users={"bob": SECRET}) as (pool, _, _, proxy):
        server = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with server:
            await server.bind(("127.0.0.1", 0))
            port = server.getsockname()[1]
            channel = await pool.connect(
                f"udp://localhost:{port}", proxies=[f"socks5h://bob:{SECRET}@{proxy}"], timeout=5
            )
            async with channel:
                assert isinstance(channel, conduit.DatagramConnection)
                assert channel.info.remote == ("localhost", port)
                assert channel.info.via == (f"socks5h://bob:***@{proxy}",)
                for i in range(3):
                    await channel.send(b"d%d" % i)
                    data, relay = await server.recvfrom(100)
                    assert data == b"d%d" % i
                    await server.sendto(b"r%d" % i, relay)
                    with trio.fail_after(5):
                        # A name target: every datagram from the relay is taken (it cannot be matched).
                        assert await channel.receive() == b"r%d" % i
                big = bytes(range(256)) * 200
                await channel.send(big)
                data, relay = await server.recvfrom(65536)
                assert data == big


async def test_udp_channel_breaks_when_the_control_connection_ends() -> None:
    """The association lives as long as the TCP control connection: the proxy closing it ends it."""
    holder: list[Any] = []

    async def one_shot_proxy(conn: Any) -> None:
        holder.append(conn)
        await ProxyServer(pool)(conn)

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await serve(nursery, pool, one_shot_proxy)
        channel = await pool.connect("udp://127.0.0.1:9", proxies=[f"socks5://{proxy}"], timeout=5)
        async with channel:
            await holder[0].aclose()  # the server side of the control connection goes away
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError, match="control connection"):
                await channel.receive()
            with pytest.raises(trio.BrokenResourceError):
                await channel.send(b"x")
        with pytest.raises(trio.ClosedResourceError):
            await channel.send(b"x")
        nursery.cancel_scope.cancel()


async def test_our_server_refuses_udp_when_told_to() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool, udp=False))
        with pytest.raises(conduit.ProxyRejected, match="SOCKS5 reply 7: command not supported"):
            await pool.connect("udp://127.0.0.1:9", proxies=[f"socks5://{proxy.hostport}"], timeout=5)
        nursery.cancel_scope.cancel()


async def test_our_server_policy() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        proxy = await nursery.start(
            pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool, allow=lambda r: r.target.port != target.port)
        )
        for scheme, error in [("socks5", "SOCKS5 reply 2"), ("http", "403 Forbidden")]:
            with pytest.raises(conduit.ProxyRejected, match=error):
                await pool.connect(str(target), proxies=[f"{scheme}://{proxy.hostport}"], timeout=5)
        nursery.cancel_scope.cancel()


def test_server_arguments() -> None:
    with pytest.raises(ValueError, match="unknown proxy protocols"):
        ProxyServer(None, protocols=["gopher"])  # type: ignore[arg-type]
    assert "bob" not in repr(ProxyServer(None, users={"bob": SECRET}))  # type: ignore[arg-type]
    assert SECRET not in repr(ProxyServer(None, users={"bob": SECRET}))  # type: ignore[arg-type]


async def test_trace_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_conduit")
    async with lab() as (pool, _, target, proxy):
        conn = await pool.connect(target, proxies=[f"socks5://{proxy}", f"http://{proxy}"], timeout=5)
        await conn.aclose()
    lines = [r.getMessage() for r in caplog.records]
    tcp = target.removeprefix("tcp://")
    first = f"proxy hop 1/2 (socks5://{proxy}): tunnel to {proxy} open (SOCKS5 reply 0: succeeded)"
    second = f"proxy hop 2/2 (http://{proxy}): tunnel to {tcp} open (HTTP/1.1 200 Connection established)"
    assert f"{first} (conn #{conn.id})" in lines
    assert f"{second} (conn #{conn.id})" in lines


async def test_udp_socks5_resolves_here_and_filters() -> None:
    """socks5:// resolves the target here: the channel keeps only datagrams from that address."""
    async with lab() as (pool, _, _, proxy):
        target = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with target, stranger:
            await target.bind(("127.0.0.1", 0))
            await stranger.bind(("127.0.0.1", 0))
            port = target.getsockname()[1]
            channel = await pool.connect(f"udp://localhost:{port}", proxies=[f"socks5://{proxy}"], timeout=5)
            async with channel:
                assert channel.info.remote == ("localhost", port)
                await channel.send(b"hi")
                _, relay = await target.recvfrom(100)
                await stranger.sendto(b"not for you", relay)
                await target.sendto(b"for you", relay)
                with trio.fail_after(5):
                    assert await channel.receive() == b"for you"
                assert channel.dropped == 1
