"""Tracing: nsock-style lines through the standard ``logging`` module.

Loggers live under ``trio_conduit``. ``INFO`` shows connects, accepts and
closes; ``DEBUG`` adds socket setup; ``conduit.DEBUG_ALL`` (level 5) adds every
read and write. Each line names the connection (``conn #N``) and the event
(``event #M``); both count up from 1 in each pool.
"""

import functools
import logging
import re
import sys

import trio

import trio_conduit as conduit


class StablePorts(logging.Filter):
    """Ports and file descriptors change from run to run; mask them so the output is stable."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = re.sub(r":\d+\b", ":PORT", re.sub(r"fd \d+", "fd N", record.getMessage()))
        record.args = None
        return True


async def echo(stream: trio.SocketStream) -> None:
    async for data in stream:
        await stream.send_all(data)


async def main() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        # A plain trio server, so that only the client's lines appear, in a fixed order.
        # (A pool's own listener would add "accepted" lines, interleaved as the tasks run.)
        listeners = await nursery.start(functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        conn = await pool.connect_stream(f"tcp://127.0.0.1:{port}")
        await conn.send_all(b"ping")
        await conn.receive_some()
        await conn.aclose()
        nursery.cancel_scope.cancel()


handler = logging.StreamHandler(sys.stdout)
handler.addFilter(StablePorts())
handler.setFormatter(logging.Formatter("%(levelname)-9s %(message)s"))
logging.getLogger("trio_conduit").addHandler(handler)
logging.getLogger("trio_conduit").setLevel(conduit.DEBUG_ALL)
trio.run(main)
