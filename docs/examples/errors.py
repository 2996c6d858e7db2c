"""Typed errors: each connect failure is its own type *and* the built-in one.

Nothing here leaves the machine: every address is on loopback or a unix path.
"""

import socket

import trio

import trio_conduit as conduit


async def main() -> None:
    async with conduit.open_pool() as pool:
        # Bad URLs: AddressError (a ValueError) says what is wrong.
        for url in ("tcp://127.0.0.1", "tcp://127.0.0.1:0", "tcp://[::1:80", "udp://host:99999"):
            try:
                await pool.connect(url)
            except conduit.AddressError as exc:
                print("AddressError:", exc)

        # Nothing listens on a port that is bound but not listening: refused (RST).
        with socket.socket() as bound:
            bound.bind(("127.0.0.1", 0))
            port = bound.getsockname()[1]
            try:
                await pool.connect(f"tcp://127.0.0.1:{port}")
            except ConnectionRefusedError as exc:  # the built-in works...
                print(type(exc).__name__, isinstance(exc, conduit.ConnectError), exc.errno)  # ...and ours

        # UDP: the ICMP port unreachable for a datagram surfaces on the next call.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            port = gone.getsockname()[1]
        channel = await pool.connect_channel(f"udp://127.0.0.1:{port}")
        await channel.send(b"anyone?")
        try:
            await channel.receive()
        except conduit.ConnectionRefused as exc:
            print("udp:", type(exc).__name__)

        # A listener whose accept queue is full: SYNs are dropped, our deadline passes.
        with socket.socket() as full:
            full.bind(("127.0.0.1", 0))
            full.listen(0)
            url = f"tcp://127.0.0.1:{full.getsockname()[1]}"
            waiting = []
            for _ in range(10):  # the first connects fill the queue, then one times out
                try:
                    waiting.append(await pool.connect(url, timeout=0.3))
                except TimeoutError as exc:  # conduit.ConnectTimeout
                    print(type(exc).__name__, "after 0.3 s")
                    break
            for conn in waiting:
                await conn.aclose()

        # Broadcast without broadcast=True: EACCES from the kernel, nothing is sent.
        try:
            await pool.connect("udp://127.255.255.255:9")
        except PermissionError as exc:
            print(type(exc).__name__, exc)


trio.run(main)
