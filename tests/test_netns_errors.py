"""Typed connect errors, provoked inside a private network namespace.

This process cannot enter a namespace, so each case runs a small Python
snippet there (``ip netns exec NS python -c ...``) that calls ``pool.connect``
and prints what it raised as JSON. Every address used (127.0.0.1, 10.x) is the
namespace's own: nothing leaves the machine.

* timed out: an iptables rule drops SYNs (our deadline, then the kernel's own
  ``ETIMEDOUT`` with ``tcp_syn_retries=1``)
* host unreachable: an ``unreachable`` route; network unreachable: no route at all
* permission denied: a ``prohibit`` route; refused: nothing listening
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import NetNS, free_tcp_port

pytestmark = pytest.mark.netns

CONNECT_SNIPPET = textwrap.dedent(
    """
    import json, sys, time, trio, trio_conduit as conduit

    async def attempt(pool, url, timeout):
        start = time.monotonic()
        try:
            conn = await pool.connect(url, timeout=timeout)
        except Exception as exc:
            return {
                "type": type(exc).__name__,
                "errno": getattr(exc, "errno", None),
                "bases": [c.__name__ for c in type(exc).__mro__],
                "message": str(exc),
                "elapsed": time.monotonic() - start,
            }
        await conn.aclose()
        return {"type": None, "elapsed": time.monotonic() - start}

    async def main():
        cases = json.loads(sys.argv[1])
        async with conduit.open_pool() as pool:
            print(json.dumps([await attempt(pool, url, timeout) for url, timeout in cases]))

    trio.run(main)
    """
)


def connect_in(netns: NetNS, *cases: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Run ``pool.connect(url, timeout=...)`` for each case inside ``netns``; what each raised."""
    result = netns.python_json(CONNECT_SNIPPET, json.dumps(cases), timeout=60)
    assert isinstance(result, list)
    return result


@pytest.fixture
def dropped_port(netns: NetNS) -> Iterator[int]:
    """A port whose SYNs are dropped inside the namespace (iptables)."""
    if netns.run("iptables", "--version", check=False).returncode != 0:
        pytest.skip("iptables is not installed (apt-get install iptables)")
    port = free_tcp_port()
    rule = ["INPUT", "-p", "tcp", "--syn", "--dport", str(port), "-j", "DROP"]
    proc = netns.run("iptables", "-A", *rule, check=False)
    if proc.returncode != 0:
        pytest.skip(f"iptables cannot add a rule here: {proc.stderr.strip()}")
    try:
        yield port
    finally:
        netns.run("iptables", "-D", *rule, check=False)


def test_timeout_is_connect_timeout(netns: NetNS, dropped_port: int) -> None:
    (result,) = connect_in(netns, (f"tcp://127.0.0.1:{dropped_port}", 0.5))
    assert result["type"] == "ConnectTimeout", result
    assert "TimeoutError" in result["bases"]
    assert "ConnectError" in result["bases"]
    assert result["errno"] == errno.ETIMEDOUT
    assert 0.4 < result["elapsed"] < 5
    assert f"127.0.0.1:{dropped_port}" in result["message"]


def test_kernel_etimedout_is_connect_timeout(netns: NetNS, dropped_port: int) -> None:
    """No deadline of ours: the kernel gives up after its SYN retries (1 here: about 3 s)."""
    key = "net.ipv4.tcp_syn_retries"
    old = netns.run("sysctl", "-n", key).stdout.strip()
    netns.run("sysctl", "-w", f"{key}=1")
    try:
        (result,) = connect_in(netns, (f"tcp://127.0.0.1:{dropped_port}", None))
    finally:
        netns.run("sysctl", "-w", f"{key}={old}")
    assert result["type"] == "ConnectTimeout", result
    assert "TimeoutError" in result["bases"]
    assert result["errno"] == errno.ETIMEDOUT
    assert 2 < result["elapsed"] < 20


@pytest.fixture(scope="module")
def routes(netns: NetNS) -> dict[str, str]:
    """An ``unreachable`` and a ``prohibit`` route inside the namespace; a prefix with no route."""
    netns.ip("route", "add", "unreachable", "10.9.9.0/24")
    netns.ip("route", "add", "prohibit", "10.8.8.0/24")
    return {"unreachable": "10.9.9.1", "prohibit": "10.8.8.1", "none": "10.1.2.3"}


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_unreachable_and_prohibited(netns: NetNS, routes: dict[str, str], scheme: str) -> None:
    host_unreach, net_unreach, denied = connect_in(
        netns,
        (f"{scheme}://{routes['unreachable']}:80", 5),
        (f"{scheme}://{routes['none']}:80", 5),
        (f"{scheme}://{routes['prohibit']}:80", 5),
    )
    assert host_unreach["type"] == "HostUnreachable", host_unreach
    assert host_unreach["errno"] == errno.EHOSTUNREACH
    assert "OSError" in host_unreach["bases"]
    assert net_unreach["type"] == "NetworkUnreachable", net_unreach
    assert net_unreach["errno"] == errno.ENETUNREACH
    assert denied["type"] == "PermissionDenied", denied
    assert denied["errno"] == errno.EACCES
    assert "PermissionError" in denied["bases"]
    for result in (host_unreach, net_unreach, denied):
        assert "ConnectError" in result["bases"]
        assert result["elapsed"] < 4  # an ICMP-style answer, not a timeout


def test_refused(netns: NetNS) -> None:
    (result,) = connect_in(netns, (f"tcp://127.0.0.1:{free_tcp_port()}", 5))
    assert result["type"] == "ConnectionRefused", result
    assert result["errno"] == errno.ECONNREFUSED
    assert "ConnectionRefusedError" in result["bases"]


def test_the_snippet_can_connect(netns: NetNS) -> None:
    """The harness itself: a connect that works reports no error."""
    code = CONNECT_SNIPPET.replace(
        "async def main():",
        "async def main():\n    import socket\n    srv = socket.create_server(('127.0.0.1', 0))\n"
        "    sys.argv[1] = json.dumps([[f'tcp://127.0.0.1:{srv.getsockname()[1]}', 5]])",
    )
    (result,) = netns.python_json(code, "[]")
    assert result["type"] is None


def _cli_connect_available() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "trio_conduit", "connect", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode == 0 and "--timeout" in proc.stdout


@pytest.mark.parametrize("case", ["timeout", "refused"])
def test_cli_connect_error_line(netns: NetNS, dropped_port: int, case: str) -> None:
    if not _cli_connect_available():
        pytest.skip("`conduit connect` is not implemented yet")
    port = dropped_port if case == "timeout" else free_tcp_port()
    proc = netns.run(
        sys.executable,
        "-m",
        "trio_conduit",
        "connect",
        f"tcp://127.0.0.1:{port}",
        "--timeout",
        "0.5",
        check=False,
        timeout=30,
    )
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"127.0.0.1:{port}" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    if case == "timeout":
        assert "0.5" in lines[0] or "timed out" in lines[0].lower()
    else:
        assert "refused" in lines[0].lower()
