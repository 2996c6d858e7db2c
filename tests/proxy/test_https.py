"""``https://`` proxies: TLS to the proxy itself (the TLS layer's client handshake), CONNECT inside it.

Against our own ProxyServer behind a TLS listener, and against tinyproxy
behind ``socat OPENSSL-LISTEN`` (a real TLS terminator in front of a real
proxy). Certificates come from an in-memory CA, written to a temporary
directory for ``cafile=`` and for socat.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer
from trio_conduit.tls import EphemeralCA, TLSConfig, TLSError

from ..conftest import free_tcp_port
from .conftest import RealProxy, _stop, _wait_listening

SECRET = "tls-pw-" + "z" * 6


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[EphemeralCA, Path]:
    authority = EphemeralCA()
    directory = tmp_path_factory.mktemp("https-proxy")
    (directory / "ca.pem").write_bytes(authority.cert_pem)
    return authority, directory


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def round_trip(conn: Any, payload: bytes = b"inside TLS to the proxy") -> None:
    await conn.send_all(payload)
    got = b""
    while len(got) < len(payload):
        data = await conn.receive_some()
        assert data
        got += data
    assert got == payload


async def test_https_proxy_of_our_own(ca: tuple[EphemeralCA, Path]) -> None:
    authority, directory = ca
    server_tls = TLSConfig(certificate=authority.issue("localhost", "127.0.0.1"))
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        plain = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        serve_tls = functools.partial(pool.serve, tls=server_tls)
        tls_proxy = await nursery.start(
            serve_tls, "tcp://127.0.0.1:0", ProxyServer(pool, users={"bob": SECRET})
        )
        https = f"https://bob:{SECRET}@localhost:{tls_proxy.port}?cafile={directory}/ca.pem"
        # Alone, and as the middle hop of a chain.
        for chain in ([https], [f"socks5://{plain.hostport}", https, f"http://{plain.hostport}"]):
            conn = await pool.connect(str(target), proxies=chain, timeout=10)
            async with conn:
                await round_trip(conn)
                assert f"https://bob:***@localhost:{tls_proxy.port}?cafile=" in "".join(conn.info.via)
                assert SECRET not in str(conn.info)
                assert isinstance(conn, conduit.HalfCloseableStreamConnection)  # TLS: close_notify

        # A proxy certificate we do not trust: an error at that hop, caused by the TLS layer's.
        untrusted = f"https://bob:{SECRET}@localhost:{tls_proxy.port}"
        with pytest.raises(conduit.ProxyError) as info:
            await pool.connect(str(target), proxies=[f"socks5://{plain.hostport}", untrusted], timeout=10)
        assert info.value.hop == 2
        assert "TLS with the proxy failed" in str(info.value)
        assert isinstance(info.value.__cause__, conduit.ConduitError)
        assert SECRET not in str(info.value)

        # Plain HTTP to a TLS port is not HTTP: the proxy sent nothing we could parse, or closed.
        with pytest.raises(conduit.ProxyError):
            await pool.connect(str(target), proxies=[f"http://127.0.0.1:{tls_proxy.port}"], timeout=2)
        nursery.cancel_scope.cancel()


def test_bad_tls_options_fail_at_once() -> None:
    from trio_conduit._plugins import global_scope
    from trio_conduit.proxy import parse_proxy

    with pytest.raises(conduit.AddressError, match="unknown TLS option"):
        parse_proxy(f"https://u:{SECRET}@proxy:443?colour=blue", global_scope())
    ptype, url = parse_proxy("https://proxy?verify=0", global_scope())
    assert url.port == 443
    assert ptype.name == "HTTPS"


@pytest.fixture
def tinyproxy_behind_socat(tinyproxy: RealProxy, ca: tuple[EphemeralCA, Path]) -> Iterator[int]:
    socat = shutil.which("socat")
    if socat is None:
        pytest.skip("socat is not installed (the nox tests session installs it)")
    authority, directory = ca
    cert = authority.issue("localhost", "127.0.0.1")
    (directory / "proxy.pem").write_bytes(cert.cert_pem + cert.key_pem)
    port = free_tcp_port()
    process = subprocess.Popen(
        [
            socat,
            f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={directory}/proxy.pem,verify=0",
            f"TCP:127.0.0.1:{tinyproxy.port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(port, process, "socat", directory)
        yield port
    finally:
        _stop(process)


@pytest.mark.interop
async def test_https_to_tinyproxy_behind_socat(
    tinyproxy: RealProxy, tinyproxy_behind_socat: int, ca: tuple[EphemeralCA, Path]
) -> None:
    _, directory = ca
    url = f"https://alice:{tinyproxy.password}@127.0.0.1:{tinyproxy_behind_socat}?cafile={directory}/ca.pem"
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        conn = await pool.connect(str(target), proxies=[url], timeout=10)
        async with conn:
            await round_trip(conn, b"q" * 100_000)
        wrong = url.replace(f":{tinyproxy.password}@", ":wrong@")
        with pytest.raises(conduit.ProxyAuthenticationError, match="credentials refused"):
            await pool.connect(str(target), proxies=[wrong], timeout=10)
        nursery.cancel_scope.cancel()


async def test_tls_to_the_target_over_a_chain(ca: tuple[EphemeralCA, Path]) -> None:
    """``tls=`` on a proxied connect: the TLS layer runs over the stream the chain produced."""
    authority, directory = ca
    server_tls = TLSConfig(certificate=authority.issue("localhost", "127.0.0.1"))
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        target = await nursery.start(functools.partial(pool.serve, tls=server_tls), "tcp://127.0.0.1:0", echo)
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        conn = await pool.connect(
            f"tcp://localhost:{target.port}",
            tls={"cafile": f"{directory}/ca.pem"},
            proxies=[f"socks5h://{proxy.hostport}", f"http://{proxy.hostport}"],
            timeout=10,
        )
        async with conn:
            await round_trip(conn)
            assert conn.info.tls is not None
            assert conn.info.via == (f"socks5h://{proxy.hostport}", f"http://{proxy.hostport}")
            assert conn.info.remote == ("localhost", target.port)
        nursery.cancel_scope.cancel()


async def test_tls_url_through_a_chain(ca: tuple[EphemeralCA, Path]) -> None:
    """``tls://`` with ``proxies=``: the chain carries TCP to the origin, TLS runs end to end over it."""
    authority, directory = ca
    server_tls = TLSConfig(certificate=authority.issue("origin.test", "127.0.0.1"))
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        origin = await nursery.start(functools.partial(pool.serve, tls=server_tls), "tcp://127.0.0.1:0", echo)
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        chain = [f"socks5://{proxy.hostport}", f"http://{proxy.hostport}"]
        url = f"tls://127.0.0.1:{origin.port}?server_hostname=origin.test&cafile={directory}/ca.pem"
        conn = await pool.connect(url, proxies=chain, timeout=10)
        async with conn:
            await round_trip(conn, b"end to end through two hops")
            assert conn.info.transport == "tls"
            assert conn.tls.server_name == "origin.test"
            assert conn.tls.peer_certificate is not None
            assert len(conn.info.via) == 2
        # The origin's certificate is checked as usual: a name it does not have fails.
        with pytest.raises(TLSError, match=r"(?i)hostname|mismatch"):
            await pool.connect(
                f"tls://127.0.0.1:{origin.port}?server_hostname=other.test&cafile={directory}/ca.pem",
                proxies=chain,
                timeout=10,
            )
        # Proxies carry TCP: TLS over SCTP cannot go through them.
        with pytest.raises(conduit.AddressError, match="proxies carry tcp"):
            await pool.connect(f"tls+sctp://127.0.0.1:{origin.port}", proxies=chain)
        nursery.cancel_scope.cancel()
