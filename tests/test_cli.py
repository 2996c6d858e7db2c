"""The ``conduit`` command, run as a subprocess (``python -m trio_conduit``).

``check`` and ``plugins`` (text and JSON); ``connect`` ↔ ``listen`` over tcp,
udp, unix and unix+dgram with content compared (sha256 of random payloads,
both directions at once, through every stdin/stdout path: pipes with the
splice fast path, regular files with sendfile, plain reads with
``--no-splice``, ``-vvv`` tracing); half-close; ``--keep-open`` with
``--echo`` and several clients at once; ``--max-conns``; the bound-address
line; error paths (refused, malformed URLs and options, usage), stdout closed
early, signals. Every process is killed and reaped in ``finally``.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import importlib.util
import json
import logging
import os
import pty
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from trio_conduit import (
    Address,
    Availability,
    Connection,
    Context,
    Kind,
    Transport,
    TransportUnavailable,
    URLParts,
    hookimpl,
    register_plugin,
    unregister_plugin,
)
from trio_conduit._trace import DEBUG_ALL, Tracer
from trio_conduit.cli import main
from trio_conduit.cli._check import run_check
from trio_conduit.cli._main import with_options
from trio_conduit.cli._stdio import kernel_socket
from trio_conduit.transport import HalfCloseableSocketStream, SocketStream, parse_host_port

from .conftest import free_tcp_port, free_udp_port

CONDUIT = [sys.executable, "-m", "trio_conduit"]
#: Seconds any one process may take before the test gives up on it.
DEADLINE = 60.0
LISTENING = re.compile(r"^conduit: listening on (\S+)$", re.MULTILINE)
STREAMS = ["tcp", "unix"]
DATAGRAMS = ["udp", "unix+dgram"]


# ---------------------------------------------------------------------------
# helpers (tests/interop/test_cli_peers.py uses them too)
# ---------------------------------------------------------------------------


class Proc:
    """A subprocess whose stderr goes to a file, readable while it runs."""

    def __init__(
        self,
        argv: Sequence[str],
        tmp_path: Path,
        *,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
    ) -> None:
        self.argv = list(argv)
        self.err_path = tmp_path / f"stderr-{secrets.token_hex(4)}"
        self._err: IO[bytes] = open(self.err_path, "wb")  # noqa: SIM115 - closed in close()
        self.popen = subprocess.Popen(self.argv, stdin=stdin, stdout=stdout, stderr=self._err)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_stderr(self, pattern: re.Pattern[str], timeout: float = DEADLINE) -> re.Match[str]:
        """Wait for ``pattern`` in stderr; fail if the process exits first."""
        end = time.monotonic() + timeout
        while True:
            found = pattern.search(self.stderr)
            if found:
                return found
            if self.popen.poll() is not None:
                pytest.fail(f"{self.argv} exited {self.popen.returncode} first; stderr: {self.stderr!r}")
            if time.monotonic() > end:
                pytest.fail(f"no {pattern.pattern!r} from {self.argv} in {timeout} s: {self.stderr!r}")
            time.sleep(0.02)

    def bound_url(self) -> str:
        """The URL from ``conduit: listening on URL``."""
        return self.wait_stderr(LISTENING).group(1)

    def communicate(self, data: bytes | None = None, timeout: float = DEADLINE) -> bytes:
        out, _ = self.popen.communicate(data, timeout=timeout)
        return out or b""

    def wait(self, timeout: float = DEADLINE) -> int:
        return self.popen.wait(timeout=timeout)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with suppress(OSError):
                    pipe.close()
        self._err.close()


@contextmanager
def spawn(argv: Sequence[str], tmp_path: Path, **kwargs: Any) -> Iterator[Proc]:
    """Start a process; kill and reap it on the way out, whatever happens."""
    proc = Proc(argv, tmp_path, **kwargs)
    try:
        yield proc
    finally:
        proc.close()


@contextmanager
def conduit(tmp_path: Path, *args: str, **kwargs: Any) -> Iterator[Proc]:
    """``conduit ARGS`` as a process."""
    with spawn([*CONDUIT, *args], tmp_path, **kwargs) as proc:
        yield proc


def run_conduit(
    *args: str, stdin: Any = subprocess.DEVNULL, input: bytes | None = None, timeout: float = DEADLINE
) -> subprocess.CompletedProcess[bytes]:
    """Run ``conduit ARGS`` to completion."""
    if input is not None:
        stdin = None
    return subprocess.run(
        [*CONDUIT, *args], stdin=stdin, input=input, capture_output=True, timeout=timeout, check=False
    )


def together(*calls: tuple[Proc, bytes | None]) -> list[bytes]:
    """``communicate`` with several processes at once (each feeding stdin and reading stdout)."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(proc.communicate, data) for proc, data in calls]
        return [f.result() for f in futures]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listen_url(transport: str, where: Path) -> str:
    """A URL to listen on: port 0 on loopback, or a socket path under ``where``."""
    if transport in ("unix", "unix+dgram"):
        return f"{transport}://{where}/{transport.replace('+', '-')}.sock"
    return f"{transport}://127.0.0.1:0"


def one_line_error(stderr: bytes | str) -> str:
    """The stderr of a failed command: exactly one line starting ``conduit: ``."""
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {text!r}"
    assert lines[0].startswith("conduit: "), lines[0]
    assert "Traceback" not in text
    return lines[0]


def random_lines(count: int) -> bytes:
    return b"".join(secrets.token_hex(20).encode() + b"\n" for _ in range(count))


# ---------------------------------------------------------------------------
# check / plugins
# ---------------------------------------------------------------------------


def test_check_text_lists_transports_and_round_trips() -> None:
    result = run_conduit("check")
    out = result.stdout.decode()
    assert result.returncode == 0, (out, result.stderr)
    assert result.stderr == b""
    transports = out.split("transports:\n")[1].split("round trips:\n")[0]
    trips = out.split("round trips:\n")[1]
    for scheme in ("tcp", "udp", "unix", "unix+dgram"):
        assert re.search(rf"^  {re.escape(scheme)}\s+\S+\s+plugin \S+\s+available\b", transports, re.M), out
        found = re.search(rf"^  {re.escape(scheme)}\s+ok\s+([\d.]+) ms", trips, re.M)
        assert found, out
        assert float(found.group(1)) > 0
    assert re.search(r"^  tcp\s+trio-conduit \d", out.split("transports:")[0], re.M)
    assert re.search(r"(\d+) of \1 round trips passed", out)


def test_check_json_has_the_same_facts() -> None:
    result = run_conduit("check", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["ok"] is True
    assert doc["round_trips"]["failed"] == 0
    plugins = {p["name"]: p for p in doc["plugins"]}
    assert plugins["tcp"]["distribution"] == "trio-conduit"
    assert plugins["tcp"]["version"]
    by_scheme = {s: t for t in doc["transports"] for s in t["schemes"]}
    for scheme in ("tcp", "udp", "unix", "unix+dgram"):
        t = by_scheme[scheme]
        assert t["available"] is True
        assert t["reason"] is None
        assert t["round_trip"]["ok"] is True, t
        assert t["round_trip"]["ms"] > 0
        assert t["round_trip"]["error"] is None
    assert by_scheme["tcp"]["kind"] == "stream"
    assert by_scheme["udp"]["kind"] == "datagram"
    assert "half_close" in by_scheme["tcp"]["capabilities"]
    for t in doc["transports"]:  # unavailable ones say why
        if not t["available"]:
            assert t["reason"]
            assert t["round_trip"] is None


def test_plugins_lists_transports_options_and_hooks() -> None:
    from trio_conduit import hookspecs

    result = run_conduit("plugins", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    by_scheme = {s: t for t in doc["transports"] for s in t["schemes"]}
    assert {o["name"] for o in by_scheme["tcp"]["options"]} >= {"nodelay", "keepalive"}
    assert all(o["doc"] for o in by_scheme["udp"]["options"])
    hooks = {h["hook"]: h for h in doc["hooks"]}
    assert set(hooks) == {name for name in vars(hookspecs) if name.startswith("conduit_")}
    assert set(hooks["conduit_transports"]["implementations"]) >= {"tcp", "udp", "unix"}
    assert hooks["conduit_transports"]["awaited"] is False
    assert hooks["conduit_connection_made"]["awaited"] is True
    assert {o["name"] for o in doc["common_options"]} >= {"local", "device", "broadcast"}

    text = run_conduit("plugins")
    assert text.returncode == 0
    out = text.stdout.decode()
    assert "tcp://" in out
    assert "?nodelay=true" in out
    assert re.search(r"^  conduit_transports\s+sync\s+.*\btcp\b", out, re.M)


class _BrokenListen(Transport):
    """Available, but listening fails: its round trip must fail with one line."""

    schemes = ("broken-listen+test",)
    name = "BROKEN"
    kind = Kind.STREAM

    def parse_address(self, parts: URLParts, *, listening: bool) -> Address:
        return parse_host_port(parts, listening=listening)

    async def connect(self, ctx: Context) -> Connection:
        raise AssertionError("never reached: listen fails first")

    async def listen(self, ctx: Context) -> trio.abc.Listener[Connection]:
        await trio.lowlevel.checkpoint()
        raise TransportUnavailable(errno.EPROTONOSUPPORT, "no such protocol in this test", address=None)

    def loopback_url(self, tmpdir: str) -> str:
        return "broken-listen+test://127.0.0.1:0"


class _Missing(_BrokenListen):
    schemes = ("missing+test",)

    def availability(self) -> Availability:
        return Availability(False, "this kernel lacks it", errno.ENOPROTOOPT)


class _ProbeRaises(_BrokenListen):
    schemes = ("probe-raises+test",)

    def availability(self) -> Availability:
        raise RuntimeError("probe bug")


class _FakePlugin:
    @hookimpl
    def conduit_transports(self) -> list[Transport]:
        return [_BrokenListen(), _Missing(), _ProbeRaises()]


@pytest.fixture
def fake_transports() -> Iterator[None]:
    plugin = _FakePlugin()
    register_plugin(plugin, name="fake-for-check")
    try:
        yield
    finally:
        unregister_plugin(plugin)


async def test_check_reports_failures_as_lines_and_status_1(
    fake_transports: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_check(as_json=False) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert re.search(r"^  broken-listen\+test\s+FAIL  .*no such protocol in this test", out, re.M), out
    assert re.search(
        r"^  missing\+test\s+stream\s+plugin \S+\s+unavailable  this kernel lacks it \[ENOPROTOOPT\]$",
        out,
        re.M,
    ), out
    assert re.search(
        r"^  probe-raises\+test .*unavailable  the availability probe raised RuntimeError: probe bug",
        out,
        re.M,
    ), out
    assert re.search(r"^  tcp\s+ok\s", out, re.M)  # the others still run
    assert re.search(r"(\d+) of (?!\1)\d+ round trips passed", out)

    assert await run_check(as_json=True) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    assert doc["round_trips"]["failed"] == 1
    by_scheme = {s: t for t in doc["transports"] for s in t["schemes"]}
    failed = by_scheme["broken-listen+test"]["round_trip"]
    assert failed["ok"] is False
    assert "no such protocol in this test" in failed["error"]
    assert "\n" not in failed["error"]
    assert by_scheme["missing+test"]["errno_name"] == "ENOPROTOOPT"
    assert by_scheme["missing+test"]["round_trip"] is None
    assert by_scheme["tcp"]["round_trip"]["ok"] is True


# ---------------------------------------------------------------------------
# connect <-> listen: streams
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", STREAMS)
@pytest.mark.parametrize("mode", ["pipes", "files", "no-splice", "traced"])
def test_stream_both_directions(tmp_path: Path, sock_dir: Path, transport: str, mode: str) -> None:
    """4 MiB each way at once; each side's EOF is passed on and both exit 0."""
    to_listener, to_connector = os.urandom(4 << 20), os.urandom(4 << 20)
    globals_ = ["-vvv"] if mode == "traced" else []
    flags = ["--no-splice"] if mode == "no-splice" else []
    if mode == "traced":  # every read and write traced: the plain path, and a lot of stderr
        to_listener, to_connector = to_listener[: 256 << 10], to_connector[: 256 << 10]
    url = listen_url(transport, sock_dir)
    with ExitStack() as stack:
        l_in: Any = subprocess.PIPE
        c_in: Any = subprocess.PIPE
        l_out: Any = subprocess.PIPE
        l_data: bytes | None = to_connector
        c_data: bytes | None = to_listener
        if mode == "files":  # regular files: sendfile(2) in; the listener writes a file through a pipe
            (tmp_path / "a").write_bytes(to_listener)
            (tmp_path / "b").write_bytes(to_connector)
            c_in = stack.enter_context(open(tmp_path / "a", "rb"))
            l_in = stack.enter_context(open(tmp_path / "b", "rb"))
            l_out = stack.enter_context(open(tmp_path / "out", "wb"))
            l_data = c_data = None
        listener = stack.enter_context(
            conduit(tmp_path, *globals_, "listen", *flags, url, stdin=l_in, stdout=l_out)
        )
        bound = listener.bound_url()
        connector = stack.enter_context(conduit(tmp_path, *globals_, "connect", *flags, bound, stdin=c_in))
        got_l, got_c = together((listener, l_data), (connector, c_data))
        assert connector.wait() == 0, connector.stderr
        assert listener.wait() == 0, listener.stderr
    if mode == "files":
        got_l = (tmp_path / "out").read_bytes()
    assert sha(got_l) == sha(to_listener)
    assert sha(got_c) == sha(to_connector)
    if mode == "traced":
        assert "connection requested" in connector.stderr
        assert re.search(r"read \d+ bytes from conn #\d+", listener.stderr)
    else:
        assert connector.stderr == ""


@pytest.mark.parametrize("transport", STREAMS)
def test_half_close_connect_side(tmp_path: Path, sock_dir: Path, transport: str) -> None:
    """connect's stdin EOF reaches the peer as EOF; the peer can still answer."""
    question, answer = b"question?" * 1000, b"the answer" * 1000
    if transport == "tcp":
        server = socket.create_server(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(sock_dir / "hc.sock"))
        server.listen()
        url = f"unix://{sock_dir}/hc.sock"
    server.settimeout(DEADLINE)
    try:
        with conduit(tmp_path, "connect", url) as connector:
            conn, _ = server.accept()
            with conn:
                connector.popen.stdin.write(question)  # type: ignore[union-attr]
                connector.popen.stdin.close()  # type: ignore[union-attr]
                got = b""
                while chunk := conn.recv(65536):  # ends only on the connector's EOF
                    got += chunk
                assert got == question
                time.sleep(0.2)
                assert connector.popen.poll() is None, "connect ended before the answer"
                conn.sendall(answer)
                conn.shutdown(socket.SHUT_WR)
                out = connector.popen.stdout.read()  # type: ignore[union-attr]
            assert out == answer
            assert connector.wait() == 0, connector.stderr
    finally:
        server.close()


@pytest.mark.parametrize("transport", STREAMS)
def test_half_close_listen_side(tmp_path: Path, sock_dir: Path, transport: str) -> None:
    """The client's EOF does not end ``conduit listen``: it answers from stdin afterwards."""
    with conduit(tmp_path, "listen", listen_url(transport, sock_dir)) as listener:
        bound = listener.bound_url()
        family, addr = (
            (socket.AF_INET, ("127.0.0.1", int(bound.rsplit(":", 1)[1])))
            if transport == "tcp"
            else (socket.AF_UNIX, bound.removeprefix("unix://"))
        )
        with socket.socket(family) as client:
            client.settimeout(DEADLINE)
            client.connect(addr)
            client.sendall(b"hello listener")
            client.shutdown(socket.SHUT_WR)
            assert listener.popen.stdout.read(14) == b"hello listener"  # type: ignore[union-attr]
            time.sleep(0.2)
            assert listener.popen.poll() is None, "listen ended on the client's EOF"
            listener.popen.stdin.write(b"late answer")  # type: ignore[union-attr]
            listener.popen.stdin.close()  # type: ignore[union-attr]
            got = b""
            while chunk := client.recv(65536):
                got += chunk
        assert got == b"late answer"
        assert listener.wait() == 0, listener.stderr
        assert listener.popen.stdout.read() == b""  # type: ignore[union-attr]


# ---------------------------------------------------------------------------
# connect <-> listen: datagrams
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_datagram_lines_both_directions(tmp_path: Path, sock_dir: Path, transport: str) -> None:
    to_listener, to_connector = random_lines(150), random_lines(150)
    with conduit(tmp_path, "listen", "--lines", listen_url(transport, sock_dir)) as listener:
        bound = listener.bound_url()
        with conduit(tmp_path, "connect", "--lines", bound) as connector:
            got_l, got_c = together((listener, to_connector), (connector, to_listener))
            assert connector.wait() == 0, connector.stderr
            assert listener.wait() == 0, listener.stderr
    assert got_l == to_listener
    assert got_c == to_connector


@pytest.mark.parametrize("transport", DATAGRAMS)
def test_datagram_one_read_is_one_datagram(tmp_path: Path, sock_dir: Path, transport: str) -> None:
    """A 60000-byte binary file read at once is one datagram, delivered byte for byte."""
    payload = os.urandom(60000)
    (tmp_path / "dgram").write_bytes(payload)
    with conduit(
        tmp_path, "listen", "--linger", "0.3", listen_url(transport, sock_dir), stdin=subprocess.DEVNULL
    ) as listener:
        bound = listener.bound_url()
        with open(tmp_path / "dgram", "rb") as f:
            sent = run_conduit("connect", "--linger", "0.2", bound, stdin=f)
        assert sent.returncode == 0, sent.stderr
        assert listener.communicate() == payload
        assert listener.wait() == 0


def test_datagram_lines_adds_missing_newline(tmp_path: Path) -> None:
    with conduit(
        tmp_path, "listen", "--lines", "--linger", "0.3", "udp://127.0.0.1:0", stdin=subprocess.DEVNULL
    ) as listener:
        bound = listener.bound_url()
        sent = run_conduit("connect", "--linger", "0", bound, input=b"no newline here")
        assert sent.returncode == 0, sent.stderr
        assert listener.communicate() == b"no newline here\n"


# ---------------------------------------------------------------------------
# --keep-open, --echo, --max-conns
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", [*STREAMS, "udp"])
def test_keep_open_echo_serves_clients_concurrently(tmp_path: Path, sock_dir: Path, transport: str) -> None:
    datagram = transport == "udp"
    payloads = [random_lines(25) if datagram else os.urandom(512 << 10) for _ in range(6)]
    with conduit(tmp_path, "listen", "--keep-open", "--echo", listen_url(transport, sock_dir)) as server:
        bound = server.bound_url()
        clients = [
            Proc([*CONDUIT, "connect", *(["--lines"] if datagram else []), bound], tmp_path) for _ in payloads
        ]
        try:
            outputs = together(*zip(clients, payloads, strict=True))
            codes = [c.wait() for c in clients]
        finally:
            for c in clients:
                c.close()
        assert codes == [0] * len(payloads), [c.stderr for c in clients]
        assert [sha(o) for o in outputs] == [sha(p) for p in payloads]
        assert server.popen.poll() is None, "--keep-open must outlive its clients"


def test_keep_open_collects_output_and_broadcasts_stdin(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "-k", "tcp://127.0.0.1:0") as server:
        port = int(server.bound_url().rsplit(":", 1)[1])
        a = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        b = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        with a, b:
            a.sendall(b"from-a\n")
            b.sendall(b"from-b\n")
            seen = b""
            while b"from-a\n" not in seen or b"from-b\n" not in seen:
                chunk = server.popen.stdout.read1(4096)  # type: ignore[union-attr]
                assert chunk, server.stderr
                seen += chunk
            server.popen.stdin.write(b"to everyone\n")  # type: ignore[union-attr]
            server.popen.stdin.flush()  # type: ignore[union-attr]
            for client in (a, b):
                got = b""
                while len(got) < 12:
                    got += client.recv(100)
                assert got == b"to everyone\n"
        server.popen.send_signal(signal.SIGTERM)  # listen drains on SIGTERM (no client left), then exits 0
        assert server.wait() == 0


def test_max_conns_makes_the_next_client_wait(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "-k", "--echo", "--max-conns", "1", "tcp://127.0.0.1:0") as server:
        port = int(server.bound_url().rsplit(":", 1)[1])
        first = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        first.sendall(b"a")
        assert first.recv(10) == b"a"
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as second:
            second.sendall(b"b")
            second.settimeout(0.7)
            with pytest.raises(TimeoutError):
                second.recv(10)  # the only slot is taken
            first.close()
            second.settimeout(DEADLINE)
            assert second.recv(10) == b"b"


# ---------------------------------------------------------------------------
# the bound address line
# ---------------------------------------------------------------------------


def test_port_zero_prints_the_bound_address(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "tcp://127.0.0.1:0", stdin=subprocess.DEVNULL) as listener:
        url = listener.bound_url()
        found = re.fullmatch(r"tcp://127\.0\.0\.1:(\d+)", url)
        assert found, url
        port = int(found.group(1))
        assert port != 0
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as c:
            c.sendall(b"x")
        assert listener.communicate() == b"x"
        assert listener.wait() == 0


@pytest.mark.parametrize("verbose", [False, True])
def test_fixed_port_prints_the_address_only_when_verbose(tmp_path: Path, verbose: bool) -> None:
    port = free_tcp_port()
    args = ["-v"] if verbose else []
    with conduit(tmp_path, *args, "listen", f"tcp://127.0.0.1:{port}", stdin=subprocess.DEVNULL) as listener:
        end = time.monotonic() + DEADLINE
        while True:  # connect when it listens
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < end, listener.stderr
                assert listener.popen.poll() is None, listener.stderr
                time.sleep(0.05)
        with c:
            c.sendall(b"y")
        assert listener.communicate() == b"y"
        assert listener.wait() == 0
        printed = LISTENING.search(listener.stderr)
        if verbose:
            assert printed is not None
            assert printed.group(1) == f"tcp://127.0.0.1:{port}"
        else:
            assert printed is None
            assert listener.stderr == ""


# ---------------------------------------------------------------------------
# failures
# ---------------------------------------------------------------------------


def test_refused_tcp_is_one_line_and_status_1() -> None:
    result = run_conduit("connect", f"tcp://127.0.0.1:{free_tcp_port()}")
    assert result.returncode == 1
    line = one_line_error(result.stderr)
    assert "refused" in line.lower()
    assert line.endswith("[ECONNREFUSED]")
    assert result.stdout == b""


def test_refused_unix_is_one_line_and_status_1(sock_dir: Path) -> None:
    result = run_conduit("connect", f"unix://{sock_dir}/nobody.sock")
    assert result.returncode == 1
    assert "no socket at" in one_line_error(result.stderr)


def test_refused_udp_reported_on_receive() -> None:
    result = run_conduit("connect", f"udp://127.0.0.1:{free_udp_port()}", input=b"anyone?\n")
    assert result.returncode == 1
    assert "refused" in one_line_error(result.stderr).lower()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["tcp://127.0.0.1"], "missing port"),
        (["tcp://127.0.0.1:99999"], "out of range"),
        (["tcp://127.0.0.1:0"], "port 0"),
        (["nope://host:1"], "unknown scheme 'nope'"),
        (["127.0.0.1:80"], "no scheme"),
        (["tcp://[::1:80"], "']'"),
        (["unix://relative/path"], "absolute path"),
        (["tcp://127.0.0.1:1?nodelay=maybe"], "bad value for option 'nodelay'"),
        (["-o", "bogus=1", "tcp://127.0.0.1:1"], "unknown option 'bogus'"),
        (["-o", "nodelay=perhaps", "tcp://127.0.0.1:1"], "bad value for option 'nodelay'"),
    ],
)
def test_malformed_url_is_a_usage_error(args: list[str], expected: str) -> None:
    result = run_conduit("connect", *args)
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert expected in line


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["connect"],
        ["connect", "-o", "novalue", "tcp://127.0.0.1:1"],
        ["connect", "--timeout", "0", "tcp://127.0.0.1:1"],
        ["listen", "--max-conns", "2", "tcp://127.0.0.1:0"],
        ["listen", "-k", "--max-conns", "0", "tcp://127.0.0.1:0"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run_conduit(*args)
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    assert result.stderr.strip()
    one_line_error(result.stderr)  # one line, not argparse's usage block


def test_listen_on_a_taken_port_fails_with_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        result = run_conduit("listen", f"tcp://127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode == 1
    assert "EADDRINUSE" in one_line_error(result.stderr)


@pytest.mark.parametrize("flags", [[], ["--no-splice"]])
def test_stdout_closed_early_exits_quietly(tmp_path: Path, flags: list[str]) -> None:
    """``conduit connect ... | head``: endless input, stdout closed after 1 MiB: exit 0, nothing said."""
    with conduit(tmp_path, "listen", "-k", "--echo", "tcp://127.0.0.1:0") as server:
        bound = server.bound_url()
        with (
            open("/dev/zero", "rb") as zero,
            conduit(tmp_path, "connect", *flags, bound, stdin=zero) as client,
        ):
            assert client.popen.stdout.read(1 << 20) == b"\0" * (1 << 20)  # type: ignore[union-attr]
            client.popen.stdout.close()  # type: ignore[union-attr]
            assert client.wait() == 0
            assert client.stderr == ""


# SIGTERM drains (tests/test_cli_serving.py) and exits 0; SIGHUP and SIGINT are immediate, 128 + N.
@pytest.mark.parametrize(
    ("signum", "status"), [(signal.SIGTERM, 0), (signal.SIGHUP, 129), (signal.SIGINT, 130)]
)
def test_signal_closes_cleanly_and_removes_the_socket_file(
    tmp_path: Path, sock_dir: Path, signum: int, status: int
) -> None:
    path = sock_dir / "sig.sock"
    with conduit(tmp_path, "listen", "-k", "--echo", f"unix://{path}") as server:
        server.bound_url()
        assert path.is_socket()
        server.popen.send_signal(signum)
        assert server.wait() == status
        assert server.stderr.count("\n") == 1  # the listening line, nothing more
    assert not path.exists()


def test_local_address_is_bound(tmp_path: Path) -> None:
    local_port = free_tcp_port()
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(DEADLINE)
        url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        with conduit(tmp_path, "connect", "--local", f"127.0.0.1:{local_port}", url) as client:
            conn, peer = server.accept()
            with conn:
                assert peer[1] == local_port
                conn.sendall(b"hi")
                conn.shutdown(socket.SHUT_WR)
                assert client.communicate(b"") == b"hi"
            assert client.wait() == 0


def test_closed_stdin_reads_as_empty(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "tcp://127.0.0.1:0", stdin=subprocess.DEVNULL) as listener:
        bound = listener.bound_url()
        result = subprocess.run(
            ["sh", "-c", 'exec 0<&-; exec "$@"', "sh", *CONDUIT, "connect", bound],
            capture_output=True,
            timeout=DEADLINE,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert listener.communicate() == b""
        assert listener.wait() == 0


def test_terminal_stdio_stays_blocking(tmp_path: Path) -> None:
    """On a terminal: a typed line goes out, the reply shows, ^D is the end of input.

    The terminal's open file description is shared with the shell: it must not be
    left (or even made) non-blocking.
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(DEADLINE)
        url = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        controller, terminal = pty.openpty()
        try:
            with conduit(tmp_path, "connect", url, stdin=terminal, stdout=terminal) as client:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(DEADLINE)
                    os.write(controller, b"typed line\n")
                    assert conn.recv(100) == b"typed line\n"
                    conn.sendall(b"reply\n")
                    shown = b""
                    while b"reply" not in shown:
                        ready, _, _ = select.select([controller], [], [], DEADLINE)
                        assert ready, shown
                        shown += os.read(controller, 1000)
                    assert os.get_blocking(terminal)
                    os.write(controller, b"\x04")  # ^D
                    assert conn.recv(100) == b""  # our end of input became the peer's EOF
                assert client.wait() == 0, client.stderr
            assert os.get_blocking(terminal)
        finally:
            os.close(controller)
            os.close(terminal)


# ---------------------------------------------------------------------------
# in process
# ---------------------------------------------------------------------------


def test_options_go_into_the_query_string() -> None:
    assert with_options("tcp://h:1", []) == "tcp://h:1"
    assert with_options("tcp://h:1", [("nodelay", "0")]) == "tcp://h:1?nodelay=0"
    assert with_options("tcp://h:1?nodelay=1&keepalive=1", [("nodelay", "0")]) == (
        "tcp://h:1?keepalive=1&nodelay=0"
    )
    assert with_options("unix:///tmp/a b", [("x", "a&b")]) == "unix:///tmp/a b?x=a%26b"


def test_main_returns_status_instead_of_exiting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "trio-conduit" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["connect"]) == 2


async def test_zero_copy_only_for_plain_kernel_streams() -> None:
    """splice/sendfile bypass the connection object: never for a subclass (it may transform bytes)."""

    class Transforming(SocketStream):
        pass

    a, b = trio.socket.socketpair()
    plain = HalfCloseableSocketStream(a, 1, transport="unix", tracer=Tracer())
    other = Transforming(b, 2, transport="rot13+unix", tracer=Tracer())
    try:
        assert kernel_socket(plain, zero_copy=True) is a
        assert kernel_socket(plain, zero_copy=False) is None
        assert kernel_socket(other, zero_copy=True) is None
        trace = logging.getLogger("trio_conduit")
        level = trace.level
        trace.setLevel(DEBUG_ALL)  # -vvv traces every read and write: bytes must go through the object
        try:
            assert kernel_socket(plain, zero_copy=True) is None
        finally:
            trace.setLevel(level)
    finally:
        await plain.aclose()
        await other.aclose()


def test_bench_subcommand_is_wired() -> None:
    if importlib.util.find_spec("trio_conduit.bench") is None:
        result = run_conduit("bench")
        assert result.returncode == 1
        assert "trio_conduit.bench" in one_line_error(result.stderr)
    else:
        result = run_conduit("bench", "--help")
        assert result.returncode == 0
        assert b"usage: conduit bench" in result.stdout
