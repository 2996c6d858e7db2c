"""Scans of IPv6 targets and of host names, inside a private network namespace.

The namespace's loopback has ``::1`` and ``127.0.0.1``. On ``::1``: TCP listeners
(open), ip6tables DROP (filtered, no-response), REJECT with ICMPv6
admin-prohibited / address-unreachable / no-route (filtered, with that reason),
REJECT with tcp-reset (closed); UDP: a silent listener (open|filtered), an echo
listener (open), the rest closed (ICMPv6 port unreachable, rate limit off).
Two names resolve there only (``ip netns exec`` mounts ``/etc/netns/NAME/hosts``
over ``/etc/hosts``): ``v4.conduit.test`` → 127.0.0.1, ``v6.conduit.test`` → ::1.
Nothing here touches the machine's own ports.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import NetNS
from .test_scan_netns import firewall_rules, nmap_states, scan_in, serving_in, table_rows

pytestmark = pytest.mark.netns

TCP_OPEN = (22, 80, 8080, 40000)
TCP_DROP = (81, 4444)
TCP_REJECT = {82: "icmp6-adm-prohibited", 83: "icmp6-addr-unreachable", 84: "icmp6-no-route"}
TCP_RESET = 85
UDP_SILENT = (53, 123)
UDP_ECHO = 5353
NAMES = {"v4.conduit.test": "127.0.0.1", "v6.conduit.test": "::1"}

#: What each interesting TCP port of ::1 must be; every other port: closed, conn-refused.
EXPECTED_TCP6 = {
    **dict.fromkeys(TCP_OPEN, ("open", "syn-ack")),
    **dict.fromkeys(TCP_DROP, ("filtered", "no-response")),
    82: ("filtered", "admin-prohibited"),
    83: ("filtered", "host-unreach"),
    84: ("filtered", "net-unreach"),
}

LISTENERS = textwrap.dedent(
    """
    import socket, sys, threading
    held = []
    for host, family in (("::1", socket.AF_INET6), ("127.0.0.1", socket.AF_INET)):
        for port in sys.argv[1].split(","):
            s = socket.socket(family); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port))); s.listen(128); held.append(s)
    for port in sys.argv[2].split(","):
        u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u.bind(("::1", int(port))); held.append(u)
    echo = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); echo.bind(("::1", int(sys.argv[3])))
    def serve():
        while True:
            data, peer = echo.recvfrom(2048)
            echo.sendto(data or b"pong", peer)
    threading.Thread(target=serve, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    """
)


@pytest.fixture(scope="module")
def known6(netns: NetNS) -> Iterator[NetNS]:
    """The namespace with its IPv6 rules, listeners and host names in place."""
    if shutil.which("ip6tables") is None:
        pytest.skip("ip6tables is not installed")
    if "::1" not in netns.ip("-6", "addr", "show", "dev", "lo").stdout:
        pytest.skip("no IPv6 on the namespace's loopback")
    for rule in firewall_rules(TCP_DROP, TCP_REJECT, TCP_RESET):
        netns.run("ip6tables", *rule)
    # ICMPv6 errors (port unreachable, the REJECTs) are rate limited per destination
    netns.run("sysctl", "-q", "-w", "net.ipv6.icmp.ratelimit=0")
    etc = Path("/etc/netns") / netns.name
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text("".join(f"{ip} {name}\n" for name, ip in NAMES.items()))
        with serving_in(
            netns, LISTENERS, ",".join(map(str, TCP_OPEN)), ",".join(map(str, UDP_SILENT)), str(UDP_ECHO)
        ):
            yield netns
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def cli(ns: NetNS, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return ns.run(sys.executable, "-m", "trio_conduit", "scan", *args, timeout=timeout, check=False)


def test_tcp_ipv6_all_ports_exact(known6: NetNS) -> None:
    report = scan_in(known6, "tcp://[::1]", "-")
    assert report["count"] == report["ports"] == 65535  # one verdict per port, each port once
    assert report["interesting"] == EXPECTED_TCP6


def test_udp_ipv6_closed_versus_open_filtered(known6: NetNS) -> None:
    report = scan_in(known6, "udp://[::1]", "1-200,5353")
    assert report["count"] == report["ports"] == 201
    assert report["interesting"] == {
        **dict.fromkeys(UDP_SILENT, ("open|filtered", "no-response")),
        UDP_ECHO: ("open", "udp-response"),
    }


def test_host_names_are_resolved_once_and_reported_by_address(known6: NetNS) -> None:
    proc = cli(known6, "tcp://v4.conduit.test", "tcp://v6.conduit.test", "-p", "20-90", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 2 * 71
    by_host: dict[str, dict[int, tuple[str, str]]] = {}
    for line in lines:
        by_host.setdefault(line["host"], {})[line["port"]] = (line["state"], line["reason"])
    assert sorted(by_host) == ["127.0.0.1", "::1"]
    assert all(len(ports) == 71 for ports in by_host.values())
    interesting6 = {p: v for p, v in by_host["::1"].items() if v != ("closed", "conn-refused")}
    assert interesting6 == {p: v for p, v in EXPECTED_TCP6.items() if 20 <= p <= 90}
    # 127.0.0.1 has the same listeners and no rules here (ip6tables does not see IPv4)
    interesting4 = {p: v for p, v in by_host["127.0.0.1"].items() if v != ("closed", "conn-refused")}
    assert interesting4 == {22: ("open", "syn-ack"), 80: ("open", "syn-ack")}


def test_host_name_table_names_the_address(known6: NetNS) -> None:
    proc = cli(known6, "tcp://v6.conduit.test", "-p", "20-90")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "conduit scan report for ::1" in lines
    assert "Not shown: 65 closed tcp ports (conn-refused)" in lines
    assert table_rows(lines) == {f"{p}/tcp": v for p, v in EXPECTED_TCP6.items() if 20 <= p <= 90}


def test_unresolvable_host_name_is_a_clear_error(known6: NetNS) -> None:
    proc = cli(known6, "tcp://nowhere.conduit.test", "-p", "80", timeout=60)
    assert proc.returncode != 0
    assert "nowhere.conduit.test" in proc.stderr
    assert "cannot resolve" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.interop
def test_all_tcp_ipv6_ports_agree_with_nmap_and_ndiff(known6: NetNS, tmp_path: Path) -> None:
    if shutil.which("nmap") is None or shutil.which("ndiff") is None:
        pytest.skip("nmap and ndiff are needed (Debian packages nmap, ndiff)")
    theirs, ours = tmp_path / "nmap.xml", tmp_path / "conduit.xml"
    known6.run("nmap", "-6", "-sT", "-n", "-Pn", "-p-", "--reason", "-oX", str(theirs), "::1", timeout=300)
    proc = cli(known6, "tcp://[::1]", "-p-", "--json", "-oX", str(ours), timeout=300)
    assert proc.returncode == 0, proc.stderr
    our_map = {d["port"]: (d["state"], d["reason"]) for d in map(json.loads, proc.stdout.splitlines())}
    assert len(our_map) == 65535
    their_listed, their_extra = nmap_states(theirs.read_text())
    our_listed = {p: v for p, v in our_map.items() if v != ("closed", "conn-refused")}
    assert their_extra == {"closed": sum(v == ("closed", "conn-refused") for v in our_map.values())}
    # The same states port for port. For the ICMPv6-rejected ports nmap -6 -sT most often gives
    # the reason no-response (not always: it varies run to run); we give the one the kernel
    # reports for them (the ICMPv6 error's), every time.
    assert {p: v[0] for p, v in their_listed.items()} == {p: v[0] for p, v in our_listed.items()}
    assert {p: v for p, v in their_listed.items() if p not in TCP_REJECT} == {
        p: v for p, v in our_listed.items() if p not in TCP_REJECT
    }
    assert our_listed == EXPECTED_TCP6
    diff = subprocess.run(["ndiff", str(theirs), str(ours)], capture_output=True, text=True, check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
