"""pool.serve(): a task per connection, a handler that raises, and max_connections.

A handler's exception is logged (on stderr, by the ``trio_conduit`` logger) and
passed to the ``conduit_handler_error`` hook; the listener goes on serving.
With ``max_connections=1`` a second client waits in the kernel's backlog until
the first handler has finished.
"""

import functools

import trio

import trio_conduit as conduit


class ReportErrors:
    """A per-pool plugin: print what handlers raise."""

    @conduit.hookimpl
    async def conduit_handler_error(self, conn: conduit.Connection | None, exc: BaseException) -> None:
        print(f"handler error: {exc!r}")


async def shout(conn: conduit.StreamConnection) -> None:
    data = await conn.receive_some()
    if data == b"boom":
        raise ValueError("boom")
    await conn.send_all(data.upper())


async def main() -> None:
    async with conduit.open_pool(plugins=[ReportErrors()]) as pool, trio.open_nursery() as nursery:
        serve = functools.partial(pool.serve, max_connections=1)
        address = await nursery.start(serve, "tcp://127.0.0.1:0", shout)

        bad = await pool.connect_stream(address)
        await bad.send_all(b"boom")
        print("after the error:", await bad.receive_some())  # the pool closed that connection

        first = await pool.connect_stream(address)
        second = await pool.connect_stream(address)  # accepted by the kernel, not yet by serve()
        await second.send_all(b"second")
        with trio.move_on_after(0.3):
            print("second got", await second.receive_some())
        print("second waits while the first handler runs")

        await first.send_all(b"first")
        print("first got", await first.receive_some())
        print("second got", await second.receive_some())  # served once the first handler ended
        nursery.cancel_scope.cancel()


trio.run(main)
