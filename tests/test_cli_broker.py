"""``conduit listen --broker`` and ``--chat``.

ncat clients over tcp, unix and tls (``ncat --ssl`` against a
:class:`TestPKI` certificate): what one sends reaches the others exactly and
not itself; chat lines tagged, escaped, with join and leave notices; a client
that does not read is dropped with one log line while the others get every
byte; usage errors. The chat line framing is property-tested.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_conduit.cli._broker import ChatLines, escape
from trio_conduit.testing import TestPKI

from .interop.test_cli_peers import ncat, read_exactly, write  # noqa: F401 - a fixture
from .test_cli import DEADLINE, Proc, conduit, one_line_error, run_conduit, spawn

TRANSPORTS = ["tcp", "unix", "tls"]


@contextmanager
def hub(tmp_path: Path, sock_dir: Path, transport: str, *flags: str) -> Iterator[tuple[Proc, list[str]]]:
    """``conduit -v listen FLAGS URL`` and the ncat arguments that reach it."""
    if transport == "tcp":
        url = "tcp://127.0.0.1:0"
    elif transport == "unix":
        url = f"unix://{sock_dir}/hub.sock"
    else:
        url = TestPKI(tmp_path).server_url()
    with conduit(tmp_path, "-v", "listen", *flags, url, stdin=subprocess.DEVNULL) as server:
        bound = server.bound_url()
        if transport == "unix":
            target = ["-U", bound[len("unix://") :]]
        else:
            target = ["127.0.0.1", bound.split("?")[0].rsplit(":", 1)[1]]
        if transport == "tls":
            target = ["--ssl", *target]
        yield server, target


def rest(proc: Proc) -> bytes:
    """The rest of a client's output once it has exited (its stdin already closed)."""
    assert proc.popen.stdout is not None
    out = proc.popen.stdout.read()
    assert proc.wait() == 0, proc.stderr
    return out


def exchange(sender: Proc, receivers: list[Proc], data: bytes, piece: int) -> None:
    """``data`` from ``sender`` reaches every receiver, exactly (``piece`` bytes at a time)."""
    for start in range(0, len(data), piece):
        chunk = data[start : start + piece]
        write(sender.popen.stdin, chunk)
        for receiver in receivers:
            assert read_exactly(receiver.popen.stdout, len(chunk)) == chunk


def joined(server: Proc, count: int) -> None:
    server.wait_stderr(re.compile(rf"joined \({count} clients\)"))


@pytest.mark.interop
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_broker_with_ncat_clients(
    tmp_path: Path,
    sock_dir: Path,
    ncat: str,  # noqa: F811
    transport: str,
) -> None:
    first, second = os.urandom(256 << 10), os.urandom(128 << 10)
    # ncat 7.93 --ssl reads 8 KiB per wake-up and does not look at what OpenSSL holds
    # (SSL_pending): the second half of a full 16 KiB TLS record waits for more data. So
    # over TLS the bytes go in pieces small enough to travel in records ncat reads whole.
    piece = 4096 if transport == "tls" else len(first)
    with hub(tmp_path, sock_dir, transport, "--broker") as (server, target), ExitStack() as stack:
        a, b, c = (stack.enter_context(spawn([ncat, *target], tmp_path)) for _ in range(3))
        joined(server, 3)
        exchange(a, [b, c], first, piece)
        exchange(b, [c, a], second, piece)  # a gets b's bytes, and never its own back
        for proc in (a, b, c):
            write(proc.popen.stdin, b"", close=True)  # a client's end is its leave
        outs = [rest(proc) for proc in (a, b, c)]
        assert outs == [b"", b"", b""]
    assert "Traceback" not in server.stderr


@pytest.mark.interop
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_chat_with_ncat_clients(
    tmp_path: Path,
    sock_dir: Path,
    ncat: str,  # noqa: F811
    transport: str,
) -> None:
    with hub(tmp_path, sock_dir, transport, "--chat") as (server, target), ExitStack() as stack:
        alice = stack.enter_context(spawn([ncat, *target], tmp_path))
        joined(server, 1)
        hello = alice.popen.stdout.readline()  # type: ignore[union-attr]
        me = re.fullmatch(rb"<announce> \S+ is connected as <(user\d+)>\.\n", hello)
        assert me, hello
        assert alice.popen.stdout.readline() == b"<announce> already connected: nobody.\n"  # type: ignore[union-attr]
        bob = stack.enter_context(spawn([ncat, *target], tmp_path))
        joined(server, 2)
        bob_joins = alice.popen.stdout.readline()  # type: ignore[union-attr]
        bob_name = re.fullmatch(rb"<announce> \S+ is connected as <(user\d+)>\.\n", bob_joins)
        assert bob_name, bob_joins
        assert bob.popen.stdout.readline() == bob_joins  # type: ignore[union-attr]
        listed = bob.popen.stdout.readline()  # type: ignore[union-attr]
        assert re.fullmatch(rb"<announce> already connected: \S+ as <%s>\.\n" % me.group(1), listed), listed

        write(alice.popen.stdin, b"hi bob\x1b[2J\r\nsecond ")
        write(alice.popen.stdin, b"half\n")
        tag = b"<" + me.group(1) + b"> "
        want = tag + b"hi bob\\033[2J\n" + tag + b"second half\n"
        assert read_exactly(bob.popen.stdout, len(want)) == want
        write(bob.popen.stdin, b"bye\n")
        back = b"<" + bob_name.group(1) + b"> bye\n"
        assert read_exactly(alice.popen.stdout, len(back)) == back  # alice never got her own lines
        write(alice.popen.stdin, b"", close=True)
        gone = b"<announce> <" + me.group(1) + b"> is disconnected.\n"
        assert read_exactly(bob.popen.stdout, len(gone)) == gone
        write(bob.popen.stdin, b"", close=True)
        assert rest(alice) == b""
    assert "Traceback" not in server.stderr


def test_a_client_that_does_not_read_is_dropped_and_the_others_get_everything(
    tmp_path: Path, sock_dir: Path
) -> None:
    payload = os.urandom(24 << 20)  # well past the 4 MiB outbox and the kernel's buffers
    with hub(tmp_path, sock_dir, "tcp", "--broker") as (server, target):
        address = (target[0], int(target[1]))
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(address)
        with (
            stalled,
            socket.create_connection(address) as reader,
            socket.create_connection(address) as writer,
        ):
            joined(server, 3)
            reader.settimeout(DEADLINE)
            digest = hashlib.sha256()
            got = 0

            def read_all() -> None:
                nonlocal got
                while got < len(payload):
                    chunk = reader.recv(1 << 20)
                    if not chunk:
                        return
                    digest.update(chunk)
                    got += len(chunk)

            thread = threading.Thread(target=read_all)
            thread.start()
            writer.sendall(payload)
            thread.join(DEADLINE)
            assert got == len(payload)
            assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
            server.wait_stderr(re.compile(r"dropped from the broker"))
            # The stalled client's connection was closed: reading drains what was buffered, then ends.
            stalled.settimeout(DEADLINE)
            while True:
                try:
                    if not stalled.recv(1 << 20):
                        break
                except ConnectionResetError:
                    break
    assert len(re.findall("dropped from the broker", server.stderr)) == 1
    assert "Traceback" not in server.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["listen", "--broker", "udp://127.0.0.1:0"], "need a stream transport, not udp://"),
        (["listen", "--chat", "unix+dgram:///tmp/x.sock"], "need a stream transport"),
        (["listen", "--chat", "--workers", "2", "tcp://127.0.0.1:0"], "cannot be split across --workers"),
        (["listen", "--broker", "--echo", "tcp://127.0.0.1:0"], "cannot be used together"),
    ],
)
def test_usage_errors(args: list[str], message: str) -> None:
    result = run_conduit(*args)
    assert result.returncode == 2
    assert message in one_line_error(result.stderr)


def test_broker_takes_max_conns_without_keep_open(tmp_path: Path) -> None:
    with conduit(tmp_path, "listen", "--broker", "--max-conns", "1", "tcp://127.0.0.1:0") as server:
        assert server.bound_url().startswith("tcp://")
        assert server.popen.poll() is None


# ---------------------------------------------------------------------------
# chat lines, no I/O
# ---------------------------------------------------------------------------


def test_escape_keeps_text_and_escapes_controls() -> None:
    assert escape(b"plain text\twith tab") == b"plain text\twith tab"
    assert escape("caf\u00e9 \u65e5\u672c".encode()) == "caf\u00e9 \u65e5\u672c".encode()
    assert escape(b"\x1b[31mred\x07\x7f\r") == b"\\033[31mred\\007\\177\\015"
    assert escape(b"bad \xff utf-8") == b"bad \\377 utf-8"
    assert escape("\u202eevil".encode()) == b"\\342\\200\\256evil"  # a bidi override: Cf
    assert escape("\u009b2J".encode()) == b"\\302\\2332J"  # C1 CSI


def test_chat_lines_tag_whole_lines() -> None:
    lines = ChatLines("user7", limit=8)
    assert lines.feed(b"hel") == b""
    assert lines.feed(b"lo\r\nwor") == b"<user7> hello\n"
    assert lines.feed(b"ld and more") == b"<user7> world an\n"  # 8 bytes waited: sent as they are
    assert lines.flush() == b"<user7> d more\n"
    assert lines.flush() == b""


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_chat_lines_do_not_depend_on_how_bytes_arrive(chunks: list[bytes]) -> None:
    whole = ChatLines("u1", limit=1 << 20)
    pieces = ChatLines("u1", limit=1 << 20)
    data = b"".join(chunks)
    assert whole.feed(data) + whole.flush() == b"".join(pieces.feed(c) for c in chunks) + pieces.flush()


@given(st.binary(max_size=200))
def test_chat_output_has_no_control_characters(data: bytes) -> None:
    lines = ChatLines("u2", limit=64)
    out = lines.feed(data) + lines.flush()
    for line in out.split(b"\n")[:-1]:
        assert line.startswith(b"<u2> ")
        text = line.decode("utf-8")  # always valid UTF-8
        assert all(c == "\t" or (c >= " " and c != "\x7f") for c in text)
        assert not any(0x80 <= ord(c) <= 0x9F or c in "\u202a\u202b\u202c\u202d\u202e" for c in text)
    assert out == b"" or out.endswith(b"\n")


@pytest.mark.parametrize(
    ("flag", "want"), [("--broker", b"to all\nlast"), ("--chat", b"<conduit> to all\n<conduit> last\n")]
)
def test_standard_input_goes_to_every_client(tmp_path: Path, flag: str, want: bytes) -> None:
    with conduit(tmp_path, "-v", "listen", flag, "tcp://127.0.0.1:0", stdin=subprocess.PIPE) as server:
        port = int(server.bound_url().rsplit(":", 1)[1])
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            joined(server, 2)
            write(server.popen.stdin, b"to all\nlast", close=True)
            for client in clients:
                client.settimeout(DEADLINE)
                got = b""
                while not got.endswith(want):
                    chunk = client.recv(4096)
                    assert chunk, got
                    got += chunk
                assert got.endswith(want)
                assert b"to all" not in got[: -len(want)]  # once, not twice
        finally:
            for client in clients:
                client.close()
