"""``conduit bench``: pool against raw trio, measured in the same run, as ratios.

Each figure pits two CPU-pinned processes (server on one core, client on the
other) against each other over loopback TCP; implementations alternate run by
run so machine noise hits both alike; the report gives medians and the ratio
pool / raw trio. ``--cli`` adds ``head -c | conduit connect`` into ``conduit listen >
/dev/null`` against ``ncat`` doing the same (when ncat is installed): the
sender's wall time, its start-up included. ``socks5`` times connects through one
SOCKS5 hop (microsocks, if installed) against python-socks doing the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

_WORKER = [sys.executable, "-m", "trio_conduit.cli._benchworker"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=5, help="runs per implementation (default 5)")
    parser.add_argument("--bulk-mib", type=int, default=1024, help="MiB per bulk run (default 1024)")
    parser.add_argument(
        "--connections", type=int, default=2000, help="connections per rate run (default 2000)"
    )
    parser.add_argument(
        "--cli-mib", type=int, default=1024, help="MiB for the --cli pipe test (default 1024)"
    )
    parser.add_argument(
        "--proxy-connections",
        type=int,
        default=300,
        help="connects per implementation and run for socks5 (default 300)",
    )
    parser.add_argument(
        "--only",
        choices=["bulk", "rate", "cli", "socks5", "tls", "udt", "udt-link"],
        action="append",
        help="run only these (repeatable)",
    )
    parser.add_argument(
        "--tls-connections", type=int, default=500, help="full TLS handshakes per rate run (default 500)"
    )
    parser.add_argument("--cli", action="store_true", help="also pipe data through conduit vs ncat")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _cpus() -> tuple[int, int]:
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (-1, -1)


def one_cpu() -> int:
    """The CPU a one-process benchmark pins itself to (the client's of :func:`pinned_pair`), or -1."""
    return _cpus()[1]


def pinned_pair(
    server: Callable[[int], list[str]], client: Callable[[int, int], list[str]]
) -> dict[str, float]:
    """Run a benchmark's two sides as processes pinned to two CPUs; the client's JSON is the result.

    ``server(cpu)`` gives the server's argv: it prints its port and serves
    until its stdin closes. ``client(cpu, port)`` gives the client's argv: it
    prints one JSON object.
    """
    server_cpu, client_cpu = _cpus()
    proc = subprocess.Popen(server(server_cpu), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        out = subprocess.run(client(client_cpu, port), check=True, capture_output=True, text=True)
        result: dict[str, float] = json.loads(out.stdout)
        return result
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _one(impl: str, mode: str, amount: int) -> dict[str, float]:
    return pinned_pair(
        lambda cpu: [*_WORKER, "server", impl, mode, str(cpu)],
        lambda cpu, port: [*_WORKER, "client", impl, mode, str(cpu), str(port), str(amount)],
    )


def _pair(mode: str, amount: int, repeat: int, key: str) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"raw": [], "pool": []}
    for i in range(repeat):
        order = ("raw", "pool") if i % 2 == 0 else ("pool", "raw")
        for impl in order:
            runs[impl].append(_one(impl, mode, amount)[key])
    raw, pool = statistics.median(runs["raw"]), statistics.median(runs["pool"])
    return {"raw_trio": raw, "pool": pool, "ratio": pool / raw, "runs": runs, "unit": key}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
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


def _cli(mib: int, repeat: int) -> dict[str, Any]:
    """``conduit connect | conduit listen`` against ``ncat`` doing the same, alternating."""
    ncat = shutil.which("ncat")
    size = mib * 1024 * 1024
    runs: dict[str, list[float]] = {"conduit": [], "ncat": []}
    conduit = [sys.executable, "-m", "trio_conduit"]
    for _ in range(repeat):
        port = free_port()
        url = f"tcp://127.0.0.1:{port}"
        runs["conduit"].append(
            pipe_seconds([*conduit, "listen", "--keep-open", url], [*conduit, "connect", url], port, size)
        )
        if ncat:
            port = free_port()
            runs["ncat"].append(
                pipe_seconds(
                    [ncat, "-l", "--keep-open", "127.0.0.1", str(port)],
                    [ncat, "--send-only", "127.0.0.1", str(port)],
                    port,
                    size,
                )
            )
    out: dict[str, Any] = {"bytes": size, "runs_seconds": runs}
    out["conduit_mb_per_s"] = size / statistics.median(runs["conduit"]) / 1e6
    if runs["ncat"]:
        out["ncat_mb_per_s"] = size / statistics.median(runs["ncat"]) / 1e6
        out["ratio"] = out["conduit_mb_per_s"] / out["ncat_mb_per_s"]
    return out


def run(args: argparse.Namespace) -> int:
    only = set(args.only or ["bulk", "rate", "socks5", "tls", "udt"] + (["cli"] if args.cli else []))
    results: dict[str, Any] = {}
    if "bulk" in only:
        results["tcp_bulk_mb_per_s"] = _pair("bulk", args.bulk_mib * 1024 * 1024, args.repeat, "mb_per_s")
    if "rate" in only:
        results["tcp_connections_per_s"] = _pair("rate", args.connections, args.repeat, "per_s")
    if "cli" in only:
        results["cli_pipe"] = _cli(args.cli_mib, args.repeat)
    if "socks5" in only:  # connect latency through one SOCKS5 hop vs python-socks (proxy/_bench.py)
        from ..proxy._bench import run_socks5_bench

        results["socks5_connect_us"] = run_socks5_bench(args.proxy_connections, args.repeat)
    if "tls" in only:  # TLS bulk and handshakes vs raw trio.SSLStream, and with --cli vs ncat --ssl
        from ..tls._bench import run_tls_bench

        cli_mib = args.cli_mib if args.cli or "cli" in (args.only or []) else None
        results.update(run_tls_bench(args.bulk_mib, args.tls_connections, args.repeat, cli_mib=cli_mib))
    if "udt" in only or "udt-link" in only:  # UDT vs the libudt C++ pair; udt-link: a 50 ms / 1 % loss link
        from importlib import import_module  # the udt plugin's bench (the core imports no transport)

        udt = import_module("trio_conduit_plugins.udt.bench")
        link_seconds = 20.0 if "udt-link" in only else 0.0
        results.update(udt.run_udt_bench(repeat=args.repeat, mib=args.bulk_mib, link_seconds=link_seconds))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for name, r in results.items():
        if name == "socks5_connect_us":
            line = f"{name:24} conduit {r['conduit']:6.0f} us   direct {r['direct']:4.0f} us ({r['proxy']})"
            if "ratio" in r:
                line += f"   python-socks {r['python-socks']:6.0f} us   ratio {r['ratio']:.2f}"
                line += f" (fastest tenth: {r['ratio_p10']:.2f})"
            print(line)
        elif name.startswith("udt_"):
            from importlib import import_module

            print("\n".join(import_module("trio_conduit_plugins.udt.bench").format_results({name: r})))
        elif name in ("cli_pipe", "tls_cli_pipe"):
            line = f"{name:24} conduit {r['conduit_mb_per_s']:9.1f} MB/s"
            if "ncat_mb_per_s" in r:
                line += f"   ncat {r['ncat_mb_per_s']:9.1f} MB/s   ratio {r['ratio']:.2f}"
            if "ratio_bulk" in r:
                line += (
                    f"\n{'':24} once running (fixed cost {r['conduit_fixed_seconds']:.2f} s vs"
                    f" {r['ncat_fixed_seconds']:.2f} s taken out): conduit"
                    f" {r['conduit_bulk_mb_per_s']:.1f} MB/s   ncat {r['ncat_bulk_mb_per_s']:.1f} MB/s"
                    f"   ratio {r['ratio_bulk']:.2f}"
                )
            print(line)
        else:
            print(
                f"{name:24} pool {r['pool']:10.1f}   raw trio {r['raw_trio']:10.1f}   ratio {r['ratio']:.3f}"
            )
    return 0
