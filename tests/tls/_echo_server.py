"""A TLS echo server in its own process (so a test's task and descriptor counts are its own).

``python tests/tls/_echo_server.py MODE CERTFILE KEYFILE`` prints its port,
then serves until its stdin closes. MODE ``tls``: a tls:// echo server;
``starttls``: a tcp:// server that upgrades each connection with start_tls first.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

import trio_conduit as conduit


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def main(mode: str, certfile: str, keyfile: str) -> None:
    async def upgrade(conn: Any) -> None:
        await echo(await conn.start_tls(server_side=True, certfile=certfile, keyfile=keyfile))

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        if mode == "tls":
            url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
            address = await nursery.start(pool.serve, url, echo)
        else:
            address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", upgrade)
        print(address.port, flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    mode, certfile, keyfile = sys.argv[1:4]
    trio.run(main, mode, certfile, keyfile)
