"""A full TCP port scan against ``nmap -sT``, plus the connect-path figures: ``scan``.

Needs root, ``ip`` (iproute2), ``iptables`` and ``nmap``. A private network
namespace is made for the run (only ``lo``, up), with a few listeners (open
ports) and a few iptables ``DROP`` rules (filtered ports, which cost a scan
its timeouts); it is deleted afterwards. Both scanners run inside it, one
process each, ``repeat`` times, alternating: ``conduit scan tcp://127.0.0.1 -p-``
and ``nmap -sT -n -Pn -p- 127.0.0.1`` (nmap's default timing). Reported: each
one's median wall time in seconds and ``ratio`` = conduit / nmap (target at
most 1.0), and the two verdicts' agreement (the ports each found not closed).
Then the ``socks5`` benchmark's connect figures: ``pool.connect`` against a
bare trio socket connect, and one SOCKS5 hop against python-socks.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

import trio_conduit

from .socks5 import run_socks5_bench

__all__ = ["SCAN", "run_scan_bench"]

OPEN_PORTS = (22, 80, 443, 8080, 40000)
DROPPED_PORTS = (81, 135, 4444, 31337)

_LISTEN = textwrap.dedent(
    """
    import socket, sys
    held = []
    for port in sys.argv[1:]:
        s = socket.socket(); s.bind(("127.0.0.1", int(port))); s.listen(16); held.append(s)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a network namespace of its own)"
    for tool in ("ip", "iptables", "nmap"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return None


def _timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, proc.stdout


def run_scan_bench(repeat: int = 3) -> dict[str, Any]:
    """Median wall time of a full TCP scan in a private namespace: conduit and nmap -sT."""
    reason = _why_not()
    if reason is not None:
        return {"skipped": reason}
    ns = f"conduit-bench-{os.getpid()}-{secrets.token_hex(2)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    inside = ["ip", "netns", "exec", ns]
    listeners = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for port in DROPPED_PORTS:
            rule = ["iptables", "-A", "INPUT", "-p", "tcp", "--syn", "--dport", str(port), "-j", "DROP"]
            subprocess.run([*inside, *rule], check=True)
        listeners = subprocess.Popen(
            [*inside, sys.executable, "-c", _LISTEN, *map(str, OPEN_PORTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listeners.stdout is not None
        listeners.stdout.readline()
        ours = [*inside, sys.executable, "-m", "trio_conduit", "scan", "tcp://127.0.0.1", "-p-", "--json"]
        nmap = [*inside, "nmap", "-sT", "-n", "-Pn", "-p-", "-oG", "-", "127.0.0.1"]
        times: dict[str, list[float]] = {"conduit": [], "nmap": []}
        found: dict[str, list[int]] = {}
        for i in range(repeat):
            for name in ("conduit", "nmap") if i % 2 == 0 else ("nmap", "conduit"):
                elapsed, out = _timed(ours if name == "conduit" else nmap)
                times[name].append(elapsed)
                if name == "conduit":
                    lines = [json.loads(line) for line in out.splitlines()]
                    found[name] = sorted(d["port"] for d in lines if d["state"] != "closed")
                else:
                    ports_field = next(
                        f for line in out.splitlines() for f in line.split("\t") if "Ports:" in f
                    )
                    found[name] = sorted(int(p.split("/")[0]) for p in ports_field[7:].split(", "))
    finally:
        if listeners is not None:
            assert listeners.stdin is not None
            assert listeners.stdout is not None
            listeners.stdin.close()
            listeners.wait(timeout=10)
            listeners.stdout.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    result: dict[str, Any] = {"unit": "seconds per full TCP scan (median)", "runs": times}
    result["conduit"] = statistics.median(times["conduit"])
    result["nmap"] = statistics.median(times["nmap"])
    result["ratio"] = result["conduit"] / result["nmap"]
    result["agree"] = found.get("conduit") == found.get("nmap")
    result["interesting_ports"] = found.get("conduit")
    return result


def _run(options: argparse.Namespace) -> dict[str, Any]:
    return {
        "scan_all_tcp_ports_s": run_scan_bench(options.repeat),
        "socks5_connect_us": run_socks5_bench(options.proxy_connections, options.repeat),
    }


def _format(results: dict[str, Any]) -> list[str]:
    r = results["scan_all_tcp_ports_s"]
    if "skipped" in r:
        lines = [f"{'scan_all_tcp_ports_s':24} skipped: {r['skipped']}"]
    else:
        lines = [
            f"{'scan_all_tcp_ports_s':24} conduit {r['conduit']:5.2f} s   nmap -sT {r['nmap']:5.2f} s"
            f"   ratio {r['ratio']:.2f}   {'same verdicts' if r['agree'] else 'VERDICTS DIFFER'}"
        ]
    s = results["socks5_connect_us"]
    lines.append(
        f"{'connect_us':24} pool.connect {s['direct']:4.0f} us   bare trio {s['raw_trio_direct']:4.0f} us"
        f"   ratio {s['direct'] / s['raw_trio_direct']:.2f}"
    )
    if "ratio" in s:
        lines.append(
            f"{'socks5_connect_us':24} conduit {s['conduit']:5.0f} us"
            f"   python-socks {s['python-socks']:5.0f} us   python-socks / conduit {1 / s['ratio']:.2f}"
        )
    return lines


SCAN = trio_conduit.Benchmark(
    "scan",
    "full TCP scan in a private namespace vs nmap -sT, plus the connect-path figures (root; nmap)",
    _run,
    _format,
    default=False,
)
