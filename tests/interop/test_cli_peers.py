"""``conduit connect`` / ``conduit listen`` against real peers: ncat and socat.

For each of tcp, udp, unix stream and unix datagram: the real peer as the
client of ``conduit listen`` and as the server for ``conduit connect``, data
going both ways where the peer allows it, content checked. Every process is
killed and reaped in ``finally``; socket files live in a private directory.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

from ..conftest import free_tcp_port, free_udp_port
from ..test_cli import DEADLINE, conduit, random_lines, sha, spawn, together

pytestmark = pytest.mark.interop

NCAT = shutil.which("ncat")
SOCAT = shutil.which("socat")


@pytest.fixture
def ncat() -> str:
    if NCAT is None:
        pytest.skip("ncat not installed: run the nox tests session, which installs it")
    return NCAT


@pytest.fixture
def socat() -> str:
    if SOCAT is None:
        pytest.skip("socat not installed: run the nox tests session, which installs it")
    return SOCAT


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def wait_bound(proto: str, port: int, proc: subprocess.Popen[bytes], timeout: float = DEADLINE) -> None:
    """Wait until something listens on 127.0.0.1:``port`` (tcp) or has it bound (udp).

    Read from ``/proc/net``: a probing connect would use up a one-shot listener's accept.
    """
    want = f"0100007F:{port:04X}"
    end = time.monotonic() + timeout
    while True:
        with open(f"/proc/net/{proto}") as table:
            for row in table.read().splitlines()[1:]:
                fields = row.split()
                if fields[1] == want and (proto == "udp" or fields[3] == "0A"):
                    return
        assert proc.poll() is None, f"peer exited {proc.returncode} before binding {proto} port {port}"
        assert time.monotonic() < end, f"nothing bound {proto} port {port} within {timeout} s"
        time.sleep(0.02)


def wait_path(path: Path, proc: subprocess.Popen[bytes], timeout: float = DEADLINE) -> None:
    """Wait until the peer has made its socket file."""
    end = time.monotonic() + timeout
    while not path.is_socket():
        assert proc.poll() is None, f"peer exited {proc.returncode} before making {path}"
        assert time.monotonic() < end, f"no socket at {path} within {timeout} s"
        time.sleep(0.02)


def read_exactly(pipe: IO[bytes] | None, n: int, timeout: float = DEADLINE) -> bytes:
    """Read ``n`` bytes from a process's stdout pipe, failing (not hanging) if they do not come."""
    assert pipe is not None
    fd, out = pipe.fileno(), b""
    end = time.monotonic() + timeout
    while len(out) < n:
        ready, _, _ = select.select([fd], [], [], max(0.0, end - time.monotonic()))
        if not ready:
            pytest.fail(f"only {len(out)} of {n} bytes within {timeout} s: {out[-200:]!r}")
        chunk = os.read(fd, n - len(out))
        if not chunk:
            pytest.fail(f"end of output after {len(out)} of {n} bytes: {out[-200:]!r}")
        out += chunk
    return out


def write(pipe: IO[bytes] | None, data: bytes, *, close: bool = False) -> None:
    assert pipe is not None
    pipe.write(data)
    pipe.flush()
    if close:
        pipe.close()


def payload_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------
# ncat
# ---------------------------------------------------------------------------


def ncat_listener(
    ncat: str, transport: str, sock_dir: Path
) -> tuple[list[str], str, Callable[[subprocess.Popen[bytes]], None]]:
    """``ncat -l`` on a free tcp port or a unix socket path in ``sock_dir``: its argv, the URL
    that reaches it, and a wait until it listens."""
    if transport == "tcp":
        port = free_tcp_port()
        return (
            [ncat, "-l", "127.0.0.1", str(port)],
            f"tcp://127.0.0.1:{port}",
            lambda proc: wait_bound("tcp", port, proc),
        )
    path = sock_dir / "n.sock"
    return [ncat, "-l", "-U", str(path)], f"unix://{path}", lambda proc: wait_path(path, proc)


STREAM_PEERS = ["tcp", "unix"]


@pytest.mark.parametrize("transport", STREAM_PEERS)
def test_ncat_client_to_conduit_listen(tmp_path: Path, sock_dir: Path, ncat: str, transport: str) -> None:
    up, down = os.urandom(4 << 20), os.urandom(1 << 20)
    url = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{sock_dir}/l.sock"
    with conduit(tmp_path, "listen", url) as listener:
        bound = listener.bound_url()
        argv = [ncat, "127.0.0.1", bound.rsplit(":", 1)[1]] if transport == "tcp" else [ncat, "-U", bound[7:]]
        with spawn(argv, tmp_path) as client:
            got_l, got_c = together((listener, down), (client, up))
            assert client.wait() == 0, client.stderr
            assert listener.wait() == 0, listener.stderr
    assert sha(got_l) == sha(up)
    assert sha(got_c) == sha(down)


@pytest.mark.parametrize("transport", STREAM_PEERS)
def test_conduit_connect_to_ncat_listen(tmp_path: Path, sock_dir: Path, ncat: str, transport: str) -> None:
    up, reply = os.urandom(4 << 20), b"ncat says hello\n"
    reply_file = payload_file(tmp_path, "reply", reply)
    argv, url, listening = ncat_listener(ncat, transport, sock_dir)
    with open(reply_file, "rb") as stdin, spawn(argv, tmp_path, stdin=stdin) as server:
        listening(server.popen)
        with conduit(tmp_path, "connect", url) as client:
            got_s, got_c = together((server, None), (client, up))
            assert client.wait() == 0, client.stderr
            assert server.wait() == 0, server.stderr
    assert sha(got_s) == sha(up)
    assert got_c == reply


def test_conduit_connect_udp_to_ncat_listen(tmp_path: Path, ncat: str) -> None:
    lines = random_lines(50)
    port = free_udp_port()
    with spawn([ncat, "-u", "-l", "127.0.0.1", str(port)], tmp_path) as server:
        wait_bound("udp", port, server.popen)
        with conduit(tmp_path, "connect", "--lines", f"udp://127.0.0.1:{port}") as client:
            write(client.popen.stdin, lines)
            assert read_exactly(server.popen.stdout, len(lines)) == lines
            write(server.popen.stdin, b"reply from ncat\n")  # ncat answers its last peer
            assert read_exactly(client.popen.stdout, 16) == b"reply from ncat\n"
            write(client.popen.stdin, b"", close=True)
            assert client.wait() == 0, client.stderr


def test_ncat_udp_client_to_conduit_listen(tmp_path: Path, ncat: str) -> None:
    lines = random_lines(50)
    with conduit(tmp_path, "listen", "--lines", "udp://127.0.0.1:0") as listener:
        port = listener.bound_url().rsplit(":", 1)[1]
        with spawn([ncat, "-u", "127.0.0.1", port], tmp_path) as client:
            write(client.popen.stdin, lines)
            assert read_exactly(listener.popen.stdout, len(lines)) == lines
            write(listener.popen.stdin, b"back to ncat\n")
            assert read_exactly(client.popen.stdout, 13) == b"back to ncat\n"
            write(listener.popen.stdin, b"", close=True)  # then --linger: exit once quiet
            assert listener.wait() == 0, listener.stderr


def test_conduit_connect_unix_dgram_to_ncat_listen(tmp_path: Path, sock_dir: Path, ncat: str) -> None:
    lines = random_lines(50)
    path = sock_dir / "nd.sock"
    with spawn([ncat, "-l", "-U", "--udp", str(path)], tmp_path) as server:
        wait_path(path, server.popen)
        with conduit(tmp_path, "connect", "--lines", f"unix+dgram://{path}") as client:
            write(client.popen.stdin, lines)
            assert read_exactly(server.popen.stdout, len(lines)) == lines
            write(server.popen.stdin, b"reply over unix\n")  # reaches conduit's own bound path
            assert read_exactly(client.popen.stdout, 16) == b"reply over unix\n"
            write(client.popen.stdin, b"", close=True)
            assert client.wait() == 0, client.stderr


def test_ncat_unix_dgram_client_to_conduit_listen(tmp_path: Path, sock_dir: Path, ncat: str) -> None:
    lines = random_lines(50)
    path = sock_dir / "ld.sock"
    with conduit(tmp_path, "listen", "--lines", f"unix+dgram://{path}") as listener:
        listener.bound_url()
        with spawn([ncat, "-U", "--udp", str(path)], tmp_path) as client:
            write(client.popen.stdin, lines)
            assert read_exactly(listener.popen.stdout, len(lines)) == lines
            write(client.popen.stdin, b"", close=True)
            write(listener.popen.stdin, b"", close=True)
            assert listener.wait() == 0, listener.stderr


# ---------------------------------------------------------------------------
# socat
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAM_PEERS)
def test_conduit_connect_to_socat_echo(tmp_path: Path, sock_dir: Path, socat: str, transport: str) -> None:
    """socat runs ``cat`` per connection: everything comes back, and EOF travels both ways."""
    data = os.urandom(4 << 20)
    if transport == "tcp":
        port = free_tcp_port()
        listen, url = f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", f"tcp://127.0.0.1:{port}"
    else:
        path = sock_dir / "se.sock"
        listen, url = f"UNIX-LISTEN:{path}", f"unix://{path}"
    with spawn([socat, listen, "EXEC:cat"], tmp_path, stdin=subprocess.DEVNULL) as server:
        if transport == "tcp":
            wait_bound("tcp", port, server.popen)
        else:
            wait_path(path, server.popen)
        with conduit(tmp_path, "connect", url) as client:
            echoed = client.communicate(data)
            assert client.wait() == 0, client.stderr
        assert server.wait() == 0, server.stderr
    assert sha(echoed) == sha(data)


@pytest.mark.parametrize("transport", STREAM_PEERS)
def test_socat_client_to_conduit_listen(tmp_path: Path, sock_dir: Path, socat: str, transport: str) -> None:
    up, down = os.urandom(4 << 20), b"conduit answers\n"
    url = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{sock_dir}/sl.sock"
    up_file = payload_file(tmp_path, "up", up)
    with conduit(tmp_path, "listen", url) as listener:
        bound = listener.bound_url()
        target = (
            f"TCP:127.0.0.1:{bound.rsplit(':', 1)[1]}" if transport == "tcp" else f"UNIX-CONNECT:{bound[7:]}"
        )
        with open(up_file, "rb") as stdin, spawn([socat, "-", target], tmp_path, stdin=stdin) as client:
            got_l, got_c = together((listener, down), (client, None))
            assert client.wait() == 0, client.stderr
            assert listener.wait() == 0, listener.stderr
    assert sha(got_l) == sha(up)
    assert got_c == down


def test_conduit_connect_udp_to_socat_echo(tmp_path: Path, socat: str) -> None:
    """``UDP-LISTEN``: socat takes the first peer and echoes its datagrams, in order."""
    lines = random_lines(60)
    port = free_udp_port()
    with spawn([socat, f"UDP-LISTEN:{port},bind=127.0.0.1", "PIPE"], tmp_path) as server:
        wait_bound("udp", port, server.popen)
        with conduit(tmp_path, "connect", "--lines", f"udp://127.0.0.1:{port}") as client:
            write(client.popen.stdin, lines)
            assert read_exactly(client.popen.stdout, len(lines)) == lines
            write(client.popen.stdin, b"", close=True)
            assert client.wait() == 0, client.stderr


def test_conduit_connect_udp_to_socat_recvfrom(tmp_path: Path, socat: str) -> None:
    """``UDP-RECVFROM``: one datagram in, its echo back to the sender's address."""
    port = free_udp_port()
    with spawn([socat, f"UDP-RECVFROM:{port},bind=127.0.0.1", "PIPE"], tmp_path) as server:
        wait_bound("udp", port, server.popen)
        with conduit(tmp_path, "connect", f"udp://127.0.0.1:{port}") as client:
            write(client.popen.stdin, b"one datagram, binary \x00\xff")
            assert read_exactly(client.popen.stdout, 23) == b"one datagram, binary \x00\xff"
            write(client.popen.stdin, b"", close=True)
            assert client.wait() == 0, client.stderr
        assert server.wait() == 0


@pytest.mark.parametrize("transport", ["udp", "unix+dgram"])
def test_socat_sendto_conduit_listen(tmp_path: Path, sock_dir: Path, socat: str, transport: str) -> None:
    lines = random_lines(60)
    url = "udp://127.0.0.1:0" if transport == "udp" else f"unix+dgram://{sock_dir}/sd.sock"
    with conduit(tmp_path, "listen", "--lines", "--linger", "0.3", url, stdin=subprocess.DEVNULL) as listener:
        bound = listener.bound_url()
        target = (
            f"UDP-SENDTO:127.0.0.1:{bound.rsplit(':', 1)[1]}"
            if transport == "udp"
            else f"UNIX-SENDTO:{bound.removeprefix('unix+dgram://')}"
        )
        sent = subprocess.run(
            [socat, "-u", "STDIN", target], input=lines, capture_output=True, timeout=DEADLINE, check=False
        )
        assert sent.returncode == 0, sent.stderr
        assert listener.communicate() == lines
        assert listener.wait() == 0, listener.stderr


def test_conduit_connect_unix_dgram_to_socat_recvfrom(tmp_path: Path, sock_dir: Path, socat: str) -> None:
    path = sock_dir / "sr.sock"
    with spawn([socat, f"UNIX-RECVFROM:{path}", "PIPE"], tmp_path) as server:
        wait_path(path, server.popen)
        with conduit(tmp_path, "connect", f"unix+dgram://{path}") as client:
            write(client.popen.stdin, b"to socat and back")
            assert read_exactly(client.popen.stdout, 17) == b"to socat and back"
            write(client.popen.stdin, b"", close=True)
            assert client.wait() == 0, client.stderr
        assert server.wait() == 0
