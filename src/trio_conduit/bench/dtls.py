"""DTLS through a pool against raw ``trio.DTLSEndpoint``, same run: ``dtls``.

* ``dtls_handshakes_per_s``: full handshakes (no resumption), each a new UDP
  socket, connect + verify + 1 byte echoed + close, one at a time, after 20
  untimed ones: ``dtls://`` through the pool (``pool.serve`` /
  ``pool.connect``, the cookie exchange included) against
  ``DTLSEndpoint.serve`` / ``DTLSEndpoint.connect`` (which does its cookie
  exchange too). Raw trio builds a client ``SSL.Context`` per connect:
  pyOpenSSL ≥ 26.2 refuses a second connection from a context that
  ``DTLSEndpoint.connect`` changed.
* ``dtls_ping_pong_per_s``: on one association, 1-byte messages echoed one
  at a time (``--connections`` of them).

Both servers run at once (processes pinned to one CPU) and one client process
(pinned to the other) alternates between them, block by block (:data:`BLOCKS`
blocks per run, ``--repeat`` runs): the ratio is the median of the per-block
ratios, each block against its neighbour in time, so load that drifts during a
run (a shared machine) cancels out. ``python -m trio_conduit.bench._worker dtls
server|alternate ...`` is one side.
"""

from __future__ import annotations

import argparse
import functools
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import trio_conduit

from ._runner import (
    WORKER,
    alternate_blocks,
    alternating_pair,
    announce_and_wait,
    bench_certificates,
    compare_alternating,
    compare_line,
    pin,
)

__all__ = ["DTLS"]

_WARM_UP = 20
#: Blocks per run, alternating raw trio and the pool.
BLOCKS = 10


async def _echo(channel: Any) -> None:
    try:
        async for message in channel:
            await channel.send(message)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except Exception:  # raw trio: a peer's close_notify surfaces as OpenSSL.SSL.ZeroReturnError
        pass


async def _server(impl: str, certfile: str, keyfile: str) -> None:
    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        if impl == "raw":
            from OpenSSL import SSL

            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.use_certificate_chain_file(certfile)
            ctx.use_privatekey_file(keyfile)
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            endpoint = trio.DTLSEndpoint(sock)
            port = sock.getsockname()[1]
            await nursery.start(endpoint.serve, ctx, _echo)
        else:
            url = f"dtls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
            port = (await nursery.start(pool.serve, url, _echo)).port
        await announce_and_wait(int(port))
        nursery.cancel_scope.cancel()


def _connector(impl: str, port: int, cafile: str, pool: Any) -> Callable[[], Awaitable[tuple[Any, Any]]]:
    """Connect and handshake: (channel, what to close)."""
    if impl == "raw":
        from OpenSSL import SSL

        async def connect_raw() -> tuple[Any, Any]:
            ctx = SSL.Context(SSL.DTLS_METHOD)
            ctx.load_verify_locations(cafile)
            ctx.set_verify(SSL.VERIFY_PEER)
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            endpoint = trio.DTLSEndpoint(sock)
            channel = endpoint.connect(("127.0.0.1", port), ctx)
            await channel.do_handshake()
            return channel, endpoint

        return connect_raw
    url = f"dtls://127.0.0.1:{port}"

    async def connect_pool() -> tuple[Any, Any]:
        conn = await pool.connect(url, cafile=cafile, server_hostname="localhost", session_cache=False)
        return conn, conn

    return connect_pool


async def _client(
    mode: str, raw_port: int, pool_port: int, amount: int, cafile: str
) -> dict[str, list[float]]:
    """Raw trio and the pool, alternating block by block (:func:`~._runner.alternate_blocks`)."""
    async with trio_conduit.open_pool() as pool:
        connectors = {
            "raw": _connector("raw", raw_port, cafile, pool),
            "pool": _connector("pool", pool_port, cafile, pool),
        }

        async def round_trip(channel: Any) -> None:
            await channel.send(b"x")
            await channel.receive()

        def handshakes(impl: str) -> Callable[[], Awaitable[None]]:
            async def handshake() -> None:
                channel, closer = await connectors[impl]()
                await round_trip(channel)
                await _close(impl, channel, closer)

            return handshake

        if mode == "handshakes":
            return await alternate_blocks({i: handshakes(i) for i in connectors}, amount, BLOCKS, _WARM_UP)
        opened = {impl: await connect() for impl, connect in connectors.items()}
        try:
            pings = {impl: functools.partial(round_trip, opened[impl][0]) for impl in opened}
            return await alternate_blocks(pings, amount, BLOCKS, _WARM_UP)
        finally:
            for impl, (channel, closer) in opened.items():
                await _close(impl, channel, closer)


async def _close(impl: str, channel: Any, closer: Any) -> None:
    if impl == "raw":
        channel.close()
    await _aclose(closer)


async def _aclose(closer: Any) -> None:
    if isinstance(closer, trio.DTLSEndpoint):
        closer.close()
        await trio.lowlevel.checkpoint()
    else:
        await closer.aclose()


def worker(argv: list[str]) -> None:
    """``server IMPL CPU CERT KEY`` or ``alternate CPU MODE RAW_PORT POOL_PORT AMOUNT CAFILE``."""
    if argv[0] == "server":
        _, impl, cpu, certfile, keyfile = argv
        pin(int(cpu))
        trio.run(_server, impl, certfile, keyfile)
    else:
        _, cpu, mode, raw, pool, amount, cafile = argv
        pin(int(cpu))
        print(json.dumps(trio.run(_client, mode, int(raw), int(pool), int(amount), cafile)), flush=True)


def _alternating(mode: str, amount: int, files: dict[str, str]) -> Callable[[], dict[str, list[float]]]:
    def run() -> dict[str, list[float]]:
        return alternating_pair(
            lambda impl, cpu: [*WORKER, "dtls", "server", impl, str(cpu), files["cert"], files["key"]],
            lambda cpu, raw, pool: [
                *WORKER,
                "dtls",
                "alternate",
                str(cpu),
                mode,
                str(raw),
                str(pool),
                str(amount),
                files["ca"],
            ],
        )

    return run


def run_dtls_bench(handshakes: int, round_trips: int, repeat: int) -> dict[str, dict[str, Any]]:
    with bench_certificates() as files:
        return {
            "dtls_handshakes_per_s": compare_alternating(
                _alternating("handshakes", handshakes, files), repeat, "per_s"
            ),
            "dtls_ping_pong_per_s": compare_alternating(
                _alternating("ping-pong", round_trips, files), repeat, "per_s"
            ),
        }


def _run(options: argparse.Namespace) -> dict[str, Any]:
    return run_dtls_bench(options.tls_connections, options.connections, options.repeat)


def _format(results: dict[str, Any]) -> list[str]:
    return [compare_line(name, r) for name, r in results.items()]


DTLS = trio_conduit.Benchmark(
    "dtls",
    "DTLS full handshakes and 1-byte ping-pong, pool vs raw trio.DTLSEndpoint "
    "(--tls-connections, --connections)",
    _run,
    _format,
)
