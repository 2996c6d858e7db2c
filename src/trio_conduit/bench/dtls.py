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
import json
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import trio_conduit
from trio_conduit.tls import EphemeralCA

from ._runner import WORKER, announce_and_wait, compare, compare_line, pin, pinned_pair

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
        if mode == "handshakes":
            for i in range(_WARM_UP + amount):
                if i == _WARM_UP:
                    start = time.perf_counter()
                channel, closer = await connect()
                await channel.send(b"x")
                await channel.receive()
                if impl == "raw":
                    channel.close()
                await _aclose(closer)
        else:
            channel, closer = await connect()
            for _ in range(_WARM_UP):
                await channel.send(b"x")
                await channel.receive()
            start = time.perf_counter()
            for _ in range(amount):
                await channel.send(b"x")
                await channel.receive()
            elapsed = time.perf_counter() - start
            if impl == "raw":
                channel.close()
            await _aclose(closer)
            return {"seconds": elapsed, "per_s": amount / elapsed}
        elapsed = time.perf_counter() - start
        return {"seconds": elapsed, "per_s": amount / elapsed}


async def _aclose(closer: Any) -> None:
    if isinstance(closer, trio.DTLSEndpoint):
        closer.close()
        await trio.lowlevel.checkpoint()
    else:
        await closer.aclose()


def worker(argv: list[str]) -> None:
    """``server IMPL CPU CERT KEY`` or ``client IMPL CPU MODE PORT AMOUNT CAFILE``."""
    role, impl, cpu = argv[:3]
    pin(int(cpu))
    if role == "server":
        trio.run(_server, impl, argv[3], argv[4])
    else:
        mode, port, amount, cafile = argv[3], int(argv[4]), int(argv[5]), argv[6]
        print(json.dumps(trio.run(_client, impl, mode, port, amount, cafile)), flush=True)


def _pair(mode: str, amount: int, files: dict[str, str]) -> Callable[[str], dict[str, float]]:
    def one(impl: str) -> dict[str, float]:
        return pinned_pair(
            lambda cpu: [*WORKER, "dtls", "server", impl, str(cpu), files["cert"], files["key"]],
            lambda cpu, port: [
                *WORKER,
                "dtls",
                "client",
                impl,
                str(cpu),
                mode,
                str(port),
                str(amount),
                files["ca"],
            ],
        )

    return one


def run_dtls_bench(handshakes: int, round_trips: int, repeat: int) -> dict[str, dict[str, Any]]:
    ca = EphemeralCA("conduit bench CA")
    with tempfile.TemporaryDirectory(prefix="conduit-bench-") as tmp:
        cert, key = ca.issue("localhost", "127.0.0.1").write(tmp, "server")
        cafile = os.path.join(tmp, "ca.pem")
        with open(cafile, "wb") as f:
            f.write(ca.cert_pem)
        files = {"cert": str(cert), "key": str(key), "ca": cafile}
        return {
            "dtls_handshakes_per_s": compare(_pair("handshakes", handshakes, files), repeat, "per_s"),
            "dtls_ping_pong_per_s": compare(_pair("ping-pong", round_trips, files), repeat, "per_s"),
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
