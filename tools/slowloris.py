"""Measure a real client's TLS handshake time while N peers stall mid-ClientHello.

    python tools/slowloris.py [N]   (default 300)

Each stalled peer opens a TCP connection to a ``tls://`` listener running at its
default settings, sends one byte of a handshake record and stops. Then one real
client connects (a full handshake, no session reuse); the script prints how long
that took. Loopback only.
"""

from __future__ import annotations

import sys
import tempfile
import time
from typing import Any

import trio

import trio_conduit as conduit
from trio_conduit.tls import EphemeralCA


async def _echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(count: int) -> None:
    ca = EphemeralCA()
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile = ca.issue("localhost", "127.0.0.1").write(tmp, "server")
        url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            addr = await nursery.start(pool.serve, url, _echo)
            stalled = []
            for _ in range(count):
                peer = await trio.open_tcp_stream("127.0.0.1", addr.port)
                await peer.send_all(b"\x16")
                stalled.append(peer)
            await trio.sleep(0.5)
            start = time.perf_counter()
            conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", session_cache=False, verify=False)
            await conn.send_all(b"ping")
            await conn.receive_some()
            took = time.perf_counter() - start
            print(f"{count} stalled peers: a real client's handshake + one round trip took {took:.3f} s")
            await conn.aclose()
            for peer in stalled:
                await peer.aclose()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 300)
