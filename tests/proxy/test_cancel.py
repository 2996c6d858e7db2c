"""A connect through a proxy chain cancelled at any checkpoint leaks nothing.

The proxies and the echo servers run in another process (``_serve.py``), so
every descriptor counted here is the client's own: the socket to the first
proxy, and for ``udp://`` the UDP socket and the control connection.
"""

from __future__ import annotations

import pytest
import trio

import trio_conduit as conduit

from ..test_cancellation import assert_cancel_safe
from .conftest import OwnServer


async def test_cancel_mid_chain(own_server: OwnServer) -> None:
    proxy = f"127.0.0.1:{own_server.proxy}"
    chain = [f"socks5://{proxy}", f"http://{proxy}", f"socks4a://{proxy}"]

    async def scenario() -> None:
        async with conduit.open_pool() as pool:
            conn = await pool.connect(f"tcp://localhost:{own_server.echo}", proxies=chain)
            await conn.send_all(b"ping")
            assert await conn.receive_some() == b"ping"
            await conn.aclose()

    await assert_cancel_safe(scenario, seed=6)


async def test_cancel_udp_through_socks5(own_server: OwnServer) -> None:
    async def scenario() -> None:
        async with conduit.open_pool() as pool:
            channel = await pool.connect(
                f"udp://127.0.0.1:{own_server.udp_echo}", proxies=[f"socks5://127.0.0.1:{own_server.proxy}"]
            )
            await channel.send(b"ping")
            assert await channel.receive() == b"ping"
            await channel.aclose()

    await assert_cancel_safe(scenario, seed=7)


async def test_timeout_mid_chain_leaks_nothing(own_server: OwnServer, no_fd_leak: object) -> None:
    """Timeouts too short to finish, at many lengths: always ProxyTimeout (or done), never a leak."""
    chain = [f"socks5://127.0.0.1:{own_server.proxy}", f"http://127.0.0.1:{own_server.proxy}"]
    outcomes = set()
    async with conduit.open_pool() as pool:
        for i in range(40):
            try:
                conn = await pool.connect(
                    f"tcp://127.0.0.1:{own_server.echo}", proxies=chain, timeout=i * 0.0002
                )
            except conduit.ProxyTimeout as exc:
                outcomes.add(exc.hop)
                continue
            outcomes.add("connected")
            await conn.aclose()
        assert not pool.connections
    assert outcomes & {1, 2}, outcomes


async def test_pool_closing_closes_proxied_connections(own_server: OwnServer, no_fd_leak: object) -> None:
    chain = [f"socks5://127.0.0.1:{own_server.proxy}"]
    async with conduit.open_pool() as pool:
        conn = await pool.connect(f"tcp://127.0.0.1:{own_server.echo}", proxies=chain)
        channel = await pool.connect(f"udp://127.0.0.1:{own_server.udp_echo}", proxies=chain)
        assert {c.id for c in pool.connections} == {conn.id, channel.id}
    with pytest.raises(trio.ClosedResourceError):
        await conn.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await channel.send(b"x")
