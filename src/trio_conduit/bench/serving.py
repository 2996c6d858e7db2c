"""Serving: ``workers`` (``conduit listen --workers 2`` against one worker) and ``memory``.

* ``workers_connections_per_s``: ``conduit listen --workers N -k --echo
  tcp://`` with N = 2 against N = 1; two client processes, each with
  ``_CONCURRENCY`` connections in flight at a time (connect, 1 byte each way,
  close), count the connections per second (all the clients' connections over
  the longest client's time). ``ratio`` is two workers / one.
* ``workers_tls_handshakes_per_s``: the same over ``tls://`` (full handshakes,
  certificates from an :class:`~trio_conduit.tls.EphemeralCA`).
* ``memory_per_idle_connection_kb`` (``memory``): ``--idle-connections``
  (default 10,000) idle TCP connections held open to ``pool.serve`` against
  ``trio.serve_tcp`` (each handler waits in ``receive_some``); the server's
  resident memory growth (``VmRSS``) per connection. ``ratio`` is pool / raw
  trio. The soft ``RLIMIT_NOFILE`` is raised to the hard limit in both
  processes.

On a 2-CPU machine the clients share the CPUs with the workers, so two
workers cannot double the rate: the figure says what a second process buys
there. ``python -m trio_conduit.bench._worker serving client|memory-server|
memory-client ...`` is one side.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import time
from functools import partial
from typing import Any

import trio

import trio_conduit

from ._runner import CONDUIT, WORKER, announce_and_wait, bench_certificates, free_port, stop_process

__all__ = ["MEMORY", "WORKERS"]

#: Connections each client process keeps in flight.
_CONCURRENCY = 8
_CLIENTS = 2


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---------------------------------------------------------------------------
# workers: the client side (the server is `conduit listen --workers N`)
# ---------------------------------------------------------------------------


async def _rate_client(port: int, amount: int, cafile: str | None) -> dict[str, float]:
    ctx = ssl.create_default_context(cafile=cafile) if cafile else None
    counter = iter(range(amount))

    async def one_at_a_time() -> None:
        for _ in counter:
            stream: trio.abc.Stream
            if ctx is None:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            else:
                stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx)
            await stream.send_all(b"x")
            if await stream.receive_some(1) != b"x":
                raise RuntimeError("no echo")
            await stream.aclose()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(_CONCURRENCY):
            nursery.start_soon(one_at_a_time)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "connections": amount}


def _listening(port: int) -> int:
    """How many sockets listen on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    needle = f":{port:04X} "
    with open("/proc/net/tcp") as f:
        return sum(1 for line in f if needle in line.split()[1] + " " and line.split()[3] == "0A")


def _workers_run(workers: int, url_of: Any, amount: int, cafile: str | None) -> float:
    """Serve with ``workers`` processes; ``_CLIENTS`` clients share ``amount`` connections; per second."""
    port = free_port()
    server = subprocess.Popen(
        [*CONDUIT, "listen", "--workers", str(workers), "-k", "--echo", url_of(port)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while _listening(port) < workers:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"conduit listen --workers {workers} did not start")
            time.sleep(0.02)
        each = amount // _CLIENTS
        argv = [*WORKER, "serving", "client", str(port), str(each), cafile or "-"]
        clients = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(_CLIENTS)]
        results = []
        for client in clients:
            out, _ = client.communicate()
            if client.returncode:
                raise RuntimeError("a benchmark client failed")
            results.append(json.loads(out))
        total: float = sum(r["connections"] for r in results) / max(r["seconds"] for r in results)
        return total
    finally:
        stop_process(server, timeout=30, signum=signal.SIGTERM)


def _compare_workers(url_of: Any, amount: int, repeat: int, cafile: str | None) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"1": [], "2": []}
    for i in range(repeat):
        for n in (1, 2) if i % 2 == 0 else (2, 1):
            runs[str(n)].append(_workers_run(n, url_of, amount, cafile))
    one, two = statistics.median(runs["1"]), statistics.median(runs["2"])
    return {"one_worker": one, "two_workers": two, "ratio": two / one, "runs": runs, "unit": "per_s"}


def run_workers_bench(connections: int, tls_connections: int, repeat: int) -> dict[str, Any]:
    with bench_certificates() as files:
        cert, key, cafile = files["cert"], files["key"], files["ca"]
        return {
            "workers_connections_per_s": _compare_workers(
                lambda port: f"tcp://127.0.0.1:{port}", connections, repeat, None
            ),
            "workers_tls_handshakes_per_s": _compare_workers(
                lambda port: f"tls://127.0.0.1:{port}?certfile={cert}&keyfile={key}",
                tls_connections,
                repeat,
                cafile,
            ),
        }


# ---------------------------------------------------------------------------
# memory: idle connections
# ---------------------------------------------------------------------------


async def _memory_server(impl: str, count: int) -> None:
    _raise_nofile()
    accepted = 0
    first, everyone = trio.Event(), trio.Event()

    async def handler(stream: Any) -> None:
        nonlocal accepted
        accepted += 1
        first.set()
        if accepted == count:
            everyone.set()
        await stream.receive_some()

    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        if impl == "raw":
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
        else:
            address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
            port = address.port
        # one connection first, so that both sides have made everything made once
        warm = await trio.open_tcp_stream("127.0.0.1", port)
        await first.wait()
        await warm.aclose()
        accepted = 0
        await trio.sleep(0.1)
        print(json.dumps({"port": port, "rss_kb": _rss_kb()}), flush=True)
        await everyone.wait()
        await trio.sleep(0.2)  # let every handler reach receive_some
        print(json.dumps({"rss_kb": _rss_kb()}), flush=True)
        await announce_and_wait(port)
        nursery.cancel_scope.cancel()


def _memory_client(port: int, count: int) -> None:
    _raise_nofile()
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    print("connected", flush=True)
    sys.stdin.read()
    for sock in held:
        sock.close()


def _memory_run(impl: str, count: int) -> float:
    """KB of server RSS per idle connection."""
    server = subprocess.Popen(
        [*WORKER, "serving", "memory-server", impl, str(count)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    client = None
    try:
        assert server.stdout is not None
        before = json.loads(server.stdout.readline())
        client = subprocess.Popen(
            [*WORKER, "serving", "memory-client", str(before["port"]), str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        after = json.loads(server.stdout.readline())
        return float(after["rss_kb"] - before["rss_kb"]) / count
    finally:
        for proc in (client, server):
            if proc is not None:
                stop_process(proc, timeout=30)


def run_memory_bench(count: int, repeat: int) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"raw": [], "pool": []}
    for i in range(repeat):
        for impl in ("raw", "pool") if i % 2 == 0 else ("pool", "raw"):
            runs[impl].append(_memory_run(impl, count))
    raw, pool = statistics.median(runs["raw"]), statistics.median(runs["pool"])
    return {
        "memory_per_idle_connection_kb": {
            "raw_trio": raw,
            "pool": pool,
            "ratio": pool / raw,
            "connections": count,
            "runs": runs,
            "unit": "kb",
        }
    }


def worker(argv: list[str]) -> None:
    """``client PORT AMOUNT CAFILE|-``, ``memory-server IMPL COUNT``, ``memory-client PORT COUNT``."""
    role = argv[0]
    if role == "client":
        port, amount, cafile = int(argv[1]), int(argv[2]), argv[3]
        print(json.dumps(trio.run(_rate_client, port, amount, None if cafile == "-" else cafile)), flush=True)
    elif role == "memory-server":
        trio.run(_memory_server, argv[1], int(argv[2]))
    elif role == "memory-client":
        _memory_client(int(argv[1]), int(argv[2]))
    else:
        raise SystemExit(f"serving: unknown role {role!r}")


def _format_workers(results: dict[str, Any]) -> list[str]:
    return [
        f"{name:30} 2 workers {r['two_workers']:9.1f}   1 worker {r['one_worker']:9.1f}   "
        f"ratio {r['ratio']:.3f}"
        for name, r in results.items()
    ]


def _format_memory(results: dict[str, Any]) -> list[str]:
    r = results["memory_per_idle_connection_kb"]
    return [
        f"memory per idle connection ({r['connections']}): pool {r['pool']:.2f} KB   "
        f"raw trio {r['raw_trio']:.2f} KB   ratio {r['ratio']:.3f}"
    ]


def _run_workers(options: argparse.Namespace) -> dict[str, Any]:
    return run_workers_bench(options.connections, options.tls_connections, options.repeat)


def _run_memory(options: argparse.Namespace) -> dict[str, Any]:
    return run_memory_bench(options.idle_connections, options.repeat)


WORKERS = trio_conduit.Benchmark(
    "workers",
    "conduit listen --workers 2 against 1: connection and TLS handshake rates (--connections, "
    "--tls-connections)",
    _run_workers,
    _format_workers,
)
MEMORY = trio_conduit.Benchmark(
    "memory",
    "server RSS per idle TCP connection, pool.serve vs trio.serve_tcp (--idle-connections)",
    _run_memory,
    _format_memory,
)
