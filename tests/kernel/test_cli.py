"""``conduit connect``/``conduit listen`` over SCTP and vsock, against each other and against socat.

SCTP streams cannot half-close, so after its stdin ends ``conduit`` keeps
reading until the peer closes: in each SCTP scenario one side is the one that
closes (socat once ``head -c N`` has its bytes, or an interrupted ``conduit``).
vsock streams half-close like TCP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, Any

import trio

from ._lane import (
    bounded,
    conduit_command,
    drain,
    needs_sctp,
    needs_socat,
    needs_vsock_loopback,
    read_line_from,
    sha256,
)

DATA = os.urandom(300_000)


@asynccontextmanager
async def running(
    command: Sequence[str], *, stdin: IO[bytes] | int | None = None, stdout: IO[bytes] | int | None = None
) -> AsyncIterator[trio.Process]:
    """Run ``command`` (stderr piped, for readiness lines); kill it if the test ends first."""
    proc = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.DEVNULL if stdin is None else stdin,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    await stream.aclose()


async def listening(proc: trio.Process, seen: bytearray) -> str:
    """Wait for the 'listening on ...' line on stderr; return its last word (conduit: the URL)."""
    assert proc.stderr is not None
    line = await read_line_from(proc.stderr, b"listening on", seen)
    return line.split()[-1].decode()


async def finish(proc: trio.Process, seen: bytearray) -> int:
    """Wait for ``proc``; its stderr (all of it) goes to ``seen``."""
    assert proc.stderr is not None
    await drain(proc.stderr, seen)
    return await proc.wait()


def free_port(family: int, type: int, proto: int, address: Any) -> int:
    with socket.socket(family, type, proto) as sock:
        sock.bind(address)
        port: int = sock.getsockname()[1]
        return port


def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.write_bytes(DATA)
    return path


# ---------------------------------------------------------------------------
# SCTP
# ---------------------------------------------------------------------------


@needs_sctp
@needs_socat
@bounded(120)
async def test_conduit_connect_receives_from_socat_sctp_listen(tmp_path: Path) -> None:
    port = free_port(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP, ("127.0.0.1", 0))
    out = tmp_path / "out"
    socat = ["socat", "-d", "-d", "-u", f"OPEN:{data_file(tmp_path)}", f"SCTP-LISTEN:{port},bind=127.0.0.1"]
    server_err, client_err = bytearray(), bytearray()
    async with running(socat) as server:
        await listening(server, server_err)
        with out.open("wb") as sink:
            async with running(conduit_command("connect", f"sctp://127.0.0.1:{port}"), stdout=sink) as client:
                assert await finish(client, client_err) == 0, client_err
        assert await finish(server, server_err) == 0, server_err
    assert sha256(out.read_bytes()) == sha256(DATA)


@needs_sctp
@needs_socat
@bounded(120)
async def test_conduit_connect_sends_to_socat_sctp_listen(tmp_path: Path) -> None:
    port = free_port(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP, ("127.0.0.1", 0))
    out = tmp_path / "out"
    # socat closes the association once head has its bytes: that ends conduit's reading.
    socat = ["socat", "-d", "-d", f"SCTP-LISTEN:{port},bind=127.0.0.1", f"SYSTEM:head -c {len(DATA)} >{out}"]
    server_err, client_err = bytearray(), bytearray()
    async with running(socat) as server:
        await listening(server, server_err)
        with data_file(tmp_path).open("rb") as source:
            async with running(
                conduit_command("connect", f"sctp://127.0.0.1:{port}"), stdin=source
            ) as client:
                assert await finish(client, client_err) == 0, client_err
        assert await finish(server, server_err) == 0, server_err
    assert sha256(out.read_bytes()) == sha256(DATA)


@needs_sctp
@needs_socat
@bounded(120)
async def test_socat_sctp_connect_to_conduit_listen_ipv6(tmp_path: Path) -> None:
    out = tmp_path / "out"
    server_err, client_err = bytearray(), bytearray()
    with data_file(tmp_path).open("rb") as source:
        async with running(conduit_command("listen", "sctp://[::1]:0"), stdin=source) as server:
            url = await listening(server, server_err)
            assert url.startswith("sctp://[::1]:")
            port = int(url.rsplit(":", 1)[1])
            socat = ["socat", f"SCTP-CONNECT:[::1]:{port}", f"SYSTEM:head -c {len(DATA)} >{out}"]
            async with running(socat) as client:
                assert await finish(client, client_err) == 0, client_err
            assert await finish(server, server_err) == 0, server_err
    assert sha256(out.read_bytes()) == sha256(DATA)


@needs_sctp
@bounded(120)
async def test_conduit_connect_to_conduit_listen_echo_over_sctp(tmp_path: Path) -> None:
    server_err, client_err = bytearray(), bytearray()
    echoed = bytearray()
    async with running(conduit_command("listen", "--echo", "sctp://127.0.0.1:0")) as server:
        url = await listening(server, server_err)
        with data_file(tmp_path).open("rb") as source:
            command = conduit_command("connect", url)
            async with running(command, stdin=source, stdout=subprocess.PIPE) as client:
                assert client.stdout is not None
                while len(echoed) < len(DATA):
                    chunk = await client.stdout.receive_some()
                    assert chunk, f"conduit connect ended early: {bytes(client_err)!r}"
                    echoed += chunk
                # No half-close in SCTP: the client reads until interrupted, like ncat would.
                client.send_signal(signal.SIGINT)
                assert await finish(client, client_err) == 128 + signal.SIGINT, client_err
        assert await finish(server, server_err) == 0, server_err
    assert sha256(bytes(echoed)) == sha256(DATA)


@needs_sctp
@bounded(120)
async def test_conduit_message_mode_over_sctp_keeps_lines_apart() -> None:
    server_err, client_err = bytearray(), bytearray()
    received = bytearray()
    listen = conduit_command("listen", "--lines", "sctp://127.0.0.1:0?mode=message")
    async with running(listen, stdout=subprocess.PIPE) as server:
        url = await listening(server, server_err)
        connect = conduit_command("connect", "--lines", "--linger", "0.5", url)
        async with running(connect, stdin=subprocess.PIPE) as client:
            assert client.stdin is not None
            await client.stdin.send_all(b"one\ntwo\nthree\n")
            await client.stdin.aclose()
            assert await finish(client, client_err) == 0, client_err
        assert server.stdout is not None
        await drain(server.stdout, received)
        status = await finish(server, server_err)
    assert bytes(received) == b"one\ntwo\nthree\n"
    # The association's graceful end is the end of the channel: a normal exit.
    assert status == 0, server_err


# ---------------------------------------------------------------------------
# vsock (CID 1 only)
# ---------------------------------------------------------------------------


@needs_vsock_loopback
@needs_socat
@bounded(120)
async def test_conduit_connect_sends_to_socat_vsock_listen(tmp_path: Path) -> None:
    port = free_port(socket.AF_VSOCK, socket.SOCK_STREAM, 0, (1, socket.VMADDR_PORT_ANY))
    out = tmp_path / "out"
    socat = ["socat", "-d", "-d", "-u", f"VSOCK-LISTEN:{port}", f"CREATE:{out}"]
    server_err, client_err = bytearray(), bytearray()
    async with running(socat) as server:
        await listening(server, server_err)
        with data_file(tmp_path).open("rb") as source:
            async with running(conduit_command("connect", f"vsock://local:{port}"), stdin=source) as client:
                assert await finish(client, client_err) == 0, client_err
        assert await finish(server, server_err) == 0, server_err
    assert sha256(out.read_bytes()) == sha256(DATA)


@needs_vsock_loopback
@needs_socat
@bounded(120)
async def test_socat_vsock_connect_to_conduit_listen(tmp_path: Path) -> None:
    out = tmp_path / "out"
    server_err, client_err = bytearray(), bytearray()
    with out.open("wb") as sink:
        async with running(conduit_command("listen", "vsock://local:0"), stdout=sink) as server:
            url = await listening(server, server_err)
            assert url.startswith("vsock://local:")
            port = int(url.rsplit(":", 1)[1])
            socat = ["socat", "-u", f"OPEN:{data_file(tmp_path)}", f"VSOCK-CONNECT:1:{port}"]
            async with running(socat) as client:
                assert await finish(client, client_err) == 0, client_err
            assert await finish(server, server_err) == 0, server_err
    assert sha256(out.read_bytes()) == sha256(DATA)


@needs_vsock_loopback
@bounded(120)
async def test_conduit_connect_to_conduit_listen_over_vsock_seqpacket() -> None:
    server_err, client_err = bytearray(), bytearray()
    received = bytearray()
    listen = conduit_command("listen", "--echo", "vsock://local:0?mode=message")
    async with running(listen) as server:
        url = await listening(server, server_err)
        connect = conduit_command("connect", "--lines", "--linger", "1", url)
        async with running(connect, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as client:
            assert client.stdin is not None
            assert client.stdout is not None
            await client.stdin.send_all(b"alpha\nbeta\n")
            await client.stdin.aclose()
            await drain(client.stdout, received)
            assert await finish(client, client_err) == 0, client_err
        status = await finish(server, server_err)
    assert bytes(received) == b"alpha\nbeta\n"
    assert status == 0, server_err
