"""Run trio-conduit's own proxy server and an echo server in a process of their own.

``python -m tests.proxy._serve [--users user:password ...]`` prints one JSON
line ``{"proxy": port, "echo": port, "udp_echo": port}`` (all on 127.0.0.1)
and serves until killed or until stdin ends. Tests that count their own file
descriptors (cancellation) keep the proxies' descriptors out of their
process this way.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import trio

import trio_conduit as conduit
from trio_conduit.proxy import ProxyServer


async def _echo(conn: conduit.StreamConnection) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)


async def _udp_echo(sock: trio.socket.SocketType) -> None:
    while True:
        data, peer = await sock.recvfrom(65536)
        await sock.sendto(data, peer)


async def _wait_stdin_end() -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some():
        pass


async def main(users: dict[str, str] | None) -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        proxy = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool, users=users))
        echo = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _echo)
        udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await udp.bind(("127.0.0.1", 0))
        nursery.start_soon(_udp_echo, udp)
        print(
            json.dumps({"proxy": proxy.port, "echo": echo.port, "udp_echo": udp.getsockname()[1]}), flush=True
        )
        await _wait_stdin_end()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", nargs="*", default=None)
    args = parser.parse_args()
    table = dict(u.split(":", 1) for u in args.users) if args.users is not None else None
    trio.run(main, table)
