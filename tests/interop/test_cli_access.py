"""ncat's flags, with ncat on the other side: ``conduit listen --allow/--deny`` against ncat
clients (several loopback source addresses: 127.0.0.2 and up are loopback on Linux, ``ncat -s``
binds them), and ``conduit connect --send-only/--recv-only/-z/--wait`` against ``ncat -l``;
``listen -k --send-only`` and ``--max-conns`` with TLS. Over tcp, tls and unix."""

from __future__ import annotations

import re
import select
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ..conftest import free_tcp_port
from ..test_cli import DEADLINE, Proc, conduit, one_line_error, run_conduit, spawn, together
from .test_cli_peers import read_exactly, wait_bound, wait_path, write

pytestmark = pytest.mark.interop

ACCEPTED = re.compile(r"connection accepted from")
#: ncat ends TLS connections without close_notify: conduit calls that a broken connection
#: (a truncation attack) unless told to accept it. (And ncat --ssl closes the whole connection
#: at its stdin's end: it cannot half-close TLS. So the tests keep its stdin open.)
RAGGED = ["-o", "ragged_eof=1"]


def ragged(scheme: str) -> list[str]:
    return RAGGED if scheme == "tls" else []


@pytest.fixture
def ncat() -> str:
    from .test_cli_peers import NCAT

    if NCAT is None:
        pytest.skip("ncat not installed: run the nox tests session, which installs it")
    return NCAT


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1].split("?", 1)[0]


def _ncat_client(ncat: str, scheme: str, url: str, *extra: str) -> list[str]:
    tls = ["--ssl"] if scheme == "tls" else []
    return [ncat, *tls, *extra, "127.0.0.1", _port(url)]


def _silent_for(proc: Proc, seconds: float) -> bool:
    """Nothing on ``proc``'s stdout for ``seconds`` (a negative check, as test_max_conns's)."""
    assert proc.popen.stdout is not None
    ready, _, _ = select.select([proc.popen.stdout.fileno()], [], [], seconds)
    return not ready


# ---------------------------------------------------------------------------
# conduit listen --allow / --deny, ncat clients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_ncat_clients_against_allow_and_deny(tmp_path: Path, ncat: str, scheme: str) -> None:
    denyfile = tmp_path / "deny.txt"
    denyfile.write_text("# not this one\n127.0.0.2\n")
    args = ["-v", "listen", "--allow", "127.0.0.1,127.0.0.2", "--denyfile", str(denyfile), *ragged(scheme)]
    with conduit(tmp_path, *args, f"{scheme}://127.0.0.1:0") as listener:
        url = listener.bound_url()
        # 127.0.0.2: allowed, then denied (deny wins); 127.0.0.3: not allowed. Both: reset at
        # once, nothing read or written; the one-connection listener goes on waiting.
        for source in ("127.0.0.2", "127.0.0.3"):
            denied = subprocess.run(
                _ncat_client(ncat, scheme, url, "-s", source),
                input=b"let me in\n",
                capture_output=True,
                timeout=DEADLINE,
                check=False,
            )
            assert denied.returncode != 0, denied
            assert denied.stdout == b""
        assert listener.stderr.count("denied by the access rules") == 2, listener.stderr
        assert "127.0.0.2" in listener.stderr
        assert "127.0.0.3" in listener.stderr
        with spawn(_ncat_client(ncat, scheme, url, "-s", "127.0.0.1"), tmp_path) as client:
            write(client.popen.stdin, b"ping\n")
            # the first bytes on stdout are the allowed client's: the denied ones' never got there
            assert read_exactly(listener.popen.stdout, 5) == b"ping\n"
            write(listener.popen.stdin, b"pong\n", close=True)
            assert read_exactly(client.popen.stdout, 5) == b"pong\n"
            if scheme == "tcp":
                # (ncat --ssl waits for its stdin's end too, then closes without reading our
                # close_notify: the kernel may reset the connection, an ending this test leaves out)
                write(client.popen.stdin, b"", close=True)  # ncat ends at its stdin's end
                assert client.wait() == 0, client.stderr
                assert listener.wait() == 0, listener.stderr


def test_keep_open_serves_allowed_ncat_clients_and_resets_the_others(tmp_path: Path, ncat: str) -> None:
    with conduit(
        tmp_path, "listen", "-k", "--echo", "--allow", "127.0.0.0/31", "tcp://127.0.0.1:0"
    ) as server:
        url = server.bound_url()
        for source, allowed in (("127.0.0.1", True), ("127.0.0.5", False), ("127.0.0.1", True)):
            result = subprocess.run(
                _ncat_client(ncat, "tcp", url, "-s", source),
                input=b"echo me\n",
                capture_output=True,
                timeout=DEADLINE,
                check=False,
            )
            if allowed:
                assert (result.returncode, result.stdout) == (0, b"echo me\n"), result
            else:
                assert result.returncode != 0
                assert result.stdout == b""
                assert b"reset" in result.stderr.lower(), result.stderr
        assert server.popen.poll() is None


def test_unix_listen_refuses_allow_and_deny(tmp_path: Path, sock_dir: Path) -> None:
    """unix:// peers have no address to match: the rules are refused (use the file's permissions)."""
    path = sock_dir / "refused.sock"
    for flag in ("--allow", "--deny"):
        result = run_conduit("listen", flag, "127.0.0.1", f"unix://{path}")
        assert result.returncode == 2
        assert "socket file's permissions" in one_line_error(result.stderr)
        assert not path.exists()


def test_bad_specs_are_usage_errors_naming_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "allow.txt"
    bad.write_text("127.0.0.1\n10.0.0.0/33\n")
    result = run_conduit("listen", "--allowfile", str(bad), "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert f"{bad}:2: '10.0.0.0/33'" in one_line_error(result.stderr)
    result = run_conduit("listen", "-k", "--deny", "10.0.0.1,3", "tcp://127.0.0.1:0")
    assert result.returncode == 2
    assert "'3'" in one_line_error(result.stderr)


# ---------------------------------------------------------------------------
# conduit connect --send-only / --recv-only / -z / --wait, ncat listeners
# ---------------------------------------------------------------------------


@contextmanager
def ncat_listener(
    ncat: str, scheme: str, tmp_path: Path, sock_dir: Path, *extra: str, stdin: object = subprocess.PIPE
) -> Iterator[tuple[Proc, list[str]]]:
    """``ncat -l`` for ``scheme`` (tcp, tls: ``--ssl``, unix: ``-U``), and conduit's connect
    arguments for it (the URL, and ``--insecure`` for ncat's throwaway certificate)."""
    if scheme == "unix":
        path = sock_dir / "ncat.sock"
        argv, target = [ncat, "-l", *extra, "-U", str(path)], [f"unix://{path}"]
    else:
        port = free_tcp_port()
        tls = ["--ssl"] if scheme == "tls" else []
        argv = [ncat, "-l", *tls, *extra, "127.0.0.1", str(port)]
        target = [f"{scheme}://127.0.0.1:{port}", *(["--insecure", *RAGGED] if scheme == "tls" else [])]
    with spawn(argv, tmp_path, stdin=stdin) as server:
        if scheme == "unix":
            wait_path(path, server.popen)
        else:
            wait_bound("tcp", port, server.popen)
        yield server, target


SCHEMES = ["tcp", "tls", "unix"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_connect_z_against_ncat(tmp_path: Path, sock_dir: Path, ncat: str, scheme: str) -> None:
    with ncat_listener(ncat, scheme, tmp_path, sock_dir, stdin=subprocess.DEVNULL) as (server, target):
        result = run_conduit("connect", "-z", *target, input=b"must not be sent\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b""
        assert result.stderr == b""
        got = server.communicate()
        assert got == b""  # ncat saw a connection (its -l ended with it), and no data
        assert server.wait() == 0, server.stderr
    # the listener is gone now: not connected is status 1, one line
    result = run_conduit("connect", "-z", *target)
    assert result.returncode == 1
    one_line_error(result.stderr)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_connect_send_only_against_ncat(tmp_path: Path, sock_dir: Path, ncat: str, scheme: str) -> None:
    payload = b"".join(b"line %d from conduit\n" % i for i in range(2000))
    with (
        ncat_listener(ncat, scheme, tmp_path, sock_dir) as (server, target),
        conduit(tmp_path, "connect", "--send-only", *target) as client,
    ):
        write(server.popen.stdin, b"dropped by conduit\n" * 100)  # read and dropped
        assert client.communicate(payload) == b""
        assert client.wait() == 0, client.stderr  # at its stdin's end, without waiting for ncat
        assert read_exactly(server.popen.stdout, len(payload)) == payload
        assert server.wait() == 0, server.stderr  # conduit's end of stream ended ncat


@pytest.mark.parametrize("scheme", SCHEMES)
def test_connect_recv_only_against_ncat(tmp_path: Path, sock_dir: Path, ncat: str, scheme: str) -> None:
    reply = b"".join(b"line %d from ncat\n" % i for i in range(2000))
    (tmp_path / "reply").write_bytes(reply)
    with (
        open(tmp_path / "reply", "rb") as stdin,
        ncat_listener(ncat, scheme, tmp_path, sock_dir, stdin=stdin) as (server, target),
        conduit(tmp_path, "connect", "--recv-only", *target) as client,
    ):
        got_server, got_client = together((server, None), (client, b"never sent\n"))
        assert client.wait() == 0, client.stderr
    assert got_client == reply
    assert got_server == b""


@pytest.mark.parametrize("scheme", SCHEMES)
def test_connect_wait_against_ncat(tmp_path: Path, sock_dir: Path, ncat: str, scheme: str) -> None:
    with (
        ncat_listener(ncat, scheme, tmp_path, sock_dir) as (server, target),
        conduit(tmp_path, "connect", "--wait", "30", *target) as client,
    ):
        write(client.popen.stdin, b"hi ncat\n")
        assert read_exactly(server.popen.stdout, 8) == b"hi ncat\n"
        write(server.popen.stdin, b"hi conduit\n")
        assert read_exactly(client.popen.stdout, 11) == b"hi conduit\n"
        write(client.popen.stdin, b"", close=True)
        assert client.wait() == 0, client.stderr
        assert server.wait() == 0, server.stderr


@pytest.mark.parametrize("wait", ["0.5", "500ms"])
def test_connect_w_gives_up_on_a_peer_that_never_answers(wait: str) -> None:
    # A listener whose accept queue is full drops further SYNs: the connect hangs, -w ends it.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)), socket.socket() as queued:
            queued.setblocking(False)
            queued.connect_ex(("127.0.0.1", port))
            result = run_conduit("connect", "-w", wait, f"tcp://127.0.0.1:{port}")
    assert result.returncode == 1
    assert "no answer within 0.5 s" in one_line_error(result.stderr)


def test_z_with_a_one_way_flag_is_a_usage_error() -> None:
    result = run_conduit("connect", "-z", "--send-only", "tcp://127.0.0.1:9")
    assert result.returncode == 2
    assert "-z" in one_line_error(result.stderr)


@pytest.mark.parametrize(
    "args",
    [
        ["connect", "--send-only", "--exec", "/bin/cat", "tcp://127.0.0.1:9"],
        ["listen", "--recv-only", "--echo", "tcp://127.0.0.1:0"],
        ["listen", "-k", "--send-only", "--broker", "tcp://127.0.0.1:0"],
    ],
)
def test_one_way_flags_with_another_mode_are_usage_errors(args: list[str]) -> None:
    result = run_conduit(*args)
    assert result.returncode == 2
    assert "--send-only/--recv-only" in one_line_error(result.stderr)


# ---------------------------------------------------------------------------
# listen -k --send-only, --max-conns with TLS
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
def test_keep_open_send_only_sends_stdin_to_every_ncat_client(tmp_path: Path, ncat: str, scheme: str) -> None:
    with conduit(
        tmp_path, "-v", "listen", "-k", "--send-only", *ragged(scheme), f"{scheme}://127.0.0.1:0"
    ) as server:
        url = server.bound_url()
        with (
            spawn(_ncat_client(ncat, scheme, url), tmp_path) as a,
            spawn(_ncat_client(ncat, scheme, url), tmp_path) as b,
        ):
            for client in (a, b):  # what the clients say is read and dropped
                write(client.popen.stdin, b"nobody listens to me\n")
            while len(ACCEPTED.findall(server.stderr)) < 2:
                server.wait_stderr(re.compile(r"(connection accepted from.*){2}", re.DOTALL))
            write(server.popen.stdin, b"to everyone\n", close=True)
            for client in (a, b):
                assert read_exactly(client.popen.stdout, 12) == b"to everyone\n"
            assert server.wait() == 0, server.stderr  # stdin's end: every client ended, and exit 0
            assert server.popen.stdout is not None
            assert server.popen.stdout.read() == b""
            for client in (a, b):
                assert client.popen.stdout is not None
                assert client.popen.stdout.read() == b""  # conduit's end of stream came after it
                write(client.popen.stdin, b"", close=True)
                assert client.wait() == 0, client.stderr


def test_max_conns_with_tls_makes_the_next_client_wait(tmp_path: Path, ncat: str) -> None:
    """--max-conns 1 over TLS: the second client's handshake waits (in the kernel's backlog) until
    the first connection ends, then it is served."""
    with conduit(tmp_path, "listen", "-k", "--echo", "--max-conns", "1", "tls://127.0.0.1:0") as server:
        url = server.bound_url()
        with spawn(_ncat_client(ncat, "tls", url), tmp_path) as first:
            write(first.popen.stdin, b"a\n")
            assert read_exactly(first.popen.stdout, 2) == b"a\n"
            with spawn(_ncat_client(ncat, "tls", url), tmp_path) as second:
                write(second.popen.stdin, b"b\n")
                assert _silent_for(second, 0.7)  # the only slot is taken
                first.close()  # the first client goes away: its slot frees
                assert read_exactly(second.popen.stdout, 2) == b"b\n"
                write(second.popen.stdin, b"c\n")
                assert read_exactly(second.popen.stdout, 2) == b"c\n"


def test_socks5_proxy_resets_denied_ncat_clients_before_any_socks_work(tmp_path: Path, ncat: str) -> None:
    target_port = free_tcp_port()
    target_argv = [ncat, "-l", "-k", "--sh-exec", "echo target says hi", "127.0.0.1", str(target_port)]
    with (
        spawn(target_argv, tmp_path, stdin=subprocess.DEVNULL) as target,
        conduit(tmp_path, "-v", "listen", "--socks5", "--allow", "127.0.0.1", "tcp://127.0.0.1:0") as proxy,
    ):
        wait_bound("tcp", target_port, target.popen)
        proxy_at = f"127.0.0.1:{_port(proxy.bound_url())}"

        def through_proxy(source: str) -> subprocess.CompletedProcess[bytes]:
            argv = [ncat, "--proxy", proxy_at, "--proxy-type", "socks5", "-s", source]
            return subprocess.run(
                [*argv, "127.0.0.1", str(target_port)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=DEADLINE,
                check=False,
            )

        denied = through_proxy("127.0.0.2")
        assert denied.returncode != 0
        assert denied.stdout == b""
        argv = [ncat, "--proxy", proxy_at, "--proxy-type", "socks5", "-s", "127.0.0.1"]
        with spawn([*argv, "127.0.0.1", str(target_port)], tmp_path) as allowed:  # stdin kept open
            assert read_exactly(allowed.popen.stdout, 15) == b"target says hi\n"
        assert proxy.stderr.count("denied by the access rules") == 1, proxy.stderr
        # the refused client never reached the SOCKS server: only the allowed one made a connect
        assert proxy.stderr.count("connection requested to 127.0.0.1") == 1, proxy.stderr


def test_udp_listen_drops_denied_ncat_datagrams(tmp_path: Path, ncat: str) -> None:
    with conduit(tmp_path, "-v", "listen", "--deny", "127.0.0.2", "udp://127.0.0.1:0") as listener:
        port = _port(listener.bound_url())
        with spawn([ncat, "-u", "-s", "127.0.0.2", "127.0.0.1", port], tmp_path) as denied:
            write(denied.popen.stdin, b"dropped\n")
            listener.wait_stderr(re.compile(r"datagram from 127\.0\.0\.2:\d+ denied"))
        with spawn([ncat, "-u", "-s", "127.0.0.1", "127.0.0.1", port], tmp_path) as allowed:
            write(allowed.popen.stdin, b"welcome\n")
            # the first datagram conduit took is the allowed one: the denied one made no channel
            assert read_exactly(listener.popen.stdout, 8) == b"welcome\n"
            write(listener.popen.stdin, b"reply\n")
            assert read_exactly(allowed.popen.stdout, 6) == b"reply\n"
