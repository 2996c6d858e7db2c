"""When the SCTP/vsock tests run: by the real capability check, aware of the kernel lane.

Our development and CI kernels have neither SCTP nor vsock loopback, so these
tests run in a Debian kernel under QEMU (``tools/kernel/run.py``, the nox
session ``kernel``) whose init sets ``CONDUIT_KERNEL_LANE=1``.

* capability present: the test runs (anywhere);
* absent outside the lane: skipped, with a reason that names the lane;
* absent inside the lane: the test runs and fails (``test_lane.py`` says why
  first) — a broken lane must not pass as skips.

The tests of the unavailable paths run where the capability is absent (the
host) and are skipped where it is present.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from trio_conduit_plugins.sctp import SCTPTransport
from trio_conduit_plugins.vsock import loopback_availability

from trio_conduit import Availability

AsyncTest = Callable[..., Awaitable[None]]

IN_LANE = os.environ.get("CONDUIT_KERNEL_LANE") == "1"
LANE_COMMAND = "python3 -m nox -s kernel"

SCTP = SCTPTransport().availability()
VSOCK_LOOPBACK = loopback_availability()
SOCAT = Availability(True) if shutil.which("socat") else Availability(False, "socat is not installed")


def _sctp_one_to_many() -> Availability:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, socket.IPPROTO_SCTP).close()
    except OSError as exc:
        return Availability(False, f"SOCK_SEQPACKET: {exc.strerror}", exc.errno)
    return Availability(True)


SCTP_ONE_TO_MANY = _sctp_one_to_many()


def _needs(what: str, availability: Availability) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (availability.available or IN_LANE),
        reason=f"needs {what} ({availability.reason}); it runs in the kernel lane: {LANE_COMMAND}",
    )


needs_sctp = _needs("SCTP", SCTP)
needs_sctp_one_to_many = _needs("SCTP one-to-many sockets", SCTP_ONE_TO_MANY)
needs_vsock_loopback = _needs("vsock loopback (CID 1)", VSOCK_LOOPBACK)
needs_socat = _needs("socat", SOCAT)

#: Where the capability is present, its unavailable path cannot be seen.
sctp_absent = pytest.mark.skipif(SCTP.available, reason="this kernel has SCTP: nothing unavailable to see")
vsock_loopback_absent = pytest.mark.skipif(
    VSOCK_LOOPBACK.available, reason="this kernel has vsock loopback: nothing unavailable to see"
)


def bounded(seconds: float) -> Callable[[AsyncTest], AsyncTest]:
    """Fail a trio test after ``seconds`` from inside trio (pytest-timeout's signal would
    break the trio run and every test after it)."""

    def decorate(test: AsyncTest) -> AsyncTest:
        @functools.wraps(test)
        async def run(*args: Any, **kwargs: Any) -> None:
            with trio.fail_after(seconds):
                await test(*args, **kwargs)

        marked: AsyncTest = pytest.mark.timeout(seconds + 60)(run)
        return marked

    return decorate


def conduit_command(*args: str) -> list[str]:
    """``conduit ARGS`` with this interpreter (no console-script shim, no pyenv)."""
    return [sys.executable, "-m", "trio_conduit", *args]


async def read_line_from(stream: trio.abc.ReceiveStream, marker: bytes, seen: bytearray) -> bytes:
    """Read ``stream`` into ``seen`` until a whole line containing ``marker`` arrived; return it."""
    while True:
        for line in bytes(seen).splitlines(keepends=True):
            if marker in line and line.endswith(b"\n"):
                return line
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"stream ended before a line with {marker!r}: {bytes(seen)!r}")
        seen += chunk


async def drain(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
