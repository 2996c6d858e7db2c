"""``sctp://`` scans: an SCTP INIT answered by INIT-ACK is open, by ABORT closed (kernel lane).

The scan runs inside the lane's own kernel, against its own loopback: a few
SCTP listeners on known ports, every other port of a range around them
closed. The result must be exact, from the API and from ``conduit scan``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator

import trio_conduit as conduit
from trio_conduit import PortState

from ._lane import bounded, needs_sctp

pytestmark = needs_sctp

SPAN = 40  # ports scanned on each side of the listeners


@contextlib.contextmanager
def sctp_listeners(count: int) -> Iterator[list[int]]:
    """``count`` listening one-to-one SCTP sockets on 127.0.0.1; yields their ports."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP))
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            ports.append(sock.getsockname()[1])
        yield sorted(ports)


def scanned_range(ports: list[int]) -> range:
    return range(max(1, ports[0] - SPAN), min(65535, ports[-1] + SPAN) + 1)


@bounded(60)
async def test_sctp_scan_open_and_closed_exact() -> None:
    with sctp_listeners(3) as ports:
        wanted = scanned_range(ports)
        found: dict[int, PortState] = {}
        async with contextlib.aclosing(conduit.scan("sctp://127.0.0.1", wanted)) as results:
            async for result in results:
                assert result.protocol == "sctp"
                assert result.port not in found, "each port is reported once"
                found[result.port] = result.state
    assert sorted(found) == list(wanted)
    assert {port for port, state in found.items() if state is PortState.OPEN} == set(ports)
    assert all(state is PortState.CLOSED for port, state in found.items() if port not in ports)


def test_conduit_scan_sctp_json_lines() -> None:
    with sctp_listeners(2) as ports:
        wanted = scanned_range(ports)
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "trio_conduit",
                "scan",
                "--json",
                "sctp://127.0.0.1",
                "-p",
                f"{wanted.start}-{wanted.stop - 1}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    states = {line["port"]: line["state"] for line in lines}
    assert sorted(states) == list(wanted)
    assert {port for port, state in states.items() if state == "open"} == set(ports)
    assert {state for port, state in states.items() if port not in ports} == {"closed"}
    assert {line["protocol"] for line in lines} == {"sctp"}
