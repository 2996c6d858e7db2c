"""Scans inside a private network namespace whose every port's state is known.

The namespace holds: TCP listeners (open), iptables DROP rules (filtered,
no-response), REJECT rules with ICMP host-unreachable / admin-prohibited /
net-unreachable (filtered, with that reason), a REJECT with tcp-reset (closed),
and nothing elsewhere (closed). UDP: a silent listener (open|filtered), an echo
listener (open), the rest closed (ICMP port unreachable, rate limit off).

Every scan runs in the namespace (``ip netns exec``): nothing here touches the
machine's own ports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .conftest import NetNS

pytestmark = pytest.mark.netns

TCP_OPEN = (22, 80, 8080, 40000)
TCP_DROP = (81, 4444)
TCP_REJECT = {82: "icmp-host-unreachable", 83: "icmp-admin-prohibited", 84: "icmp-net-unreachable"}
TCP_RESET = 85
UDP_SILENT = (53, 123)
UDP_ECHO = 5353

#: What each interesting TCP port must be; every other port: closed, conn-refused.
EXPECTED_TCP = {
    **dict.fromkeys(TCP_OPEN, ("open", "syn-ack")),
    **dict.fromkeys(TCP_DROP, ("filtered", "no-response")),
    82: ("filtered", "host-unreach"),
    83: ("filtered", "host-unreach"),  # the kernel reports admin-prohibited ICMP as EHOSTUNREACH
    84: ("filtered", "net-unreach"),
}

LISTENERS = textwrap.dedent(
    """
    import socket, sys
    held = []
    for port in sys.argv[1].split(","):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", int(port))); s.listen(128); held.append(s)
    for port in sys.argv[2].split(","):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", int(port))); held.append(u)
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind(("127.0.0.1", int(sys.argv[3])))
    print("ready", flush=True)
    import threading
    def serve():
        while True:
            data, peer = echo.recvfrom(2048)
            echo.sendto(data or b"pong", peer)
    threading.Thread(target=serve, daemon=True).start()
    sys.stdin.read()
    """
)

SCAN_SNIPPET = textwrap.dedent(
    """
    import json, os, resource, sys, trio
    from contextlib import aclosing
    import trio_conduit
    from trio_conduit import ScanStats

    url, ports, nofile, max_parallel = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    limit = 64 if nofile else 0
    held = []
    if limit:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    def starve():
        # leave `nofile` free descriptors once trio runs: the scan's epoll set and a socket or two
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        for _ in range(nofile):
            os.close(held.pop())

    async def main():
        if nofile:
            starve()
        stats = ScanStats()
        found, count = {}, 0
        async with aclosing(
            trio_conduit.scan(url, ports, stats=stats, max_parallel=max_parallel or None)
        ) as results:
            async for r in results:
                count += 1
                assert r.port not in found, r  # one verdict per port
                key = (str(r.state), str(r.reason))
                boring = key in (("closed", "conn-refused"), ("closed", "port-unreach"))
                found[r.port] = None if boring else key
        interesting = {port: key for port, key in found.items() if key is not None}
        print(json.dumps({"count": count, "ports": len(found), "interesting": interesting,
                          "local_failures": stats.local_failures, "max_in_flight": stats.max_in_flight}))

    trio.run(main)
    """
)


@pytest.fixture(scope="module")
def known(netns: NetNS) -> Iterator[NetNS]:
    """The namespace with its rules and listeners in place."""
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed")
    for rule in firewall_rules(TCP_DROP, TCP_REJECT, TCP_RESET):
        netns.run("iptables", *rule)
    netns.run("sysctl", "-q", "-w", "net.ipv4.icmp_ratelimit=0")
    with serving_in(
        netns, LISTENERS, ",".join(map(str, TCP_OPEN)), ",".join(map(str, UDP_SILENT)), str(UDP_ECHO)
    ):
        yield netns


def firewall_rules(drop: Iterable[int], reject: dict[int, str], reset: int) -> list[list[str]]:
    """ip(6)tables rules: DROP the SYNs to ``drop``, REJECT ``reject``'s ports with their ICMP
    error, and ``reset``'s with a TCP reset."""
    rules = [["-A", "INPUT", "-p", "tcp", "--syn", "--dport", str(p), "-j", "DROP"] for p in drop]
    rules += [
        ["-A", "INPUT", "-p", "tcp", "--dport", str(p), "-j", "REJECT", "--reject-with", how]
        for p, how in reject.items()
    ]
    rules.append(
        ["-A", "INPUT", "-p", "tcp", "--dport", str(reset), "-j", "REJECT", "--reject-with", "tcp-reset"]
    )
    return rules


@contextmanager
def serving_in(ns: NetNS, code: str, *args: str) -> Iterator[None]:
    """Run the listeners snippet ``code`` in ``ns`` (it prints ``ready``, then serves until its
    stdin closes) for the length of the block."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        assert proc.stdout is not None
        proc.stdout.close()


def scan_in(ns: NetNS, url: str, ports: str, nofile: int = 0, max_parallel: int = 0) -> dict[str, object]:
    report = ns.python_json(SCAN_SNIPPET, url, ports, str(nofile), str(max_parallel), timeout=120)
    report["interesting"] = {int(p): tuple(v) for p, v in report["interesting"].items()}
    return report


def test_tcp_known_ports(known: NetNS) -> None:
    report = scan_in(known, "tcp://127.0.0.1", "1-100,4444,8080,40000")
    assert report["count"] == report["ports"] == 103  # one verdict per port
    assert report["interesting"] == EXPECTED_TCP


def test_tcp_all_ports_exact(known: NetNS) -> None:
    report = scan_in(known, "tcp://127.0.0.1", "-")
    assert report["count"] == report["ports"] == 65535
    assert report["interesting"] == EXPECTED_TCP


def test_udp_closed_versus_open_filtered(known: NetNS) -> None:
    report = scan_in(known, "udp://127.0.0.1", "1-200,5353")
    assert report["count"] == report["ports"] == 201
    assert report["interesting"] == {
        53: ("open|filtered", "no-response"),
        123: ("open|filtered", "no-response"),
        UDP_ECHO: ("open", "udp-response"),
    }


def test_low_file_limit_misreports_nothing(known: NetNS) -> None:
    """RLIMIT_NOFILE lowered, and all but 3 descriptors taken once the scan starts, while the
    scan is told it may hold 400 sockets: EMFILE is hit for real (a DROP-filtered port's
    socket waits for its timeout), backed off and retried, and no port changes its verdict."""
    report = scan_in(known, "tcp://127.0.0.1", "1-3000,4444,8080,40000", nofile=3, max_parallel=400)
    assert report["local_failures"] > 0  # the limit was really hit
    assert report["count"] == report["ports"] == 3003
    assert report["interesting"] == EXPECTED_TCP


# ---------------------------------------------------------------------------
# against nmap itself
# ---------------------------------------------------------------------------


def nmap_states(xml_text: str) -> tuple[dict[int, tuple[str, str]], dict[str, int]]:
    """(listed port -> (state, reason), extraports state -> count) from nmap's XML."""
    root = ET.fromstring(xml_text)
    ports = {
        int(p.get("portid", "0")): (p.find("state").get("state", ""), p.find("state").get("reason", ""))  # type: ignore[union-attr]
        for p in root.iter("port")
    }
    extra = {e.get("state", ""): int(e.get("count", "0")) for e in root.iter("extraports")}
    return ports, extra


@pytest.mark.interop
def test_all_tcp_ports_agree_with_nmap_and_ndiff(known: NetNS, tmp_path: Path) -> None:
    if shutil.which("nmap") is None or shutil.which("ndiff") is None:
        pytest.skip("nmap and ndiff are needed (Debian packages nmap, ndiff)")
    theirs, ours = tmp_path / "nmap.xml", tmp_path / "conduit.xml"
    known.run("nmap", "-sT", "-n", "-Pn", "-p-", "--reason", "-oX", str(theirs), "127.0.0.1", timeout=300)
    proc = known.run(
        sys.executable,
        "-m",
        "trio_conduit",
        "scan",
        "tcp://127.0.0.1",
        "-p-",
        "--json",
        "-oX",
        str(ours),
        timeout=300,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 65535
    assert len({line["port"] for line in lines}) == 65535
    our_map = {line["port"]: (line["state"], line["reason"]) for line in lines}
    their_listed, their_extra = nmap_states(theirs.read_text())
    # nmap lists the interesting ports and counts the rest (all closed here): port for port
    assert their_listed == {p: v for p, v in our_map.items() if v != ("closed", "conn-refused")}
    assert their_extra == {"closed": sum(v == ("closed", "conn-refused") for v in our_map.values())}
    assert {p: v for p, v in our_map.items() if v[0] != "closed"} == EXPECTED_TCP
    diff = subprocess.run(["ndiff", str(theirs), str(ours)], capture_output=True, text=True, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr  # 0: no difference in hosts or ports
    assert os.path.getsize(ours) > 0


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


def table_rows(lines: list[str]) -> dict[str, tuple[str, str]]:
    """The human table's port rows: ``"22/tcp"`` -> (state, reason)."""
    return {line.split()[0]: (line.split()[1], line.split()[-1]) for line in lines if "/tcp " in line}


def test_cli_table_and_grepable(known: NetNS, tmp_path: Path) -> None:
    grep = tmp_path / "scan.gnmap"
    proc = known.run(
        sys.executable, "-m", "trio_conduit", "scan", "tcp://127.0.0.1", "-p", "20-90", "-oG", str(grep)
    )
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert "Not shown: 65 closed tcp ports (conn-refused)" in lines
    assert table_rows(lines) == {
        "22/tcp": ("open", "syn-ack"),
        "80/tcp": ("open", "syn-ack"),
        "81/tcp": ("filtered", "no-response"),
        "82/tcp": ("filtered", "host-unreach"),
        "83/tcp": ("filtered", "host-unreach"),
        "84/tcp": ("filtered", "net-unreach"),
    }
    (ports_line,) = [line for line in grep.read_text().splitlines() if "\tPorts: " in line]
    assert "22/open/tcp//" in ports_line
    assert "81/filtered/tcp//" in ports_line
    assert ports_line.endswith("Ignored State: closed (65)")


def test_cli_json_lines_udp(known: NetNS) -> None:
    proc = known.run(
        sys.executable, "-m", "trio_conduit", "scan", "udp://127.0.0.1", "-p", "50-55,5353", "--json"
    )
    got = {d["port"]: (d["state"], d["reason"]) for d in map(json.loads, proc.stdout.splitlines())}
    assert got == {
        50: ("closed", "port-unreach"),
        51: ("closed", "port-unreach"),
        52: ("closed", "port-unreach"),
        53: ("open|filtered", "no-response"),
        54: ("closed", "port-unreach"),
        55: ("closed", "port-unreach"),
        5353: ("open", "udp-response"),
    }
