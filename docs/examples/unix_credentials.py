"""Unix sockets: a stream server on a path, peer credentials, stale files, cleanup.

Both ends of a ``unix://`` stream carry the other process's pid/uid/gid
(``SO_PEERCRED``) in ``conn.info.peer_credentials``. A socket file left behind
by a dead server is replaced; the listener removes its own file when it closes.
"""

import os
import socket
import tempfile

import trio

import trio_conduit as conduit


async def whoami(conn: conduit.StreamConnection) -> None:
    creds = conn.info.peer_credentials
    assert creds is not None
    await conn.send_all(b"pid=%d uid=%d" % (creds.pid, creds.uid))


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "server.sock")
        with socket.socket(socket.AF_UNIX) as dead:  # a crashed server's leftover socket file
            dead.bind(path)
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            address = await nursery.start(pool.serve, f"unix://{path}", whoami)
            conn = await pool.connect_stream(address)
            reply = await conn.receive_some()
            print("the server saw me:", reply == b"pid=%d uid=%d" % (os.getpid(), os.getuid()))
            creds = conn.info.peer_credentials
            print("and I see the server:", creds is not None and creds.pid == os.getpid())
            nursery.cancel_scope.cancel()
        print("socket file left behind:", await trio.Path(path).exists())

    # The Linux abstract namespace: a name, no file at all.
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, f"unix://@conduit-example-{os.getpid()}", whoami)
        conn = await pool.connect_stream(address)
        print("abstract:", (await conn.receive_some()).startswith(b"pid="))
        nursery.cancel_scope.cancel()


trio.run(main)
