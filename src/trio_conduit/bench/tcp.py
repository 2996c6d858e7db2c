"""TCP through a pool against raw trio: ``bulk`` and ``rate``.

* ``tcp_bulk_mb_per_s`` (``bulk``): one connection carries N MiB one way
  (then the sender half-closes and the server acknowledges the count):
  ``pool.serve`` / ``pool.connect`` against ``trio.serve_tcp`` /
  ``trio.open_tcp_stream``.
* ``tcp_connections_per_s`` (``rate``): connections one at a time, each
  connect + 1 byte + close.

Server and client are two processes pinned to two CPUs; implementations
alternate run by run. ``python -m trio_conduit.bench._worker tcp server IMPL
MODE CPU`` prints its port and serves until its stdin closes; ``... tcp
client IMPL MODE CPU PORT AMOUNT`` prints one JSON result. IMPL is ``raw``
(plain trio) or ``pool``; MODE is ``bulk`` (AMOUNT bytes) or ``rate``
(AMOUNT connections).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio

import trio_conduit

from ._runner import (
    WORKER,
    announce_and_wait,
    compare,
    compare_line,
    connection_rate,
    pin,
    pinned_pair,
    timed_bulk,
)

__all__ = ["BULK", "RATE"]


# ---------------------------------------------------------------------------
# the two sides (in their own processes)
# ---------------------------------------------------------------------------


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
            await announce_and_wait(port)
        else:
            async with trio_conduit.open_pool() as pool:
                address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
                await announce_and_wait(address.port)
        nursery.cancel_scope.cancel()


async def _client(impl: str, mode: str, port: int, amount: int) -> dict[str, float]:
    async with trio_conduit.open_pool() as pool:
        connect: Callable[[], Awaitable[trio.abc.Stream]]
        if impl == "raw":

            async def connect() -> trio.abc.Stream:
                return await trio.open_tcp_stream("127.0.0.1", port)
        else:
            url = f"tcp://127.0.0.1:{port}"

            async def connect() -> trio.abc.Stream:
                return await pool.connect_stream(url)

        if mode == "bulk":
            return await timed_bulk(connect, amount, length_first=False)
        return await connection_rate(connect, amount)


def worker(argv: list[str]) -> None:
    """``server IMPL MODE CPU`` or ``client IMPL MODE CPU PORT AMOUNT`` (see the module docstring)."""
    role, impl, mode, cpu = argv[:4]
    pin(int(cpu))
    if role == "server":
        trio.run(_server, impl, mode)
    else:
        print(json.dumps(trio.run(_client, impl, mode, int(argv[4]), int(argv[5]))), flush=True)


# ---------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------


def _one(mode: str, amount: int) -> Callable[[str], dict[str, float]]:
    def one(impl: str) -> dict[str, float]:
        return pinned_pair(
            lambda cpu: [*WORKER, "tcp", "server", impl, mode, str(cpu)],
            lambda cpu, port: [*WORKER, "tcp", "client", impl, mode, str(cpu), str(port), str(amount)],
        )

    return one


def _run_bulk(options: argparse.Namespace) -> dict[str, Any]:
    size = options.bulk_mib * 1024 * 1024
    return {"tcp_bulk_mb_per_s": compare(_one("bulk", size), options.repeat, "mb_per_s")}


def _run_rate(options: argparse.Namespace) -> dict[str, Any]:
    return {"tcp_connections_per_s": compare(_one("rate", options.connections), options.repeat, "per_s")}


def format_compared(results: dict[str, Any]) -> list[str]:
    """One :func:`~._runner.compare_line` per figure."""
    return [compare_line(name, r) for name, r in results.items()]


BULK = trio_conduit.Benchmark(
    "bulk", "TCP bulk transfer (--bulk-mib), pool vs raw trio", _run_bulk, format_compared
)
RATE = trio_conduit.Benchmark(
    "rate", "TCP connections per second (--connections), pool vs raw trio", _run_rate, format_compared
)
