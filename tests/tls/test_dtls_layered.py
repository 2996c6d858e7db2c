"""``dtls=`` on other datagram transports: ``unix+dgram://`` (both sides) and ``udp://`` through a
SOCKS5 UDP ASSOCIATE proxy (client side), as ``tls=`` works on any stream.

Real peers where one exists: ``openssl s_server -dtls1_2 -listen`` reached through our own SOCKS5
server and through Dante. ``openssl s_client`` has no unix datagram mode: over ``unix+dgram://``
our client talks to our server.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer
from trio_conduit.tls import DTLSConnection, DTLSListener, TLSConfig, TLSError, TLSVerifyError

from ..conftest import assert_no_fd_leak, free_udp_port, open_fds, task_count
from ..interop.test_api_peers import wait_ready
from ..proxy.conftest import RealProxy, _stop, start_dante
from .conftest import PKI
from .test_dtls import _client_hello, echo, hellos_get_cookies, serving
from .test_interop import OPENSSL, needs_openssl, tool


def server_tls(pki: PKI, **changes: Any) -> TLSConfig:
    return TLSConfig(certfile=pki.server.certfile, keyfile=pki.server.keyfile, **changes)


def client_tls(pki: PKI, **changes: Any) -> TLSConfig:
    return TLSConfig(cafile=pki.cafile, server_hostname="localhost", **changes)


# ---------------------------------------------------------------------------
# unix+dgram://
# ---------------------------------------------------------------------------


async def test_unix_dgram_round_trip_and_facts(pki: PKI, sock_dir: Path) -> None:
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn)
        await echo(conn)

    url = f"unix+dgram://{sock_dir}/dtls.sock"
    async with (
        conduit.open_pool() as pool,
        serving(pool, url, handler, dtls=server_tls(pki)) as addr,
        await pool.connect(url, dtls=client_tls(pki, alpn=["coap"])) as conn,
    ):
        assert addr.scheme == "unix+dgram"
        assert isinstance(conn, DTLSConnection)
        await conn.send(b"over a unix datagram socket")
        with trio.fail_after(10):
            assert await conn.receive() == b"over a unix datagram socket"
        with pytest.raises(conduit.MessageTooLarge):
            await conn.send(b"x" * (conn.max_message_size + 1))
        info = conn.info
        assert info.transport == "unix+dgram"
        assert info.family == socket.AF_UNIX
        assert info.remote == str(sock_dir / "dtls.sock")
        assert info.tls is not None
        assert info.tls.version == "DTLSv1.2"
        assert info.tls.server_name == "localhost"
        assert info.tls.peer_certificate is not None
        chain = info.tls.peer_chain  # (read from OpenSSL when first asked for)
        assert [c.subject.rfc4514_string() for c in chain][1:] == ["CN=conduit test CA"]
        assert chain[0] == info.tls.peer_certificate
        (server_side,) = seen
        # The server's association is keyed by (and reports) the path the client bound.
        assert server_side.info.remote == info.local
        assert server_side.info.tls.side == "server"
    assert not (sock_dir / "dtls.sock").exists()  # the listener removed its file


async def test_unix_dgram_verification_is_on_by_default(pki: PKI, sock_dir: Path) -> None:
    url = f"unix+dgram://{sock_dir}/dtls.sock"
    async with conduit.open_pool() as pool, serving(pool, url, dtls=server_tls(pki)):
        with pytest.raises(TLSVerifyError, match="unable to get local issuer certificate"):
            await pool.connect(url, dtls=TLSConfig(server_hostname="localhost"), timeout=10)
        with pytest.raises(TLSError, match="needs its name"):
            await pool.connect(url, dtls=TLSConfig(cafile=pki.cafile), timeout=10)  # a path is no name


async def test_unix_dgram_cookies_for_strangers_and_no_reply_to_the_unbound(pki: PKI, sock_dir: Path) -> None:
    """The cookie binds the peer's path as it binds an IP address and port: hellos from 20 paths
    get HelloVerifyRequests and allocate nothing; a hello from an unbound socket (no address to
    answer) is dropped and counted."""
    url = f"unix+dgram://{sock_dir}/dtls.sock"
    async with conduit.open_pool() as pool:
        listener = await pool.listen(url, dtls=server_tls(pki))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        _, hello = _client_hello(pki)
        await trio.testing.wait_all_tasks_blocked()
        tasks_before = task_count()
        path = url.removeprefix("unix+dgram://")
        await hellos_get_cookies(
            socket.AF_UNIX, [str(sock_dir / f"peer-{i}.sock") for i in range(20)], path, hello
        )
        with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
            await unbound.sendto(hello[0], path)
            with trio.fail_after(10):
                while inner.dropped < 1:
                    await trio.sleep(0.01)
        assert inner.cookies_sent == 20
        assert inner.associations == 0
        assert task_count() == tasks_before
        await listener.aclose()


async def test_unix_dgram_a_vanished_peer_breaks_only_its_association(pki: PKI, sock_dir: Path) -> None:
    """A client whose bound path is gone: sending to it breaks that association (the handler
    sees ``BrokenResourceError``); the listener serves the next client."""
    gone = trio.Event()
    seen: list[BaseException] = []

    async def handler(conn: Any) -> None:
        await conn.receive()
        await gone.wait()
        try:
            await conn.send(b"anyone?")
        except trio.BrokenResourceError as exc:
            seen.append(exc)

    url = f"unix+dgram://{sock_dir}/dtls.sock"
    async with conduit.open_pool() as pool, serving(pool, url, handler, dtls=server_tls(pki)):
        conn = await pool.connect(url, dtls=client_tls(pki))
        await conn.send(b"hello")
        os.unlink(conn.info.local)
        gone.set()
        with trio.fail_after(10):
            while not seen:
                await trio.sleep(0.01)
        assert "sending to" in str(seen[0])
        await conn.aclose()
        async with await pool.connect(url, dtls=client_tls(pki)) as again:
            assert again.info.tls is not None


async def test_unix_dgram_handlers_by_alpn(pki: PKI, sock_dir: Path) -> None:
    """``handlers=`` with ``dtls=``: the server offers the handlers' protocols, each association
    runs the one its client chose."""

    async def coap(conn: Any) -> None:
        async for message in conn:
            await conn.send(b"coap:" + message)

    async def other(conn: Any) -> None:
        async for message in conn:
            await conn.send(b"other:" + message)

    url = f"unix+dgram://{sock_dir}/dtls.sock"
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        serve = functools.partial(pool.serve, handlers={"coap": coap, "other": other}, dtls=server_tls(pki))
        await nursery.start(serve, url)
        for protocol in ("other", "coap"):
            async with await pool.connect(url, dtls=client_tls(pki, alpn=[protocol])) as conn:
                assert conn.info.tls is not None
                assert conn.info.tls.alpn == protocol
                await conn.send(b"hi")
                with trio.fail_after(10):
                    assert await conn.receive() == protocol.encode() + b":hi"
        nursery.cancel_scope.cancel()


async def test_tls_and_dtls_options_are_checked_before_anything_opens(pki: PKI, sock_dir: Path) -> None:
    before = open_fds()
    async with conduit.open_pool() as pool:
        with pytest.raises(TypeError, match="carries datagrams: use dtls="):
            await pool.connect(f"unix+dgram://{sock_dir}/x.sock", tls=client_tls(pki))
        with pytest.raises(TypeError, match="is a byte stream: use tls="):
            await pool.connect("tcp://127.0.0.1:9", dtls=client_tls(pki))
        with pytest.raises(TypeError, match="not both"):
            await pool.connect(f"unix+dgram://{sock_dir}/x.sock", tls=True, dtls=True)
        with pytest.raises(TypeError, match=r"cannot take an ssl\.SSLContext"):
            await pool.listen(f"unix+dgram://{sock_dir}/x.sock", dtls=ssl.create_default_context())
        with pytest.raises(TLSError, match="cannot set up a DTLS server context"):
            await pool.listen(f"unix+dgram://{sock_dir}/x.sock", dtls=TLSConfig(certfile="/nonexistent.pem"))
        with pytest.raises(TypeError, match="tls= takes True"):
            pool.spawn(f"unix+dgram://{sock_dir}/x.sock", echo, dtls="yes")
    assert not (sock_dir / "x.sock").exists()
    assert_no_fd_leak(before)


async def test_unix_dgram_serve_many_peers_and_close(pki: PKI, sock_dir: Path) -> None:
    url = f"unix+dgram://{sock_dir}/dtls.sock"
    before = open_fds()
    async with conduit.open_pool() as pool, serving(pool, url, dtls=server_tls(pki)):
        conns = [await pool.connect(url, dtls=client_tls(pki)) for _ in range(5)]
        for i, conn in enumerate(conns):
            await conn.send(b"peer %d" % i)
        for i, conn in enumerate(conns):
            with trio.fail_after(10):
                assert await conn.receive() == b"peer %d" % i
        for conn in conns:
            await conn.aclose()
    assert not any(name.startswith("conduit-") for name in os.listdir(sock_dir))
    assert_no_fd_leak(before)


# ---------------------------------------------------------------------------
# udp:// through SOCKS5 UDP ASSOCIATE (client side)
# ---------------------------------------------------------------------------


async def test_dtls_through_our_socks5_server(pki: PKI) -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        via = f"socks5://127.0.0.1:{proxy.port}"
        async with serving(pool, "dtls://127.0.0.1:0", tls=server_tls(pki)) as addr:
            target = f"udp://127.0.0.1:{addr.port}"
            async with await pool.connect(target, proxies=[via], dtls=client_tls(pki), timeout=10) as conn:
                assert isinstance(conn, DTLSConnection)
                await conn.send(b"through the relay")
                with trio.fail_after(10):
                    assert await conn.receive() == b"through the relay"
                assert conn.info.via == (via,)
                assert conn.info.remote == ("127.0.0.1", addr.port)
                assert conn.info.tls is not None
                assert conn.info.tls.version == "DTLSv1.2"
            # dtls:// itself, the same way (the chain goes beneath the DTLS layer).
            url = f"dtls://127.0.0.1:{addr.port}?cafile={pki.cafile}&server_hostname=localhost"
            async with await pool.connect(url, proxies=[via], timeout=10) as conn:
                await conn.send(b"dtls:// via socks5")
                with trio.fail_after(10):
                    assert await conn.receive() == b"dtls:// via socks5"
                assert conn.info.via == (via,)
        nursery.cancel_scope.cancel()


async def _our_client_to_s_server(pki: PKI, proxy_url: str, *, close_seen: bool) -> None:
    """Our client through ``proxy_url`` to ``openssl s_server``; ``close_seen``: the relay passes
    on what the client sent before closing the control connection (our server drains its
    socket; Dante may end the association first, RFC 1928 §7), so s_server gets close_notify."""
    assert OPENSSL is not None
    port = free_udp_port()
    argv = [
        OPENSSL, "s_server", "-dtls1_2", "-listen", "-accept", f"127.0.0.1:{port}",
        "-cert", pki.server.certfile, "-key", pki.server.keyfile,
    ]  # fmt: skip
    async with tool(argv) as peer, conduit.open_pool() as pool:
        await wait_ready("udp", port, "", peer.proc)
        conn = await pool.connect(
            f"udp://127.0.0.1:{port}", proxies=[proxy_url], dtls=client_tls(pki), timeout=15
        )
        assert conn.info.via == (proxy_url,)
        assert conn.info.tls is not None
        assert conn.info.tls.version == "DTLSv1.2"
        await conn.send(b"hello s_server via socks5\n")
        await peer.until(b"hello s_server via socks5")
        await peer.send(b"hello back\n")
        got = b""
        with trio.fail_after(10):
            while b"\n" not in got:
                got += await conn.receive()
        assert got == b"hello back\n"
        await conn.aclose()
        if close_seen:
            await peer.until(b"DONE")


@pytest.mark.interop
@needs_openssl
async def test_our_client_via_our_socks5_server_to_openssl_s_server(pki: PKI) -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        await _our_client_to_s_server(pki, f"socks5://127.0.0.1:{proxy.port}", close_seen=True)
        nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def dante(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealProxy]:
    base = tmp_path_factory.mktemp("dante")
    base.chmod(0o755)
    proxy = start_dante(base)
    try:
        yield proxy
    finally:
        _stop(proxy.process)


@pytest.mark.interop
@needs_openssl
async def test_our_client_via_dante_to_openssl_s_server(pki: PKI, dante: RealProxy) -> None:
    await _our_client_to_s_server(pki, dante.url_with("socks5"), close_seen=False)
