"""``conduit listen`` as a server: SIGTERM drains, ``--workers N`` share a port and are restarted.

Which worker took a connection is read from the kernel: the worker process
holding the accepted socket (``/proc/net/tcp`` and ``/proc/PID/fd``).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from .test_cli import DEADLINE, conduit

DRAINING = re.compile(r"draining 1 connection\(s\)")
WORKER = re.compile(r"^conduit: worker (\d+) started \(pid (\d+)\)$", re.MULTILINE)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("?")[0])


def _echo(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(1 << 16)
        assert chunk, "the server closed mid-transfer"
        got += chunk
    assert got == data


def test_sigterm_lets_a_transfer_finish_refuses_new_connects_and_exits_0(tmp_path: Path) -> None:
    args = ["-v", "listen", "-k", "--echo", "--drain-timeout", "60", "tcp://127.0.0.1:0"]
    with conduit(tmp_path, *args) as server:
        port = _port(server.bound_url())
        data = os.urandom(1 << 20)
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            _echo(client, data[: len(data) // 2])  # mid-transfer
            server.popen.send_signal(signal.SIGTERM)
            server.wait_stderr(DRAINING)  # logged once the listener is closed
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=DEADLINE).close()
            assert server.popen.poll() is None  # still draining: our transfer is live
            _echo(client, data[len(data) // 2 :])
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""
        assert server.wait() == 0, server.stderr


def test_sigint_during_a_drain_stops_at_once(tmp_path: Path) -> None:
    args = ["-v", "listen", "-k", "--echo", "--drain-timeout", "600", "tcp://127.0.0.1:0"]
    with conduit(tmp_path, *args) as server:
        port = _port(server.bound_url())
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            _echo(client, b"hello")
            server.popen.send_signal(signal.SIGTERM)
            server.wait_stderr(DRAINING)
            server.popen.send_signal(signal.SIGINT)
            assert server.wait() == 128 + signal.SIGINT
            assert client.recv(1) == b""  # its connection was closed, not drained


def test_drain_timeout_zero_exits_at_once(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "-k", "--echo", "--drain-timeout", "0", "tcp://127.0.0.1:0") as server:
        port = _port(server.bound_url())
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            _echo(client, b"hello")
            server.popen.send_signal(signal.SIGTERM)
            assert server.wait() == 0
            assert client.recv(1) == b""


def _owner(client: socket.socket, server_port: int, pids: set[int]) -> int | None:
    """The pid among ``pids`` holding the accepted end of ``client``'s connection."""
    local_port = client.getsockname()[1]
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == local_port:
            inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    return None


def _landing(port: int, pids: set[int], want: set[int], tries: int = 400) -> set[int]:
    """Connect (and echo) until connections have landed on every pid in ``want``; the pids seen."""
    seen: set[int] = set()
    for _ in range(tries):
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as client:
            _echo(client, b"ping")  # accepted and served
            owner = _owner(client, port, pids)
            if owner is not None:
                seen.add(owner)
        if want <= seen:
            break
    return seen


def _workers(stderr: str) -> dict[int, int]:
    """worker number → its latest pid, from ``-v``'s ``worker N started (pid P)`` lines."""
    return {int(n): int(pid) for n, pid in WORKER.findall(stderr)}


def test_workers_share_the_port_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    with conduit(tmp_path, "-v", "listen", "--workers", "2", "-k", "--echo", "tcp://127.0.0.1:0") as server:
        port = _port(server.bound_url())
        end = time.monotonic() + DEADLINE
        while len(_workers(server.stderr)) < 2 or server.stderr.count("reuse_port=1\n") < 2:  # listening
            assert time.monotonic() < end, server.stderr
            time.sleep(0.02)
        pids = set(_workers(server.stderr).values())
        assert server.popen.pid not in pids
        assert _landing(port, pids, pids) == pids  # both workers serve the one port

        victim = _workers(server.stderr)[1]
        os.kill(victim, signal.SIGKILL)
        server.wait_stderr(re.compile(rf"worker 1 \(pid {victim}\) ended with status -9: restarting it"))
        end = time.monotonic() + 10  # a replacement within seconds
        while _workers(server.stderr)[1] == victim:
            assert time.monotonic() < end, server.stderr
            time.sleep(0.02)
        replacement = _workers(server.stderr)[1]
        survivors = set(_workers(server.stderr).values())
        assert replacement in _landing(port, survivors, {replacement})

        server.popen.send_signal(signal.SIGTERM)  # passed on: each worker drains and exits 0
        assert server.wait() == 0, server.stderr
        for pid in survivors:
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_workers_need_a_server_and_a_port(tmp_path: Path) -> None:
    from .test_cli import run_conduit

    result = run_conduit("listen", "--workers", "2", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert b"--workers needs --keep-open" in result.stderr
    result = run_conduit("listen", "--workers", "2", "-k", f"unix://{tmp_path}/s")
    assert result.returncode == 2, result.stderr
    assert b"needs a host:port URL" in result.stderr
