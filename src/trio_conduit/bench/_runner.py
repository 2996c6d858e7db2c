"""What the benchmarks share: CPUs and pinned processes, medians of alternating runs, pipes, stream helpers.

The parent side (:func:`pinned_pair`, :func:`certified_pair`, :func:`compare`,
:func:`pipe_seconds`, :func:`bench_certificates`) runs in ``conduit bench``; the
worker side (:func:`certified_worker`, :func:`announce_and_wait`,
:func:`timed_bulk`, :func:`timed_steps`, :func:`connection_rate`) in the worker
processes (``python -m trio_conduit.bench._worker``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
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
    with serving_process(server(server_cpu)) as port:
        return run_json(client(client_cpu, port))


@contextlib.contextmanager
def serving_process(argv: list[str]) -> Iterator[int]:
    """Run a server side (``argv``): yield the port it prints; close its stdin to end it."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield int(proc.stdout.readline())
    finally:
        stop_process(proc, timeout=10)


def stop_process(proc: subprocess.Popen[Any], *, timeout: float, signum: int | None = None) -> None:
    """End a benchmark's helper process: close its stdin (a worker's cue to stop), send it
    ``signum`` if given, wait up to ``timeout`` seconds, then kill it; close its stdout."""
    if proc.stdin is not None:
        proc.stdin.close()
    if signum is not None:
        proc.send_signal(signum)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def alternating_pair(
    server: Callable[[str, int], list[str]], client: Callable[[int, int, int], list[str]]
) -> dict[str, list[float]]:
    """Both implementations in one run: their servers at once (``server(impl, cpu)``, each a
    process pinned to the server's CPU) and one client process (``client(cpu, raw_port,
    pool_port)``, pinned to the other CPU) that alternates between them block by block, so
    that both see the same machine at the same time. Its JSON: ``{"raw": [...], "pool":
    [...]}``, one figure per block, block *i* of each measured side by side."""
    server_cpu, client_cpu = cpus()
    with (
        serving_process(server("raw", server_cpu)) as raw,
        serving_process(server("pool", server_cpu)) as pool,
    ):
        return run_json(client(client_cpu, raw, pool))


def compare_alternating(run: Callable[[], dict[str, list[float]]], repeat: int, unit: str) -> dict[str, Any]:
    """``repeat`` :func:`alternating_pair` runs: the medians of each side's block figures, and
    ``ratio``, the median of the per-block ratios pool / raw trio (each block against its
    neighbour in time: load that drifts during a run cancels out). ``ratio_of_medians`` too."""
    runs: dict[str, list[float]] = {"raw": [], "pool": []}
    ratios: list[float] = []
    for _ in range(repeat):
        blocks = run()
        runs["raw"] += blocks["raw"]
        runs["pool"] += blocks["pool"]
        ratios += [p / r for r, p in zip(blocks["raw"], blocks["pool"], strict=True)]
    raw, pool = statistics.median(runs["raw"]), statistics.median(runs["pool"])
    return {
        "raw_trio": raw,
        "pool": pool,
        "ratio": statistics.median(ratios),
        "ratio_of_medians": pool / raw,
        "ratios": ratios,
        "runs": runs,
        "unit": unit,
    }


async def alternate_blocks(
    steps: Mapping[str, Callable[[], Awaitable[object]]], amount: int, blocks: int, warm_up: int = 0
) -> dict[str, list[float]]:
    """The client of an :func:`alternating_pair`: ``steps["raw"]`` and ``steps["pool"]``, each
    ``warm_up`` times untimed, then ``blocks`` blocks of ``amount // blocks`` timed steps each,
    alternating which side goes first; each block's rate (steps per second)."""
    per_block = max(1, amount // blocks)
    for step in steps.values():
        for _ in range(warm_up):
            await step()
    out: dict[str, list[float]] = {"raw": [], "pool": []}
    for block in range(blocks):
        for impl in ("raw", "pool") if block % 2 == 0 else ("pool", "raw"):
            out[impl].append((await timed_steps(steps[impl], per_block))["per_s"])
    return out


@contextlib.contextmanager
def bench_certificates() -> Iterator[dict[str, str]]:
    """:func:`certificate_files` in a directory made for this run (removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="conduit-bench-") as tmp:
        yield certificate_files(tmp)


def certified_pair(
    benchmark: str, mode: str, amount: int, files: dict[str, str]
) -> Callable[[str], dict[str, float]]:
    """:func:`compare`'s ``one`` for a benchmark whose workers :func:`certified_worker` runs:
    its server (certificate and key of ``files``) and its client (``mode``, ``amount``, the CA)
    as a :func:`pinned_pair`."""

    def one(impl: str) -> dict[str, float]:
        return pinned_pair(
            lambda cpu: [*WORKER, benchmark, "server", impl, str(cpu), files["cert"], files["key"]],
            lambda cpu, port: [
                *WORKER,
                benchmark,
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


#: A worker's server: ``server(impl, certfile, keyfile)`` announces its port and serves.
CertifiedServer = Callable[[str, str, str], Awaitable[None]]
#: A worker's client: ``client(impl, mode, port, amount, cafile)``, the figures it measured.
CertifiedClient = Callable[[str, str, int, int, str], Awaitable[dict[str, float]]]


def certified_worker(argv: list[str], server: CertifiedServer, client: CertifiedClient) -> bool:
    """Run one side of a :func:`certified_pair` (pinned): ``server IMPL CPU CERT KEY`` or ``client
    IMPL CPU MODE PORT AMOUNT CAFILE`` (the client prints its JSON). ``False``: another role."""
    role, impl, cpu = argv[:3]
    if role == "server":
        pin(int(cpu))
        trio.run(server, impl, argv[3], argv[4])
    elif role == "client":
        pin(int(cpu))
        mode, port, amount, cafile = argv[3], int(argv[4]), int(argv[5]), argv[6]
        print(json.dumps(trio.run(client, impl, mode, port, amount, cafile)), flush=True)
    else:
        return False
    return True


def run_json(argv: list[str]) -> dict[str, Any]:
    """Run ``argv`` to its end; the JSON object it printed."""
    out = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
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


async def timed_steps(
    step: Callable[[], Awaitable[object]], amount: int, warm_up: int = 0
) -> dict[str, float]:
    """``step()`` ``warm_up`` times untimed, then ``amount`` times timed: how many per second."""
    for _ in range(warm_up):
        await step()
    start = time.perf_counter()
    for _ in range(amount):
        await step()
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "per_s": amount / elapsed}


async def connection_rate(
    connect: Callable[[], Awaitable[trio.abc.Stream]], amount: int, warm_up: int = 0
) -> dict[str, float]:
    """``amount`` connections one at a time, each with 1 byte and a close (the ``rate``
    figures; TLS counts its handshakes so), timed after ``warm_up`` untimed ones."""

    async def one() -> None:
        stream = await connect()
        await stream.send_all(b"x")
        await stream.aclose()

    return await timed_steps(one, amount, warm_up)
