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

Server and client run in two processes pinned to two CPUs; implementations
alternate run by run. ``python -m trio_conduit.bench._worker dtls server|client ...``
is one side.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import trio_conduit

from ._runner import (
    announce_and_wait,
    bench_certificates,
    certified_pair,
    certified_worker,
    compare,
    compare_line,
    timed_steps,
)

__all__ = ["DTLS"]

_WARM_UP = 20


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


async def _client(impl: str, mode: str, port: int, amount: int, cafile: str) -> dict[str, float]:
    async with trio_conduit.open_pool() as pool:
        connect = _connector(impl, port, cafile, pool)

        async def round_trip(channel: Any) -> None:
            await channel.send(b"x")
            await channel.receive()

        async def handshake() -> None:
            channel, closer = await connect()
            await round_trip(channel)
            await _close(impl, channel, closer)

        if mode == "handshakes":
            return await timed_steps(handshake, amount, _WARM_UP)
        channel, closer = await connect()
        try:
            return await timed_steps(lambda: round_trip(channel), amount, _WARM_UP)
        finally:
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
    """``server IMPL CPU CERT KEY`` or ``client IMPL CPU MODE PORT AMOUNT CAFILE``."""
    certified_worker(argv, _server, _client)


def run_dtls_bench(handshakes: int, round_trips: int, repeat: int) -> dict[str, dict[str, Any]]:
    with bench_certificates() as files:
        return {
            "dtls_handshakes_per_s": compare(
                certified_pair("dtls", "handshakes", handshakes, files), repeat, "per_s"
            ),
            "dtls_ping_pong_per_s": compare(
                certified_pair("dtls", "ping-pong", round_trips, files), repeat, "per_s"
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
