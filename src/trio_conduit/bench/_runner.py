"""What the benchmarks share: CPUs and pinned processes, medians of alternating runs, pipes, stream helpers.

The parent side (:func:`pinned_pair`, :func:`compare`, :func:`pipe_seconds`)
runs in ``conduit bench``; the async helpers (:func:`announce_and_wait`,
:func:`timed_bulk`, :func:`connection_rate`) in the worker processes
(``python -m trio_conduit.bench._worker``).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

#: A benchmark's side: ``python -m trio_conduit.bench._worker BENCHMARK ROLE ...``.
WORKER = [sys.executable, "-m", "trio_conduit.bench._worker"]
#: The ``conduit`` command, as the CLI pipe benchmarks run it.
CONDUIT = [sys.executable, "-m", "trio_conduit"]
CHUNK = 1024 * 1024
_BLOCK = memoryview(bytes(CHUNK))


# ---------------------------------------------------------------------------
# the parent: processes, runs, medians
# ---------------------------------------------------------------------------


def cpus() -> tuple[int, int]:
    """The (server, client) CPUs to pin the two sides to, or (-1, -1) on a single CPU."""
    found = sorted(os.sched_getaffinity(0))
    return (found[0], found[1]) if len(found) >= 2 else (-1, -1)


def one_cpu() -> int:
    """The CPU a one-process benchmark pins itself to (the client's of :func:`pinned_pair`), or -1."""
    return cpus()[1]


def pin(cpu: int) -> None:
    """Pin this process to ``cpu`` (-1: leave it be)."""
    if cpu >= 0:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass


def pinned_pair(
    server: Callable[[int], list[str]], client: Callable[[int, int], list[str]]
) -> dict[str, float]:
    """Run a benchmark's two sides as processes pinned to two CPUs; the client's JSON is the result.

    ``server(cpu)`` gives the server's argv: it prints its port and serves
    until its stdin closes. ``client(cpu, port)`` gives the client's argv: it
    prints one JSON object.
    """
    server_cpu, client_cpu = cpus()
    proc = subprocess.Popen(server(server_cpu), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        return run_json(client(client_cpu, port))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_json(argv: list[str]) -> dict[str, float]:
    """Run ``argv`` to its end; the JSON object it printed."""
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def compare(one: Callable[[str], dict[str, float]], repeat: int, key: str) -> dict[str, Any]:
    """``one("raw")`` (raw trio) against ``one("pool")``, ``repeat`` times each, alternating
    which goes first; the medians of their ``key`` and the ratio pool / raw trio."""
    runs: dict[str, list[float]] = {"raw": [], "pool": []}
    for i in range(repeat):
        for impl in ("raw", "pool") if i % 2 == 0 else ("pool", "raw"):
            runs[impl].append(one(impl)[key])
    raw, pool = statistics.median(runs["raw"]), statistics.median(runs["pool"])
    return {"raw_trio": raw, "pool": pool, "ratio": pool / raw, "runs": runs, "unit": key}


def compare_line(name: str, r: dict[str, Any]) -> str:
    """A :func:`compare` result as its report line."""
    return f"{name:24} pool {r['pool']:10.1f}   raw trio {r['raw_trio']:10.1f}   ratio {r['ratio']:.3f}"


def certificate_files(directory: str) -> dict[str, str]:
    """A fresh CA and a server certificate for ``localhost`` and 127.0.0.1, written in ``directory``:
    ``{"cert": ..., "key": ..., "ca": ...}`` (PEM files)."""
    from ..tls import EphemeralCA

    ca = EphemeralCA("conduit bench CA")
    cert, key = ca.issue("localhost", "127.0.0.1").write(directory, "server")
    cafile = os.path.join(directory, "ca.pem")
    with open(cafile, "wb") as f:
        f.write(ca.cert_pem)
    return {"cert": str(cert), "key": str(key), "ca": cafile}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[Any]) -> None:
    """Until ``proc`` listens on 127.0.0.1:``port`` (read from /proc/net/tcp: a probe
    connection would be the one connection a listener without keep-open serves)."""
    deadline = time.monotonic() + 20
    needle = f":{port:04X} "
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with open("/proc/net/tcp") as f:
            if any(needle in line and line.split()[3] == "0A" for line in f):
                return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def pipe_seconds(listen: list[str], connect: list[str], port: int, size: int) -> float:
    """``head -c SIZE /dev/zero | CONNECT`` into a running ``LISTEN > /dev/null``: the sender's wall time.

    The listener is started and listening first, so its start-up is not counted;
    the sender's is (that is what a user waits for).
    """
    with open(os.devnull, "wb") as sink:
        listener = subprocess.Popen(listen, stdout=sink, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_listening(port, listener)
            start = time.perf_counter()
            head = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
            assert head.stdout is not None
            try:
                subprocess.run(connect, stdin=head.stdout, check=True, stdout=subprocess.DEVNULL)
            finally:
                head.stdout.close()
                head.wait()
            return time.perf_counter() - start
        finally:
            listener.terminate()
            listener.wait()


# ---------------------------------------------------------------------------
# the workers: serving, and timing a client
# ---------------------------------------------------------------------------


async def announce_and_wait(port: int) -> None:
    """Print ``port`` for the parent, then serve until the parent closes our stdin."""
    print(port, flush=True)
    await trio.to_thread.run_sync(sys.stdin.read)


async def read_exactly(stream: Any, n: int) -> bytes:
    """``n`` bytes from ``stream``, or fewer if it ends first."""
    data = b""
    while len(data) < n:
        more = await stream.receive_some(n - len(data))
        if not more:
            break
        data += more
    return data


async def timed_bulk(
    connect: Callable[[], Awaitable[Any]], amount: int, *, length_first: bool
) -> dict[str, float]:
    """Connect, send ``amount`` bytes, wait for the server's 8-byte count: the time from connecting.

    The server learns where the bytes end from an 8-byte length sent first
    (``length_first``; for TLS) or from the end of the stream (``send_eof``).
    """
    start = time.perf_counter()
    stream = await connect()
    if length_first:
        await stream.send_all(amount.to_bytes(8, "big"))
    sent = 0
    while sent < amount:
        n = min(CHUNK, amount - sent)
        await stream.send_all(_BLOCK[:n])
        sent += n
    if not length_first:
        assert isinstance(stream, trio.abc.HalfCloseableStream)
        await stream.send_eof()
    ack = await read_exactly(stream, 8)
    elapsed = time.perf_counter() - start
    await stream.aclose()
    if int.from_bytes(ack, "big") != amount:
        raise RuntimeError(f"server counted {int.from_bytes(ack, 'big')} bytes, sent {amount}")
    return {"seconds": elapsed, "mb_per_s": amount / elapsed / 1e6}


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
