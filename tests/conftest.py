"""Shared fixtures and helpers for the test suite.

* :func:`fd_count` / :func:`open_fds` and the ``no_fd_leak`` fixture: count
  ``/proc/self/fd`` so tests can assert that nothing leaks.
* :func:`task_count`: the number of live trio tasks (for task-leak checks).
* :func:`free_port` and friends: ports that were free a moment ago (never 2024,
  which belongs to this machine's agent).
* ``netns``: a private network namespace per test module (root and ``ip`` needed),
  with :meth:`NetNS.python` to run a snippet inside it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

#: Never connect to this port on this machine (it belongs to the machine's agent).
FORBIDDEN_PORT = 2024


# ---------------------------------------------------------------------------
# file descriptors and tasks
# ---------------------------------------------------------------------------


def open_fds() -> dict[int, str]:
    """Every open file descriptor of this process and what it points at."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the fd listdir itself used, closed by now
            continue
    return out


def fd_count() -> int:
    """How many file descriptors this process has open."""
    return len(open_fds())


def assert_no_fd_leak(before: dict[int, str]) -> None:
    """Fail listing the descriptors opened since ``before`` was taken and still open."""
    after = open_fds()
    leaked = {fd: target for fd, target in after.items() if before.get(fd) != target}
    assert not leaked, f"file descriptors leaked: {leaked}"


@pytest.fixture
def no_fd_leak() -> Iterator[dict[int, str]]:
    """Assert that the test closes every descriptor it opened (checked after trio.run ends)."""
    before = open_fds()
    yield before
    assert_no_fd_leak(before)


def _walk_tasks(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk_tasks(child)


def live_tasks() -> list[trio.lowlevel.Task]:
    """Every task in this trio run (walking the tree from the root task)."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return list(_walk_tasks(root))


def task_count() -> int:
    """How many tasks this trio run has."""
    return len(live_tasks())


# ---------------------------------------------------------------------------
# ports and paths
# ---------------------------------------------------------------------------


def free_port(type: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that was free on ``host`` a moment ago (bind port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, type) as s:
            s.bind((host, 0))
            port: int = s.getsockname()[1]
        if port != FORBIDDEN_PORT:
            return port


def free_tcp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_STREAM, host)


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)


def closed_udp_port() -> int:
    """A UDP port nobody listens on (just closed): datagrams to it draw ICMP port unreachable."""
    return free_udp_port()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short private directory for unix socket files (paths must fit in 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="conduit-t-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def stale_unix_socket(path: Path, type: int = socket.SOCK_STREAM) -> None:
    """Leave a socket file at ``path`` as a killed server would: bound, closed, not unlinked."""
    s = socket.socket(socket.AF_UNIX, type)
    s.bind(str(path))
    if type == socket.SOCK_STREAM:
        s.listen()
    s.close()
    assert path.is_socket()


# ---------------------------------------------------------------------------
# network namespaces
# ---------------------------------------------------------------------------


def netns_skip_reason() -> str | None:
    """Why ``netns`` tests cannot run here, or ``None`` when they can."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "network namespaces need root (run the suite as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    return None


@dataclass
class NetNS:
    """A network namespace this test session created; everything in it stays in it."""

    name: str

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n NAME args...``; raises on failure."""
        return subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True, text=True)

    def run(self, *argv: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace (``ip netns exec``)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def python(self, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a Python snippet (``sys.argv[1:]`` = ``args``) inside the namespace with this interpreter."""
        return self.run(sys.executable, "-c", code, *args, timeout=timeout, check=False)

    def python_json(self, code: str, *args: str, timeout: float = 30) -> Any:
        """Run a snippet that prints one JSON document as its last line; return it."""
        proc = self.python(code, *args, timeout=timeout)
        lines = proc.stdout.strip().splitlines()
        report = f"snippet failed in {self.name} (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        assert proc.returncode == 0, report
        assert lines, report
        return json.loads(lines[-1])


def _make_netns() -> Iterator[NetNS]:
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    name = f"conduit-t-{os.getpid()}-{secrets.token_hex(3)}"
    proc = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {proc.stderr.strip()}")
    try:
        ns = NetNS(name)
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNS]:
    """A fresh network namespace (only ``lo``, up) for this test module, deleted afterwards."""
    yield from _make_netns()
