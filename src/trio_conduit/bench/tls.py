"""TLS through a pool against raw ``trio.SSLStream``, same run: ``tls``.

* ``tls_bulk_mb_per_s``: one connection carries N MiB one way (TLS 1.3,
  AES-256-GCM both), then an acknowledgement: ``tls://`` through the pool
  (``pool.serve`` / ``pool.connect``) against ``trio.serve_ssl_over_tcp`` /
  ``trio.open_ssl_over_tcp_stream``.
* ``tls_handshakes_per_s``: full handshakes (no session resumption on either
  side), each connect + verify + 1 byte + close, one at a time, after 20
  untimed ones.
* ``tls_handshakes_per_s_one_cpu``: the same with both sides in one process
  on one CPU: what a handshake costs in CPU, client and server together,
  without the wake-ups between two CPUs (which make the two-process figure
  swing by several per cent from run to run on a shared machine).
* ``tls_cli_pipe`` (with ``--cli``): ``conduit connect tls://`` piping N MiB
  into ``conduit listen tls://`` against ``ncat --ssl`` doing the same
  (:mod:`.cli_pipe`).

Server and client run in two processes pinned to two CPUs (except the
one-CPU figure); implementations alternate run by run. Certificates come from
an :class:`~trio_conduit.tls.EphemeralCA` made for the run
(:func:`~._runner.bench_certificates`).
``python -m trio_conduit.bench._worker tls server|client|one-cpu ...`` is one side.
"""

from __future__ import annotations

import argparse
import functools
import json
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import trio_conduit

from . import cli_pipe
from ._runner import (
    WORKER,
    announce_and_wait,
    bench_certificates,
    certified_pair,
    certified_worker,
    compare,
    compare_line,
    connection_rate,
    one_cpu,
    pin,
    read_exactly,
    run_json,
    timed_bulk,
)

__all__ = ["TLS"]

#: Untimed handshakes before each timed run (the first builds each side's ``SSLContext``).
_WARM_UP = 20


# ---------------------------------------------------------------------------
# the two sides (in their own processes)
# ---------------------------------------------------------------------------


async def _handle(stream: Any) -> None:
    """Bulk: an 8-byte length, that many bytes, then ack with the count. Rate: read to the end."""
    header = await read_exactly(stream, 8)
    if len(header) == 8:
        want = int.from_bytes(header, "big")
        got = 0
        receive = stream.receive_some
        while got < want:
            data = await receive()
            if not data:
                break
            got += len(data)
        await stream.send_all(got.to_bytes(8, "big"))
    while await stream.receive_some():
        pass
    await stream.aclose()


async def _serve(impl: str, certfile: str, keyfile: str, nursery: trio.Nursery, pool: Any) -> int:
    """Start serving ``_handle`` in ``nursery`` (through ``pool`` for ``impl == "pool"``); the port."""

    async def handler(stream: Any) -> None:
        try:
            await _handle(stream)
        except trio.BrokenResourceError:
            pass

    if impl == "raw":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        listeners = await nursery.start(
            functools.partial(trio.serve_ssl_over_tcp, handler, 0, ctx, host="127.0.0.1")
        )
        port: int = listeners[0].transport_listener.socket.getsockname()[1]
        return port
    url = f"tls://127.0.0.1:0?certfile={certfile}&keyfile={keyfile}"
    address = await nursery.start(pool.serve, url, handler)
    return int(address.port)


async def _server(impl: str, certfile: str, keyfile: str) -> None:
    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        await announce_and_wait(await _serve(impl, certfile, keyfile, nursery, pool))
        nursery.cancel_scope.cancel()


def _connector(impl: str, port: int, cafile: str, pool: Any) -> Callable[[], Awaitable[Any]]:
    """Connect (and handshake) to ``port``: raw trio, or ``pool.connect``."""
    if impl == "raw":
        ctx = ssl.create_default_context(cafile=cafile)

        async def connect_raw() -> Any:
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx)
            await stream.do_handshake()  # the pool's connect has done it: count it for both
            return stream

        return connect_raw
    url = f"tls://127.0.0.1:{port}"

    async def connect_pool() -> Any:
        return await pool.connect(url, cafile=cafile, session_cache=False)

    return connect_pool


async def _client(impl: str, mode: str, port: int, amount: int, cafile: str) -> dict[str, float]:
    async with trio_conduit.open_pool() as pool:
        connect = _connector(impl, port, cafile, pool)
        if mode == "bulk":
            return await timed_bulk(connect, amount, length_first=True)
        return await connection_rate(connect, amount, _WARM_UP)


async def _one_cpu(impl: str, amount: int, certfile: str, keyfile: str, cafile: str) -> dict[str, float]:
    """Handshakes with both sides in this process (one trio loop, one CPU): the CPU each costs."""
    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        port = await _serve(impl, certfile, keyfile, nursery, pool)
        result = await connection_rate(_connector(impl, port, cafile, pool), amount, _WARM_UP)
        nursery.cancel_scope.cancel()
    return result


def worker(argv: list[str]) -> None:
    """``server IMPL CPU CERT KEY``, ``client IMPL CPU MODE PORT AMOUNT CAFILE``, or
    ``one-cpu IMPL CPU AMOUNT CERT KEY CAFILE``."""
    if certified_worker(argv, _server, _client):
        return
    _role, impl, cpu = argv[:3]  # one-cpu
    pin(int(cpu))
    amount, cert, key, cafile = int(argv[3]), argv[4], argv[5], argv[6]
    print(json.dumps(trio.run(_one_cpu, impl, amount, cert, key, cafile)), flush=True)


# ---------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------


def _one_process(amount: int, files: dict[str, str]) -> Callable[[str], dict[str, float]]:
    def one(impl: str) -> dict[str, float]:
        cpu, certs = str(one_cpu()), [files["cert"], files["key"], files["ca"]]
        return run_json([*WORKER, "tls", "one-cpu", impl, cpu, str(amount), *certs])

    return one


def run_tls_bench(
    bulk_mib: int, connections: int, repeat: int, *, cli_mib: int | None = None
) -> dict[str, dict[str, Any]]:
    """The TLS figures (see the module docstring); ``cli_mib`` adds the conduit/ncat pipe."""
    with bench_certificates() as files:
        bulk = certified_pair("tls", "bulk", bulk_mib * 1024 * 1024, files)
        rate = certified_pair("tls", "rate", connections, files)
        results = {
            "tls_bulk_mb_per_s": compare(bulk, repeat, "mb_per_s"),
            "tls_handshakes_per_s": compare(rate, repeat, "per_s"),
            "tls_handshakes_per_s_one_cpu": compare(_one_process(connections, files), repeat, "per_s"),
        }
        if cli_mib:
            results["tls_cli_pipe"] = cli_pipe.run_tls_pipe(cli_mib, repeat, files)
    return results


def _run(options: argparse.Namespace) -> dict[str, Any]:
    # with --cli (or --only cli) the TLS pipe too
    cli_mib = options.cli_mib if options.cli or "cli" in (options.only or []) else None
    return run_tls_bench(options.bulk_mib, options.tls_connections, options.repeat, cli_mib=cli_mib)


def _format(results: dict[str, Any]) -> list[str]:
    return [
        cli_pipe.pipe_line(name, r) if name == "tls_cli_pipe" else compare_line(name, r)
        for name, r in results.items()
    ]


TLS = trio_conduit.Benchmark(
    "tls", "TLS bulk and full handshakes, pool vs raw trio.SSLStream (--tls-connections)", _run, _format
)
