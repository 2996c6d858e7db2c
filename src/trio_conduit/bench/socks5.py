"""Connect latency through a SOCKS5 hop: trio-conduit against python-socks, same proxy, same run: ``socks5``.

The proxy is microsocks when it is installed (else trio-conduit's own
:class:`~trio_conduit.proxy.ProxyServer`, in a process of its own); the target
is a plain trio acceptor in another process
(``python -m trio_conduit.bench._worker socks5 target|proxy``). The client
side runs in ``conduit bench``: ``connections`` rounds of one connect per
implementation (interleaved, the order rotating, so machine noise hits all
alike), each connect through the proxy then closed, timed one by one;
``repeat`` such runs. Reported: the median connect time in microseconds of
each (``raw_trio_direct`` and ``direct``: a plain trio socket and
``pool.connect`` straight to the target, for scale), and ``ratio`` =
trio-conduit / python-socks through the proxy; ``p10_*`` and ``ratio_p10``
are the same for the fastest tenth of connects, steadier on a busy machine.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

import trio_conduit
from trio_conduit.proxy import ProxyServer

from ._runner import WORKER, free_port, stop_process, wait_listening

__all__ = ["SOCKS5", "run_socks5_bench"]


# ---------------------------------------------------------------------------
# the target and the proxy (in their own processes)
# ---------------------------------------------------------------------------


async def _until_stdin_closes(nursery: trio.Nursery) -> None:
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    while await stdin.receive_some():
        pass
    nursery.cancel_scope.cancel()


async def _target() -> None:
    async def handler(stream: trio.SocketStream) -> None:
        async with stream:
            while await stream.receive_some():
                pass

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        await _until_stdin_closes(nursery)


async def _own_proxy() -> None:
    async with trio_conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", ProxyServer(pool))
        print(address.port, flush=True)
        await _until_stdin_closes(nursery)


def worker(argv: list[str]) -> None:
    """``target`` or ``proxy``: print the port, serve until stdin closes."""
    trio.run(_target if argv[0] == "target" else _own_proxy)


# ---------------------------------------------------------------------------
# the parent
# ---------------------------------------------------------------------------


@contextmanager
def _process(argv: list[str], *, prints_port: bool) -> Iterator[int]:
    """Run ``argv`` (its port: printed, or a free one filled in for ``{port}``) until the block ends."""
    port = 0 if prints_port else free_port()
    if not prints_port:
        argv = [a.replace("{port}", str(port)) for a in argv]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        if prints_port:
            assert proc.stdout is not None
            port = int(proc.stdout.readline())
        wait_listening(port, proc)
        yield port
    finally:
        stop_process(proc, timeout=5, signum=signal.SIGTERM)


Connector = Callable[[], Awaitable[Any]]


async def _time_one(connect: Connector, close: Callable[[Any], Awaitable[None]]) -> float:
    start = time.perf_counter()
    conn = await connect()
    elapsed = time.perf_counter() - start
    await close(conn)
    return elapsed


async def _measure(proxy_port: int, target_port: int, connections: int, repeat: int) -> dict[str, Any]:
    try:
        from python_socks.async_.trio import Proxy
    except ImportError:
        have_python_socks = False
    else:
        have_python_socks = True

    proxy_url = f"socks5://127.0.0.1:{proxy_port}"
    target_url = f"tcp://127.0.0.1:{target_port}"
    runs: dict[str, list[float]] = {"raw_trio_direct": [], "direct": [], "conduit": [], "python-socks": []}
    fast: dict[str, list[float]] = {name: [] for name in runs}
    async with trio_conduit.open_pool() as pool:

        async def aclose(conn: Any) -> None:
            await conn.aclose()

        async def close_socket(sock: Any) -> None:
            sock.close()
            await trio.lowlevel.checkpoint()

        async def raw_connect() -> trio.socket.SocketType:
            sock = trio.socket.socket()
            try:
                await sock.connect(("127.0.0.1", target_port))
            except BaseException:
                sock.close()
                raise
            return sock

        impls: dict[str, tuple[Connector, Callable[[Any], Awaitable[None]]]] = {
            "raw_trio_direct": (raw_connect, close_socket),
            "direct": (lambda: pool.connect(target_url), aclose),
            "conduit": (lambda: pool.connect(target_url, proxies=[proxy_url]), aclose),
        }
        if have_python_socks:
            proxy = Proxy.from_url(proxy_url)
            impls["python-socks"] = (lambda: proxy.connect("127.0.0.1", target_port), close_socket)
        for connect, close in impls.values():  # warm up
            for _ in range(20):
                await _time_one(connect, close)
        names = list(impls)
        # Interleaved connect by connect, the order rotating, so drift hits every implementation alike;
        # each round's median is one run.
        for _ in range(repeat):
            times: dict[str, list[float]] = {name: [] for name in names}
            for i in range(connections):
                for k in range(len(names)):
                    name = names[(i + k) % len(names)]
                    times[name].append(await _time_one(*impls[name]))
            for name in names:
                runs[name].append(statistics.median(times[name]) * 1e6)
                fast[name].append(statistics.quantiles(times[name], n=10)[0] * 1e6)
    result: dict[str, Any] = {"unit": "microseconds per connect (median)", "proxy": "", "runs": runs}
    for name, values in runs.items():
        if values:
            result[name] = statistics.median(values)
    for name, values in fast.items():
        if values:
            result["p10_" + name] = statistics.median(values)
    if "python-socks" in result:
        result["ratio"] = result["conduit"] / result["python-socks"]
        result["ratio_p10"] = result["p10_conduit"] / result["p10_python-socks"]
    else:
        result["note"] = "python-socks is not installed: pip install 'python-socks[trio]' (nox -s bench does)"
    return result


def run_socks5_bench(connections: int = 300, repeat: int = 5) -> dict[str, Any]:
    """Median connect latency through one SOCKS5 hop: direct, trio-conduit, python-socks."""
    microsocks = shutil.which("microsocks")
    with _process([*WORKER, "socks5", "target"], prints_port=True) as target_port:
        if microsocks is not None:
            proxy_cmd, prints, name = [microsocks, "-i", "127.0.0.1", "-p", "{port}"], False, "microsocks"
        else:
            proxy_cmd, prints, name = [*WORKER, "socks5", "proxy"], True, "trio-conduit ProxyServer"
        with _process(proxy_cmd, prints_port=prints) as proxy_port:
            result = trio.run(_measure, proxy_port, target_port, connections, repeat)
    result["proxy"] = name
    return result


def _run(options: argparse.Namespace) -> dict[str, Any]:
    return {"socks5_connect_us": run_socks5_bench(options.proxy_connections, options.repeat)}


def _format(results: dict[str, Any]) -> list[str]:
    r = results["socks5_connect_us"]
    line = f"{'socks5_connect_us':24} conduit {r['conduit']:6.0f} us"
    line += f"   direct {r['direct']:4.0f} us (bare trio {r['raw_trio_direct']:4.0f} us,"
    line += f" {r['direct'] / r['raw_trio_direct']:.2f}x; {r['proxy']})"
    if "ratio" in r:
        line += f"   python-socks {r['python-socks']:6.0f} us   ratio {r['ratio']:.2f}"
        line += f" (fastest tenth: {r['ratio_p10']:.2f})"
    return [line]


SOCKS5 = trio_conduit.Benchmark(
    "socks5", "connects through a SOCKS5 hop, conduit vs python-socks (--proxy-connections)", _run, _format
)
