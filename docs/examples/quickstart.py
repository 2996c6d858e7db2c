"""Quickstart: an echo server and a client in one pool."""

import trio

import trio_conduit as conduit


async def echo(conn: conduit.StreamConnection) -> None:
    # Each accepted connection runs this in its own task; the pool closes it afterwards.
    async for data in conn:
        await conn.send_all(data)


async def main() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)  # port 0: any free port
        conn = await pool.connect_stream(address, timeout=5)
        await conn.send_all(b"hello, conduit")
        print(await conn.receive_some())  # b'hello, conduit'
        print(conn.info.transport, conn.id)  # tcp 1
        await conn.aclose()
        nursery.cancel_scope.cancel()  # stop serving


trio.run(main)
