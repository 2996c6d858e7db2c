"""TLS benchmarks for ``conduit bench --only tls``: the pool against raw ``trio.SSLStream``, same run.

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
  into ``conduit listen tls://`` against ``ncat --ssl`` doing the same.

Server and client run in two processes pinned to two CPUs (except the
one-CPU figure); implementations alternate run by run. Certificates come from an :class:`EphemeralCA` made for
the run. ``python -m trio_conduit.tls._bench server|client ...`` is one side.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..cli._benchworker import connection_rate

__all__ = ["run_tls_bench"]

_WORKER = [sys.executable, "-m", "trio_conduit.tls._bench"]
_CHUNK = 1024 * 1024
#: Untimed handshakes before each timed run (the first builds each side's ``SSLContext``).
_WARM_UP = 20


# ---------------------------------------------------------------------------
# the two sides (in their own processes)
# ---------------------------------------------------------------------------


async def _read_exactly(stream: Any, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = await stream.receive_some(n - len(data))
        if not more:
            break
        data += more
    return data


async def _handle(stream: Any) -> None:
    """Bulk: an 8-byte length, that many bytes, then ack with the count. Rate: read to the end."""
    header = await _read_exactly(stream, 8)
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
    import trio_conduit

    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        await _announce_and_wait(await _serve(impl, certfile, keyfile, nursery, pool))
        nursery.cancel_scope.cancel()


async def _announce_and_wait(port: int) -> None:
    print(port, flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)


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
    import trio_conduit

    async with trio_conduit.open_pool() as pool:
        connect = _connector(impl, port, cafile, pool)
        if mode == "bulk":
            block = memoryview(bytes(_CHUNK))
            start = time.perf_counter()
            stream = await connect()
            await stream.send_all(amount.to_bytes(8, "big"))
            sent = 0
            while sent < amount:
                n = min(_CHUNK, amount - sent)
                await stream.send_all(block[:n])
                sent += n
            ack = await _read_exactly(stream, 8)
            elapsed = time.perf_counter() - start
            await stream.aclose()
            if int.from_bytes(ack, "big") != amount:
                raise RuntimeError(f"server counted {int.from_bytes(ack, 'big')} bytes, sent {amount}")
            return {"seconds": elapsed, "mb_per_s": amount / elapsed / 1e6}
        return await connection_rate(connect, amount, _WARM_UP)


async def _one_cpu(impl: str, amount: int, certfile: str, keyfile: str, cafile: str) -> dict[str, float]:
    """Handshakes with both sides in this process (one trio loop, one CPU): the CPU each costs."""
    import trio_conduit

    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        port = await _serve(impl, certfile, keyfile, nursery, pool)
        result = await connection_rate(_connector(impl, port, cafile, pool), amount, _WARM_UP)
        nursery.cancel_scope.cancel()
    return result


def _pin(cpu: int) -> None:
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def main(argv: list[str]) -> None:
    role, impl, cpu = argv[:3]
    _pin(int(cpu))
    if role == "server":
        trio.run(_server, impl, argv[3], argv[4])
    elif role == "one-cpu":
        amount, cert, key, cafile = int(argv[3]), argv[4], argv[5], argv[6]
        print(json.dumps(trio.run(_one_cpu, impl, amount, cert, key, cafile)), flush=True)
    else:
        mode, port, amount, cafile = argv[3], int(argv[4]), int(argv[5]), argv[6]
        print(json.dumps(trio.run(_client, impl, mode, port, amount, cafile)), flush=True)


# ---------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------


def _one(impl: str, mode: str, amount: int, files: dict[str, str]) -> dict[str, float]:
    from ..cli.bench import pinned_pair

    return pinned_pair(
        lambda cpu: [*_WORKER, "server", impl, str(cpu), files["cert"], files["key"]],
        lambda cpu, port: [*_WORKER, "client", impl, str(cpu), mode, str(port), str(amount), files["ca"]],
    )


def _one_cpu_run(impl: str, amount: int, files: dict[str, str]) -> dict[str, float]:
    from ..cli.bench import one_cpu

    argv = [*_WORKER, "one-cpu", impl, str(one_cpu()), str(amount), files["cert"], files["key"], files["ca"]]
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def _pair(
    mode: str, amount: int, repeat: int, key: str, files: dict[str, str], *, one_cpu: bool = False
) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"raw": [], "pool": []}
    for i in range(repeat):
        for impl in ("raw", "pool") if i % 2 == 0 else ("pool", "raw"):
            result = _one_cpu_run(impl, amount, files) if one_cpu else _one(impl, mode, amount, files)
            runs[impl].append(result[key])
    raw, pool = statistics.median(runs["raw"]), statistics.median(runs["pool"])
    return {"raw_trio": raw, "pool": pool, "ratio": pool / raw, "runs": runs, "unit": key}


def _cli(mib: int, repeat: int, files: dict[str, str]) -> dict[str, Any]:
    """Each tool pipes ``mib`` MiB, and 0 MiB (its fixed cost: start, handshake, close), alternately.

    ``*_mb_per_s`` is end to end; ``*_bulk_mb_per_s`` the rate once running:
    the bytes over the difference of the two medians.
    """
    size = mib * 1024 * 1024
    full: dict[str, list[float]] = {"conduit": [], "ncat": []}
    empty: dict[str, list[float]] = {"conduit": [], "ncat": []}
    for i in range(repeat):
        for amount in (mib, 0) if i % 2 == 0 else (0, mib):
            runs = _cli_once(amount, files)
            for name, seconds in runs.items():
                (full if amount else empty)[name].append(seconds)
    out: dict[str, Any] = {"bytes": size, "runs_seconds": full, "runs_seconds_0_bytes": empty}
    for name in ("conduit", "ncat"):
        if full[name]:
            t, t0 = statistics.median(full[name]), statistics.median(empty[name])
            out[f"{name}_mb_per_s"] = size / t / 1e6
            out[f"{name}_fixed_seconds"] = t0
            out[f"{name}_bulk_mb_per_s"] = size / max(t - t0, 1e-9) / 1e6
    if full["ncat"]:
        out["ratio"] = out["conduit_mb_per_s"] / out["ncat_mb_per_s"]
        out["ratio_bulk"] = out["conduit_bulk_mb_per_s"] / out["ncat_bulk_mb_per_s"]
    return out


def _cli_once(mib: int, files: dict[str, str]) -> dict[str, float]:
    """Seconds for conduit, then ncat (if installed), to pipe ``mib`` MiB over TLS."""
    from ..cli.bench import free_port, pipe_seconds

    conduit = [sys.executable, "-m", "trio_conduit"]
    size = mib * 1024 * 1024
    port = free_port()
    runs = {
        "conduit": pipe_seconds(
            [*conduit, "listen", f"tls://127.0.0.1:{port}", "--cert", files["cert"], "--key", files["key"]],
            [*conduit, "connect", f"tls://localhost:{port}", "--cafile", files["ca"]],
            port,
            size,
        )
    }
    ncat = shutil.which("ncat")
    if ncat:
        port = free_port()
        runs["ncat"] = pipe_seconds(
            [
                ncat,
                "--ssl",
                "--ssl-cert",
                files["cert"],
                "--ssl-key",
                files["key"],
                "-l",
                "127.0.0.1",
                str(port),
            ],
            [
                ncat,
                "--ssl",
                "--ssl-verify",
                "--ssl-trustfile",
                files["ca"],
                "--send-only",
                "localhost",  # ncat checks DNS names only, not IP addresses
                str(port),
            ],
            port,
            size,
        )
    return runs


def run_tls_bench(
    bulk_mib: int, connections: int, repeat: int, *, cli_mib: int | None = None
) -> dict[str, dict[str, Any]]:
    """The TLS figures (see the module docstring); ``cli_mib`` adds the conduit/ncat pipe."""
    from ._certs import EphemeralCA

    ca = EphemeralCA("conduit bench CA")
    with tempfile.TemporaryDirectory(prefix="conduit-bench-") as tmp:
        cert, key = ca.issue("localhost", "127.0.0.1").write(tmp, "server")
        cafile = os.path.join(tmp, "ca.pem")
        with open(cafile, "wb") as f:
            f.write(ca.cert_pem)
        files = {"cert": str(cert), "key": str(key), "ca": cafile}
        results = {
            "tls_bulk_mb_per_s": _pair("bulk", bulk_mib * 1024 * 1024, repeat, "mb_per_s", files),
            "tls_handshakes_per_s": _pair("rate", connections, repeat, "per_s", files),
            "tls_handshakes_per_s_one_cpu": _pair("rate", connections, repeat, "per_s", files, one_cpu=True),
        }
        if cli_mib:
            results["tls_cli_pipe"] = _cli(cli_mib, repeat, files)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
