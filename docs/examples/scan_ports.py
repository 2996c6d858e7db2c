"""Scan two ports this example opened itself: one listening, one bound but not listening.

Only ports we own are probed (never scan ports you did not open, or hosts you
do not run): a socket bound without ``listen()`` makes its port answer SYNs with
a reset, so it is closed; the listener's port is open.
"""

import socket
from contextlib import aclosing

import trio

import trio_conduit as conduit


async def main() -> None:
    with socket.socket() as listening, socket.socket() as bound:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        bound.bind(("127.0.0.1", 0))  # nothing listens: connects are refused
        ports = {listening.getsockname()[1]: "listening", bound.getsockname()[1]: "bound only"}
        async with conduit.open_pool() as pool, aclosing(pool.scan("tcp://127.0.0.1", ports)) as results:
            found = {r.port: r async for r in results}
        for port, what in ports.items():
            result = found[port]
            print(f"{what}: {result.state} ({result.reason})")
        print(conduit.parse_ports("22,80,1000-1002"))


trio.run(main)
