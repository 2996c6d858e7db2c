"""One side of a benchmark, run in its own (CPU-pinned) process by ``conduit bench``.

``python -m trio_conduit.cli._benchworker server IMPL MODE CPU`` prints its port
and serves until its stdin closes; ``... client IMPL MODE CPU PORT AMOUNT``
prints one JSON result. IMPL is ``raw`` (plain trio) or ``pool``; MODE is
``bulk`` (AMOUNT bytes one way, then an ack) or ``rate`` (AMOUNT connections,
each connect + 1 byte + close, one at a time).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

import trio_conduit

CHUNK = 1024 * 1024


async def _sink(stream: trio.abc.Stream, *, ack: bool) -> None:
    receive = stream.receive_some
    total = 0
    while data := await receive():
        total += len(data)
    if ack:
        await stream.send_all(total.to_bytes(8, "big"))
    await stream.aclose()


async def _server(impl: str, mode: str) -> None:
    async def handler(stream: Any) -> None:
        await _sink(stream, ack=mode == "bulk")

    async with trio.open_nursery() as nursery:
        if impl == "raw":
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            await _announce_and_wait(port)
        else:
            async with trio_conduit.open_pool() as pool:
                address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
                await _announce_and_wait(address.port)
        nursery.cancel_scope.cancel()


async def _announce_and_wait(port: int) -> None:
    print(port, flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes our stdin


async def _client(impl: str, mode: str, port: int, amount: int) -> dict[str, float]:
    async with trio_conduit.open_pool() as pool:
        connect: Callable[[], Awaitable[trio.abc.Stream]]
        if impl == "raw":

            async def connect() -> trio.abc.Stream:
                return await trio.open_tcp_stream("127.0.0.1", port)
        else:
            url = f"tcp://127.0.0.1:{port}"

            async def connect() -> trio.abc.Stream:
                conn: trio.abc.Stream = await pool.connect(url)
                return conn

        if mode == "bulk":
            block = memoryview(b"\x00" * CHUNK)
            start = time.perf_counter()
            stream = await connect()
            sent = 0
            while sent < amount:
                n = min(CHUNK, amount - sent)
                await stream.send_all(block[:n])
                sent += n
            assert isinstance(stream, trio.abc.HalfCloseableStream)
            await stream.send_eof()
            ack = b""
            while len(ack) < 8:
                more = await stream.receive_some(8 - len(ack))
                if not more:
                    break
                ack += more
            elapsed = time.perf_counter() - start
            await stream.aclose()
            if int.from_bytes(ack, "big") != amount:
                raise RuntimeError(f"server counted {int.from_bytes(ack, 'big')} bytes, sent {amount}")
            return {"seconds": elapsed, "mb_per_s": amount / elapsed / 1e6}
        return await connection_rate(connect, amount)


async def connection_rate(
    connect: Callable[[], Awaitable[trio.abc.Stream]], amount: int, warm_up: int = 0
) -> dict[str, float]:
    """``amount`` connections one at a time, each with 1 byte and a close (the ``rate``
    figures; TLS counts its handshakes so), timed after ``warm_up`` untimed ones."""
    for _ in range(warm_up):
        stream = await connect()
        await stream.send_all(b"x")
        await stream.aclose()
    start = time.perf_counter()
    for _ in range(amount):
        stream = await connect()
        await stream.send_all(b"x")
        await stream.aclose()
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "per_s": amount / elapsed}


def main(argv: list[str]) -> None:
    role, impl, mode, cpu = argv[:4]
    if int(cpu) >= 0:
        try:
            os.sched_setaffinity(0, {int(cpu)})
        except OSError:
            pass
    if role == "server":
        trio.run(_server, impl, mode)
    else:
        print(json.dumps(trio.run(_client, impl, mode, int(argv[4]), int(argv[5]))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
