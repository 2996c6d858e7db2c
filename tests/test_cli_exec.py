"""``conduit listen/connect --exec`` and ``--sh-exec``: a program per connection.

Real peers: ncat clients against ``conduit listen --exec`` over tcp, unix and
tls (``ncat --ssl`` with a certificate from :class:`TestPKI`), ``conduit
connect --exec`` against ncat listeners; the child's environment; both ways
of binding the child (the socket itself, and pipes with ``--no-splice``);
200 connections of 1 MiB each through ``/bin/cat`` with SHA-256 checks, then
no child, zombie or extra descriptor left in the conduit process; SIGINT and
SIGTERM with children running; parse-time errors. The session logic and the
environment are also tested in-process against the pool.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

import trio_conduit as conduit_api
from trio_conduit.cli._exec import child_environment, exit_status, run_exec
from trio_conduit.cli._exec_args import parse_exec, parse_sh_exec
from trio_conduit.testing import TestPKI

from .conftest import free_tcp_port
from .interop.test_cli_peers import ncat, ncat_listener, read_exactly, wait_bound, write  # noqa: F401 - a fixture
from .test_cli import DEADLINE, Proc, conduit, one_line_error, run_conduit, sha, spawn

MiB = 1 << 20


# ---------------------------------------------------------------------------
# the process under test: its children and descriptors
# ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (zombies included), from /proc/PID/task/*/children."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def fds(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return out


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone only once reaped: it is still listed then)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition: Callable[[], object], what: Callable[[], str], timeout: float = DEADLINE) -> None:
    """Poll ``condition()`` until true; fail with ``what()`` (a bound on waiting, not a timing)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"not within {timeout} s: {what()}"
        time.sleep(0.02)


def quiet(tmp_path: Path, *args: str) -> AbstractContextManager[Proc]:
    """``conduit ARGS`` with standard input on /dev/null (unread: a program has the connection)."""
    return conduit(tmp_path, *args, stdin=subprocess.DEVNULL)


def port_of(url: str) -> str:
    return url.split("?")[0].rsplit(":", 1)[1]


# ---------------------------------------------------------------------------
# ncat clients against conduit listen --exec
# ---------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("way", ["socket", "pipes"])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_ncat_client_through_exec_cat(
    tmp_path: Path,
    sock_dir: Path,
    ncat: str,  # noqa: F811
    transport: str,
    way: str,
) -> None:
    data = os.urandom(MiB)
    url = "tcp://127.0.0.1:0" if transport == "tcp" else f"unix://{sock_dir}/e.sock"
    extra = ["--no-splice"] if way == "pipes" else []
    with quiet(tmp_path, "listen", "--exec", "/bin/cat", *extra, url) as server:
        bound = server.bound_url()
        argv = [ncat, "127.0.0.1", port_of(bound)] if transport == "tcp" else [ncat, "-U", bound[7:]]
        with spawn(argv, tmp_path) as client:
            echoed = client.communicate(data)
            assert client.wait() == 0, client.stderr
        assert server.wait() == 0, server.stderr  # one connection: the child's status, 0
    assert sha(echoed) == sha(data)


@pytest.mark.interop
def test_ncat_ssl_client_against_tls_exec(tmp_path: Path, ncat: str) -> None:  # noqa: F811
    pki = TestPKI(tmp_path)
    script = 'read line; printf "got %s over %s/%s\\n" "$line" "$CONDUIT_PROTO" "$CONDUIT_TRANSPORT"'
    with conduit(
        tmp_path, "listen", "--sh-exec", script, pki.server_url(), stdin=subprocess.DEVNULL
    ) as server:
        port = port_of(server.bound_url())
        argv = [ncat, "--ssl", "--ssl-verify", "--ssl-trustfile", pki.cafile, "localhost", port]
        with spawn(argv, tmp_path) as client:
            write(client.popen.stdin, b"hello\n")  # stdin stays open: ncat --ssl closes all at its end
            assert read_exactly(client.popen.stdout, 23) == b"got hello over TCP/tls\n"
            assert client.popen.stdout is not None
            assert client.popen.stdout.read() == b""  # the child exited: conduit closed the connection
            write(client.popen.stdin, b"", close=True)
            assert client.wait() == 0, client.stderr
        assert server.wait() == 0, server.stderr


@pytest.mark.interop
def test_exec_environment_tcp(tmp_path: Path, ncat: str) -> None:  # noqa: F811
    source = free_tcp_port()
    with quiet(tmp_path, "listen", "--sh-exec", "env", "tcp://127.0.0.1:0") as server:
        port = port_of(server.bound_url())
        with spawn(
            [ncat, "-p", str(source), "127.0.0.1", port], tmp_path, stdin=subprocess.DEVNULL
        ) as client:
            out = client.communicate()
        assert server.wait() == 0, server.stderr
    env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    for prefix in ("CONDUIT", "NCAT"):
        assert env[f"{prefix}_REMOTE_ADDR"] == "127.0.0.1"
        assert env[f"{prefix}_REMOTE_PORT"] == str(source)
        assert env[f"{prefix}_LOCAL_ADDR"] == "127.0.0.1"
        assert env[f"{prefix}_LOCAL_PORT"] == port
        assert env[f"{prefix}_PROTO"] == "TCP"
    assert env["CONDUIT_TRANSPORT"] == "tcp"


@pytest.mark.interop
def test_exec_environment_unix(tmp_path: Path, sock_dir: Path, ncat: str) -> None:  # noqa: F811
    path = sock_dir / "env.sock"
    with quiet(tmp_path, "listen", "--sh-exec", "env", f"unix://{path}") as server:
        server.bound_url()
        with spawn([ncat, "-U", str(path)], tmp_path, stdin=subprocess.DEVNULL) as client:
            out = client.communicate()
            client_pid = client.popen.pid
        assert server.wait() == 0, server.stderr
    env = dict(line.split("=", 1) for line in out.decode().splitlines() if "=" in line)
    assert env["CONDUIT_LOCAL_ADDR"] == env["NCAT_LOCAL_ADDR"] == str(path)
    assert env["CONDUIT_REMOTE_ADDR"] == ""  # ncat's client socket has no name
    assert "CONDUIT_REMOTE_PORT" not in env
    assert "NCAT_LOCAL_PORT" not in env
    assert env["CONDUIT_PROTO"] == "UNIX"
    assert env["CONDUIT_PEER_PID"] == str(client_pid)
    assert env["CONDUIT_PEER_UID"] == str(os.getuid())


def test_stale_variables_are_not_passed_on() -> None:
    info = conduit_api.CommunicationInfo("vsock", None, None, 0, (1, 5000), (3, 1234))
    env = child_environment(info, {"NCAT_REMOTE_PORT": "99", "CONDUIT_PEER_PID": "1", "PATH": "/bin"})
    assert env == {
        "PATH": "/bin",
        "CONDUIT_REMOTE_ADDR": "3",
        "NCAT_REMOTE_ADDR": "3",
        "CONDUIT_REMOTE_PORT": "1234",
        "NCAT_REMOTE_PORT": "1234",
        "CONDUIT_LOCAL_ADDR": "1",
        "NCAT_LOCAL_ADDR": "1",
        "CONDUIT_LOCAL_PORT": "5000",
        "NCAT_LOCAL_PORT": "5000",
        "CONDUIT_PROTO": "VSOCK",
        "NCAT_PROTO": "VSOCK",
        "CONDUIT_TRANSPORT": "vsock",
    }
    abstract = conduit_api.CommunicationInfo("unix", None, None, 0, b"\0name", "")
    assert child_environment(abstract, {})["CONDUIT_LOCAL_ADDR"] == "@name"


# ---------------------------------------------------------------------------
# conduit connect --exec against ncat listeners
# ---------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_connect_exec_against_ncat_listener(
    tmp_path: Path,
    sock_dir: Path,
    ncat: str,  # noqa: F811
    transport: str,
) -> None:
    # ncat -U sends all of a large stdin before it reads: 1 MiB each way would fill both
    # unix socket buffers, so there the payload is smaller than they are.
    data = os.urandom(MiB if transport == "tcp" else 64 << 10)
    payload = tmp_path / "payload"
    payload.write_bytes(data)
    argv, url, listening = ncat_listener(ncat, transport, sock_dir)
    with open(payload, "rb") as stdin, spawn(argv, tmp_path, stdin=stdin) as server:
        listening(server.popen)
        # The child echoes what ncat sends, then says goodbye and exits 3: conduit's status.
        # Over tcp ncat half-closes at the end of its stdin; over unix it does not, so there
        # the child reads the known length.
        echo = "cat" if transport == "tcp" else f"head -c {len(data)}"
        result = run_conduit("connect", "--sh-exec", f"{echo}; printf bye; exit 3", url)
        echoed = server.communicate()
    assert result.returncode == 3, result.stderr
    assert echoed[-3:] == b"bye"
    assert sha(echoed[:-3]) == sha(data)


# ---------------------------------------------------------------------------
# load: 200 connections through /bin/cat, nothing left behind
# ---------------------------------------------------------------------------


async def _echo_through(port: int, data: bytes) -> str:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    digest = hashlib.sha256()
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            await stream.send_all(data)
            await stream.send_eof()

        nursery.start_soon(send)
        while chunk := await stream.receive_some(1 << 16):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("way", ["socket", "pipes"])
async def test_200_connections_through_cat_leave_nothing(tmp_path: Path, way: str) -> None:
    extra = ["--no-splice"] if way == "pipes" else []
    data = os.urandom(MiB)
    want = sha(data)
    with quiet(tmp_path, "-v", "listen", "-k", "--exec", "/bin/cat", *extra, "tcp://127.0.0.1:0") as server:
        port = int(port_of(server.bound_url()))
        pid = server.popen.pid
        assert await _echo_through(port, data) == want  # warm up: whatever opens once is open now
        server.wait_stderr(re.compile(r"closed conn #1 "))  # the warm-up connection is all gone
        before = fds(pid)
        results: list[str] = []
        limit = trio.CapacityLimiter(25)
        peak = 0

        async def one() -> None:
            nonlocal peak
            async with limit:
                results.append(await _echo_through(port, data))
                peak = max(peak, len(children(pid)))

        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(one)
        assert results == [want] * 200
        assert peak >= 2, "the children ran side by side"
        wait_for(lambda: not children(pid), lambda: f"no child of conduit left: {children(pid)}")
        wait_for(lambda: fds(pid) == before, lambda: f"conduit's descriptors as before: {before} {fds(pid)}")
        assert server.popen.poll() is None, server.stderr
        assert "Traceback" not in server.stderr
        assert "WARNING" not in server.stderr


# ---------------------------------------------------------------------------
# signals with children running
# ---------------------------------------------------------------------------


def _hold(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]


@pytest.mark.parametrize(
    ("signum", "status", "args"),
    [
        (signal.SIGINT, 128 + signal.SIGINT, []),
        (signal.SIGTERM, 0, ["--drain-timeout", "0.2"]),  # listen drains on SIGTERM, exits 0
        (signal.SIGHUP, 128 + signal.SIGHUP, []),
    ],
)
def test_signal_stops_every_child(tmp_path: Path, signum: int, status: int, args: list[str]) -> None:
    # The child ignores SIGTERM: only the SIGKILL that follows ends it.
    script = "trap '' TERM; exec sleep 600"
    with quiet(tmp_path, "listen", "-k", *args, "--sh-exec", script, "tcp://127.0.0.1:0") as server:
        port = int(port_of(server.bound_url()))
        clients = _hold(port, 3)
        try:
            wait_for(lambda: len(children(server.popen.pid)) == 3, lambda: "three children running")
            kids = children(server.popen.pid)
            server.popen.send_signal(signum)
            assert server.wait() == status, server.stderr
        finally:
            for c in clients:
                c.close()
    assert not [k for k in kids if alive(k)], "a child outlived conduit"
    assert "Traceback" not in server.stderr


def test_connect_exec_sigint_stops_the_child(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with quiet(tmp_path, "connect", "--exec", "sleep 600", f"tcp://127.0.0.1:{port}") as client:
            peer, _ = listener.accept()
            with peer:
                wait_for(lambda: len(children(client.popen.pid)) == 1, lambda: "the child running")
                kid = children(client.popen.pid)[0]
                client.popen.send_signal(signal.SIGINT)
                assert client.wait() == 128 + signal.SIGINT, client.stderr
                assert peer.recv(1) == b""  # conduit closed the connection
    assert not alive(kid)


def test_a_child_that_outlives_its_session_is_stopped_and_logged(tmp_path: Path) -> None:
    # The child closes its stdout and ignores its stdin: once the peer's end has come,
    # it gets the grace period, then SIGTERM.
    with quiet(
        tmp_path, "listen", "--sh-exec", "exec sleep 600 >&-", "--no-splice", "tcp://127.0.0.1:0"
    ) as server:
        port = int(port_of(server.bound_url()))
        with socket.create_connection(("127.0.0.1", port)) as client:
            client.shutdown(socket.SHUT_WR)
            assert client.recv(1) == b""
        assert server.wait() == 128 + signal.SIGTERM
    assert re.search(r"conn #1: exec sleep 600 >&- \(pid \d+\) killed by SIGTERM \(2 s after", server.stderr)


# ---------------------------------------------------------------------------
# in-process sessions
# ---------------------------------------------------------------------------


async def test_pipes_session_returns_the_child_status(no_fd_leak: object) -> None:
    """Pipes (zero copy off): the child's output, its half-close, its exit status."""
    spec = parse_sh_exec("head -c 5; echo; exit 7")
    async with conduit_api.open_pool() as pool, trio.open_nursery() as nursery:
        statuses: list[int] = []

        async def handler(conn: conduit_api.Connection) -> None:
            statuses.append(await run_exec(conn, spec, zero_copy=False))

        bound = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
        conn = await pool.connect(str(bound))
        assert isinstance(conn, conduit_api.HalfCloseableStreamConnection)
        await conn.send_all(b"hello world")
        got = b""
        while chunk := await conn.receive_some():
            got += chunk
        await conn.aclose()
        with trio.fail_after(DEADLINE):
            while not statuses:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert got == b"hello\n"
    assert statuses == [7]


async def test_a_program_that_cannot_start_is_status_127() -> None:
    spec = parse_exec("/bin/true")
    spec = type(spec)(("/nonexistent/program",), "/nonexistent/program")
    async with conduit_api.open_pool() as pool, trio.open_nursery() as nursery:
        statuses: list[int] = []

        async def handler(conn: conduit_api.Connection) -> None:
            statuses.append(await run_exec(conn, spec))

        bound = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
        conn = await pool.connect(str(bound))
        assert isinstance(conn, conduit_api.StreamConnection)
        assert await conn.receive_some() == b""
        await conn.aclose()
        nursery.cancel_scope.cancel()
    assert statuses == [127]


def test_exit_status_as_a_shell_gives_it() -> None:
    assert exit_status(0) == 0
    assert exit_status(3) == 3
    assert exit_status(-signal.SIGKILL) == 128 + 9


# ---------------------------------------------------------------------------
# parse-time errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["listen", "--exec", "", "tcp://127.0.0.1:0"], "empty command"),
        (["listen", "--exec", "cat 'unclosed", "tcp://127.0.0.1:0"], "No closing quotation"),
        (["listen", "--exec", "no-such-program-here", "tcp://127.0.0.1:0"], "not a program on PATH"),
        (["listen", "--exec", "/etc/passwd", "tcp://127.0.0.1:0"], "not executable"),
        (["listen", "--exec", "/no/such", "tcp://127.0.0.1:0"], "does not exist"),
        (["listen", "--sh-exec", " ", "tcp://127.0.0.1:0"], "empty command"),
        (["listen", "--exec", "cat", "--sh-exec", "cat", "tcp://127.0.0.1:0"], "not allowed with"),
        (["listen", "--exec", "cat", "--echo", "tcp://127.0.0.1:0"], "cannot be used together"),
        (["listen", "--exec", "cat", "--broker", "tcp://127.0.0.1:0"], "cannot be used together"),
        (["listen", "--exec", "cat", "--socks5", "tcp://127.0.0.1:0"], "cannot be used together"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = run_conduit(*args)
    assert result.returncode == 2
    assert message in one_line_error(result.stderr)


def test_exec_spec_splits_like_a_shell_without_one() -> None:
    assert parse_exec("printf '%s|' 'a b' c\\ d $HOME").argv == ("printf", "%s|", "a b", "c d", "$HOME")
    assert parse_sh_exec("echo $HOME").argv == ("/bin/sh", "-c", "echo $HOME")


def test_exec_on_udp_each_datagram_to_the_child(tmp_path: Path) -> None:
    """Datagrams: each one written to the child; each output line (--lines) one datagram back."""
    with conduit(
        tmp_path,
        "listen",
        "--lines",
        "--sh-exec",
        'while read -r line; do echo "<$line>"; done',  # line by line, unlike tr's buffered output
        "udp://127.0.0.1:0",
        stdin=subprocess.DEVNULL,
    ) as server:
        port = int(port_of(server.bound_url()))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(DEADLINE)
            client.sendto(b"one\n", ("127.0.0.1", port))
            assert client.recv(100) == b"<one>\n"
            client.sendto(b"two\nthree\n", ("127.0.0.1", port))
            assert client.recv(100) == b"<two>\n"
            assert client.recv(100) == b"<three>\n"


# ---------------------------------------------------------------------------
# other stream transports: UDT, and through a proxy
# ---------------------------------------------------------------------------


def test_exec_over_udt(tmp_path: Path) -> None:
    """UDT is no kernel socket: pipes. The child reads a known length (no half-close needed)."""
    data = os.urandom(256 << 10)
    script = f"head -c {len(data)}"
    with quiet(tmp_path, "listen", "--sh-exec", script, "udt://127.0.0.1:0") as server:
        url = server.bound_url()
        result = run_conduit("connect", url, input=data)
        assert result.returncode == 0, result.stderr
        assert server.wait() == 0, server.stderr
    assert sha(result.stdout) == sha(data)


def test_connect_exec_through_a_socks5_proxy(tmp_path: Path) -> None:
    """The child talks through two proxy hops to an echo server; its status is conduit's."""
    check = 'echo ping; read -r back; [ "$back" = ping ] && [ "$CONDUIT_REMOTE_PORT" = "$1" ]'
    with ExitStack() as stack:
        echo = stack.enter_context(conduit(tmp_path, "listen", "-k", "--echo", "tcp://127.0.0.1:0"))
        proxy = stack.enter_context(conduit(tmp_path, "listen", "--socks5", "tcp://127.0.0.1:0"))
        target, hop = echo.bound_url(), proxy.bound_url().removeprefix("tcp://")
        port = port_of(target)
        for script, status in ((f"set -- {port}; {check}", 0), (f"set -- 1; {check}", 1)):
            result = run_conduit(
                "connect",
                "--proxy",
                f"socks5://{hop}",
                "--proxy",
                f"http://{hop}",
                "--sh-exec",
                script,
                target,
            )
            assert result.returncode == status, result.stderr


# ---------------------------------------------------------------------------
# fuzzing the parsers, cancelling sessions
# ---------------------------------------------------------------------------


@given(st.text(max_size=80))
def test_exec_parsers_parse_or_say_why(text: str) -> None:
    for parse in (parse_exec, parse_sh_exec):
        try:
            spec = parse(text)
        except argparse.ArgumentTypeError as exc:
            why = str(exc)
            assert why  # any text: either parsed, or a reason (no other exception)
        else:
            assert spec.argv
            assert spec.text == text
            assert all("\0" not in arg for arg in spec.argv)
            if parse is parse_exec:
                assert spec.argv == tuple(shlex.split(text))


@pytest.mark.parametrize("zero_copy", [True, False], ids=["socket", "pipes"])
async def test_cancelled_anywhere_no_child_no_descriptor(no_fd_leak: object, zero_copy: bool) -> None:
    """A session cancelled at many points (before the child starts, while bytes flow, while it
    exits) leaves no child of this process (no zombie either) and no descriptor."""
    spec = parse_exec("/bin/cat")
    me = os.getpid()
    async with conduit_api.open_pool() as pool, trio.open_nursery() as nursery:
        done: list[float] = []

        async def handler(conn: conduit_api.Connection) -> None:
            delay = delays[len(done)]
            with trio.move_on_after(delay):
                await run_exec(conn, spec, zero_copy=zero_copy)
            assert children(me) == [], "the child is waited for before run_exec returns"
            done.append(delay)

        delays = [0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
        bound = await nursery.start(pool.serve, "tcp://127.0.0.1:0", handler)
        for n in range(len(delays)):
            conn = await pool.connect(str(bound))
            assert isinstance(conn, conduit_api.StreamConnection)
            try:
                with trio.fail_after(DEADLINE):
                    while len(done) == n:
                        try:
                            await conn.send_all(b"x" * 4096)
                            await conn.receive_some()
                        except trio.BrokenResourceError:
                            await trio.sleep(0.001)
            finally:
                await conn.aclose()
        nursery.cancel_scope.cancel()
    assert done == delays
    assert children(me) == []


@pytest.mark.parametrize("way", ["socket", "pipes"])
def test_the_child_inherits_no_descriptor_of_ours(tmp_path: Path, way: str) -> None:
    """Only stdin, stdout and stderr: not the listener, not another connection (``ls`` adds its own 3)."""
    extra = ["--no-splice"] if way == "pipes" else []
    with quiet(
        tmp_path, "listen", "-k", "--exec", "ls -1 /proc/self/fd", *extra, "tcp://127.0.0.1:0"
    ) as server:
        port = int(port_of(server.bound_url()))
        with socket.create_connection(("127.0.0.1", port)) as other:  # a second connection stays open
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.shutdown(socket.SHUT_WR)
                listing = b""
                while chunk := client.recv(4096):
                    listing += chunk
            other.shutdown(socket.SHUT_WR)
    assert sorted(int(fd) for fd in listing.split()) == [0, 1, 2, 3]


@pytest.mark.interop
def test_connect_tls_exec_against_ncat_ssl_listener(tmp_path: Path, ncat: str) -> None:  # noqa: F811
    port = free_tcp_port()
    with spawn([ncat, "--ssl", "-l", "127.0.0.1", str(port)], tmp_path) as server:
        wait_bound("tcp", port, server.popen)
        write(server.popen.stdin, b"hello from ncat\n")  # stdin stays open: ncat --ssl closes all at its end
        script = 'read -r line; echo "got: $line ($CONDUIT_TRANSPORT)"; exit 5'
        result = run_conduit("connect", "--tls", "--insecure", "--sh-exec", script, f"tcp://127.0.0.1:{port}")
        assert result.returncode == 5, result.stderr
        assert read_exactly(server.popen.stdout, 27) == b"got: hello from ncat (tls)\n"
