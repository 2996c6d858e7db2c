"""The Python API against real peers: ncat and socat, as listeners and as clients.

``pool.connect`` to ``ncat -l`` / ``socat ...-LISTEN`` (tcp, udp, unix stream,
unix datagram), and ``pool.serve`` accepting from ``ncat`` / ``socat`` clients.
Data goes both ways and its content is checked. Peers talk over stdin/stdout
pipes; every process is killed (and reaped) in ``finally``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit

from ..conftest import free_tcp_port, free_udp_port

pytestmark = pytest.mark.interop

NCAT = shutil.which("ncat")
SOCAT = shutil.which("socat")
needs_ncat = pytest.mark.skipif(
    NCAT is None, reason="ncat not installed: run the nox tests session, which installs it"
)
needs_socat = pytest.mark.skipif(
    SOCAT is None, reason="socat not installed: run the nox tests session, which installs it"
)
TRANSPORTS = ["tcp", "udp", "unix", "unix+dgram"]
DATAGRAM = {"udp", "unix+dgram"}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@asynccontextmanager
async def peer_process(argv: list[str]) -> AsyncIterator[trio.Process]:
    """Start ``argv`` with piped stdio; kill and reap it on the way out, whatever happens."""
    proc = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Read ``size`` bytes from ``stream`` (fewer only if it ends first)."""
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def read_to_end(stream: Any) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some():
        data += chunk
    return bytes(data)


def _proc_net_has(proto: str, port: int, *, listening: bool) -> bool:
    for name in (proto, proto + "6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and (not listening or fields[3] == "0A"):
                return True
    return False


def _unix_bound(path: str, *, listening: bool) -> bool:
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path and (not listening or fields[3] == "00010000"):
            return True
    return False


async def wait_ready(transport: str, port: int, path: str, proc: trio.Process) -> None:
    """Wait (polling the kernel's tables) until a peer listener is bound and listening."""
    checks: dict[str, Callable[[], bool]] = {
        "tcp": lambda: _proc_net_has("tcp", port, listening=True),
        "udp": lambda: _proc_net_has("udp", port, listening=False),
        "unix": lambda: _unix_bound(path, listening=True),
        "unix+dgram": lambda: _unix_bound(path, listening=False),
    }
    with trio.fail_after(10):
        while not checks[transport]():
            assert proc.returncode is None, f"{proc.args!r} exited early ({proc.returncode})"
            await trio.sleep(0.01)


def url_for(transport: str, port: int, path: str) -> str:
    if transport in ("tcp", "udp"):
        return f"{transport}://127.0.0.1:{port}"
    return f"{transport}://{path}"


def listener_argv(tool: str, transport: str, port: int, path: str) -> list[str]:
    if tool == "ncat":
        assert NCAT is not None
        return {
            "tcp": [NCAT, "-l", "127.0.0.1", str(port)],
            "udp": [NCAT, "-l", "-u", "127.0.0.1", str(port)],
            "unix": [NCAT, "-l", "-U", path],
            "unix+dgram": [NCAT, "-l", "-U", "--udp", path],
        }[transport]
    assert SOCAT is not None
    return {
        "tcp": [SOCAT, f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "STDIO"],
        "udp": [SOCAT, f"UDP-LISTEN:{port},bind=127.0.0.1,reuseaddr", "STDIO"],
        "unix": [SOCAT, f"UNIX-LISTEN:{path}", "STDIO"],
        "unix+dgram": [SOCAT, f"UNIX-RECVFROM:{path}", "STDIO"],
    }[transport]


def client_argv(tool: str, transport: str, port: int, path: str, client_path: str) -> list[str]:
    if tool == "ncat":
        assert NCAT is not None
        return {
            "tcp": [NCAT, "127.0.0.1", str(port)],
            "udp": [NCAT, "-u", "127.0.0.1", str(port)],
            "unix": [NCAT, "-U", path],
            "unix+dgram": [NCAT, "-U", "--udp", path],
        }[transport]
    assert SOCAT is not None
    return {
        "tcp": [SOCAT, "-t", "5", "-", f"TCP:127.0.0.1:{port}"],
        "udp": [SOCAT, "-", f"UDP:127.0.0.1:{port}"],
        "unix": [SOCAT, "-t", "5", "-", f"UNIX-CONNECT:{path}"],
        "unix+dgram": [SOCAT, "-", f"UNIX-SENDTO:{path},bind={client_path}"],
    }[transport]


def tool_param(tool: str) -> Any:
    return pytest.param(tool, marks=needs_ncat if tool == "ncat" else needs_socat, id=tool)


TOOLS = [tool_param("ncat"), tool_param("socat")]


@pytest.fixture
def endpoints(sock_dir: Path) -> dict[str, Any]:
    return {
        "tcp_port": free_tcp_port(),
        "udp_port": free_udp_port(),
        "path": str(sock_dir / "peer.sock"),
        "client_path": str(sock_dir / "client.sock"),
    }


def _port(transport: str, endpoints: dict[str, Any]) -> int:
    return int(endpoints["udp_port"] if transport == "udp" else endpoints["tcp_port"])


# ---------------------------------------------------------------------------
# pool.connect to a peer's listener
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("tool", TOOLS)
async def test_connect_to_peer_listener(tool: str, transport: str, endpoints: dict[str, Any]) -> None:
    port, path = _port(transport, endpoints), endpoints["path"]
    async with peer_process(listener_argv(tool, transport, port, path)) as proc:
        assert proc.stdin is not None
        assert proc.stdout is not None
        await wait_ready(transport, port, path, proc)
        with trio.fail_after(20):
            async with conduit.open_pool() as pool:
                conn = await pool.connect(url_for(transport, port, path))
                assert conn.info.transport == transport
                if transport in DATAGRAM:
                    # socat's UNIX-RECVFROM answers one datagram; the others take many.
                    rounds = 1 if (tool, transport) == ("socat", "unix+dgram") else 3
                    for i in range(rounds):
                        out, back = b"datagram %d from conduit\n" % i, b"datagram %d from the peer\n" % i
                        await conn.send(out)
                        assert await read_exactly(proc.stdout, len(out)) == out
                        await proc.stdin.send_all(back)
                        assert await conn.receive() == back
                    await conn.aclose()
                    # ncat's datagram listeners run until killed (in peer_process).
                else:
                    await _stream_both_ways(conn, proc)
                    await conn.aclose()
                    assert await proc.wait() == 0, (await read_to_end(proc.stderr)).decode()


async def _stream_both_ways(conn: Any, proc: trio.Process) -> None:
    """1 MiB each way at once, checked by SHA-256; then both sides end cleanly.

    The peer half-closes first (its stdin ends); we half-close once we have read
    everything, since ``ncat -l`` exits as soon as its socket reads EOF.
    """
    assert proc.stdin is not None
    assert proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    to_peer, to_us = os.urandom(1 << 20), os.urandom(1 << 20)
    got: dict[str, bytes] = {}
    read_all = trio.Event()

    async def conduit_sends() -> None:
        await conn.send_all(to_peer)
        await read_all.wait()
        await conn.send_eof()

    async def peer_sends() -> None:
        await stdin.send_all(to_us)
        await stdin.aclose()

    async def peer_reads() -> None:
        got["peer"] = await read_to_end(stdout)

    async def conduit_reads() -> None:
        got["conduit"] = await read_to_end(conn)
        read_all.set()

    async with trio.open_nursery() as nursery:
        for task in (conduit_sends, peer_sends, peer_reads, conduit_reads):
            nursery.start_soon(task)
    assert hashlib.sha256(got["peer"]).hexdigest() == hashlib.sha256(to_peer).hexdigest()
    assert hashlib.sha256(got["conduit"]).hexdigest() == hashlib.sha256(to_us).hexdigest()


# ---------------------------------------------------------------------------
# pool.serve accepting a peer client
# ---------------------------------------------------------------------------


async def stream_handler(conn: Any) -> None:
    """Read to the end, answer with a digest and the data reversed, close."""
    data = await read_to_end(conn)
    await conn.send_all(hashlib.sha256(data).hexdigest().encode() + b"\n" + data[::-1])


async def datagram_handler(ch: Any) -> None:
    async for data in ch:
        await ch.send(b"re: " + data)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("tool", TOOLS)
async def test_serve_accepts_peer_client(tool: str, transport: str, endpoints: dict[str, Any]) -> None:
    path, client_path = endpoints["path"], endpoints["client_path"]
    datagram = transport in DATAGRAM
    handler = datagram_handler if datagram else stream_handler
    with trio.fail_after(20):
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            listen_url = (
                f"{transport}://127.0.0.1:0" if transport in ("tcp", "udp") else f"{transport}://{path}"
            )
            address = await nursery.start(pool.serve, listen_url, handler)
            port = address.port or 0
            argv = client_argv(tool, transport, port, path, client_path)
            if datagram:
                async with peer_process(argv) as proc:
                    assert proc.stdin is not None
                    assert proc.stdout is not None
                    for line in (b"first line\n", b"second line\n"):
                        await proc.stdin.send_all(line)
                        reply = b"re: " + line
                        assert await read_exactly(proc.stdout, len(reply)) == reply
                    await proc.stdin.aclose()
                    assert await proc.wait() == 0
                if transport == "unix+dgram":  # the client cleaned its own path up
                    assert not Path(client_path).exists()
            else:
                data = os.urandom(256 * 1024)
                result = await trio.run_process(argv, stdin=data, capture_stdout=True, capture_stderr=True)
                digest, _, reversed_data = result.stdout.partition(b"\n")
                assert digest.decode() == hashlib.sha256(data).hexdigest()
                assert reversed_data == data[::-1]
            nursery.cancel_scope.cancel()
    if transport.startswith("unix"):
        assert not Path(path).exists()


@needs_ncat
async def test_serve_many_ncat_clients_at_once() -> None:
    """Several ncat clients at the same time, each handled by its own task."""
    assert NCAT is not None
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        address = await nursery.start(pool.serve, "tcp://127.0.0.1:0", stream_handler)
        results: dict[int, bytes] = {}

        async def client(i: int) -> None:
            payload = b"client %d " % i * 1000
            done = await trio.run_process(
                [NCAT, "127.0.0.1", str(address.port)], stdin=payload, capture_stdout=True
            )
            results[i] = done.stdout
            assert done.stdout.partition(b"\n")[2] == payload[::-1]

        with trio.fail_after(20):
            async with trio.open_nursery() as clients:
                for i in range(5):
                    clients.start_soon(client, i)
        assert sorted(results) == list(range(5))
        nursery.cancel_scope.cancel()
