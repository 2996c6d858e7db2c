"""The proxy server under a slowloris (issue 16): stalled clients do not starve a real one."""

from __future__ import annotations

from typing import Any

import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer


async def _echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def test_stalled_proxy_clients_at_defaults_do_not_starve_a_real_one() -> None:
    """300 clients each send the first byte of a SOCKS5 greeting (or of an HTTP request) and
    stop; with the server at its defaults a real SOCKS5 client still gets through at once —
    long before the stalled ones' ``handshake_timeout`` (30 s) would free anything."""
    server = ProxyServer.__init__.__kwdefaults__
    assert server is not None
    assert server["handshake_timeout"] >= 30
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        echo = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _echo)
        stalled = []
        try:
            for i in range(300):
                peer = await trio.open_tcp_stream("127.0.0.1", proxy.port)
                await peer.send_all(b"\x05" if i % 2 else b"C")
                stalled.append(peer)
            with trio.fail_after(10):
                conn = await pool.connect(
                    f"tcp://127.0.0.1:{echo.port}", proxies=[f"socks5://127.0.0.1:{proxy.port}"]
                )
                await conn.send_all(b"through")
                assert await conn.receive_some() == b"through"
            await conn.aclose()
        finally:
            for peer in stalled:
                await peer.aclose()
        nursery.cancel_scope.cancel()
