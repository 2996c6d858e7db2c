"""Plugins for one pool and for one listener, with async hook implementations.

Hook implementations may be ``async def``: trio-conduit awaits them in
pluggy's order. An implementation takes any subset of the hook's parameters.
A pool's plugins see everything the pool does; a listener's plugins see only
that listener's sockets and connections (plus the pool's and global hooks).
"""

import functools
import socket

import trio

import trio_conduit as conduit


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[str] = []

    @conduit.hookimpl
    async def conduit_socket_created(self, sock: trio.socket.SocketType, role: conduit.SocketRole) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)  # a plugin may set options
        self.events.append(f"socket created for {role.value}")

    @conduit.hookimpl
    async def conduit_connection_made(self, conn: conduit.Connection) -> None:
        await trio.sleep(0.01)  # an async hook may await (ask a service, check a list, ...)
        self.events.append(f"{conn.info.transport} connection made")

    @conduit.hookimpl
    def conduit_connection_lost(self, conn: conduit.Connection, exc: BaseException | None) -> None:
        self.events.append(f"{conn.info.transport} connection lost")  # plain functions work too


async def hello(conn: conduit.StreamConnection) -> None:
    await conn.send_all(b"hello")


async def main() -> None:
    in_pool, in_listener = Recorder("pool"), Recorder("listener")
    async with conduit.open_pool(plugins=[in_pool]) as pool, trio.open_nursery() as nursery:
        serve = functools.partial(pool.serve, plugins=[in_listener])  # this listener's own plugins
        address = await nursery.start(serve, "tcp://127.0.0.1:0", hello)
        conn = await pool.connect_stream(address)
        print(await conn.receive_some())
        await conn.aclose()
        nursery.cancel_scope.cancel()
    for recorder in (in_pool, in_listener):
        print(f"{recorder.name} plugin saw:")
        for event in sorted(recorder.events):
            print("   ", event)


trio.run(main)
