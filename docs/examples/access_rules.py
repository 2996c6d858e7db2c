"""Access rules: which clients a server lets in (ncat's ``--allow`` / ``--deny``).

The rules are checked as each client is accepted, before anything is read
from it: a refused client is reset at once and never reaches a hook, a TLS
handshake or the handler. 127.0.0.2 and up are loopback addresses on Linux, so
one machine can play several clients (``local=`` picks the source address).
"""

from functools import partial

import trio

import trio_conduit as conduit


async def welcome(conn: conduit.StreamConnection) -> None:
    await conn.send_all(b"welcome")


async def main() -> None:
    rules = conduit.AccessRules.build(allow="127.0.0.0/29,10.0-3.*.*", deny="127.0.0.2")
    print(rules)
    print({peer: rules.admits(peer) for peer in ("127.0.0.1", "127.0.0.2", "10.2.9.9", "10.4.0.1")})

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        serve = partial(pool.serve, "tcp://127.0.0.1:0", welcome, allow="127.0.0.0/29", deny="127.0.0.2")
        address = await nursery.start(serve)
        for source in ("127.0.0.1", "127.0.0.2"):
            try:
                conn = await pool.connect_stream(address, local=source)
                print(source, await conn.receive_some())
            except (trio.BrokenResourceError, conduit.ConnectError):
                print(source, "reset before a byte was read")
        (listener,) = pool.listeners
        print("denied:", listener.denied)
        nursery.cancel_scope.cancel()


trio.run(main)
