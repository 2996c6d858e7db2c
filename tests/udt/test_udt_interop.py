"""Interop with the reference UDT library (Debian's libudt 4.11) through a small C++ peer.

Both directions, stream and message mode, 64 MiB each checked by SHA-256;
rendezvous between ours and libudt; rejections both ways. The peer
(``peer/udtpeer.cpp``) is built with g++ against libudt-dev; without them
these tests skip, naming the nox session that installs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import struct
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_conduit as conduit

from .peer import build_udtpeer, udtpeer_skip_reason

pytestmark = pytest.mark.interop

SIZE = 64 * 1024 * 1024


@pytest.fixture(scope="session")
def udtpeer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = udtpeer_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return build_udtpeer()


class Peer:
    """A running udtpeer: its stderr lines, stdout, and exit."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self._err = bytearray()

    async def line(self) -> str:
        """The next stderr line ("listening PORT", "connected", the JSON report)."""
        assert self.proc.stderr is not None
        while b"\n" not in self._err:
            chunk = await self.proc.stderr.receive_some()
            if not chunk:
                raise AssertionError(f"udtpeer ended early; stderr: {bytes(self._err)!r}")
            self._err += chunk
        line, _, rest = bytes(self._err).partition(b"\n")
        self._err[:] = rest
        return line.decode()

    async def rest_of_stderr(self) -> str:
        assert self.proc.stderr is not None
        while chunk := await self.proc.stderr.receive_some():
            self._err += chunk
        return self._err.decode()

    async def report(self) -> dict[str, Any]:
        text = await self.rest_of_stderr()
        lines = [ln for ln in text.splitlines() if ln.startswith("{")]
        assert lines, text
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    async def feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        view = memoryview(data)
        for off in range(0, len(view), 1 << 20):
            await self.proc.stdin.send_all(view[off : off + (1 << 20)])
        await self.proc.stdin.aclose()

    async def stdout_into(self, sink: Any) -> int:
        assert self.proc.stdout is not None
        total = 0
        while chunk := await self.proc.stdout.receive_some(1 << 20):
            sink(chunk)
            total += len(chunk)
        return total


@asynccontextmanager
async def run_peer(binary: Path, *args: str) -> AsyncIterator[Peer]:
    proc = await trio.lowlevel.open_process(
        [str(binary), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield Peer(proc)
        with trio.fail_after(60):
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                await trio.aclose_forcefully(pipe)


def random_blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def free_udp_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# ---------------------------------------------------------------------------
# stream mode
# ---------------------------------------------------------------------------


async def test_stream_ours_to_libudt_64mib(udtpeer: Path) -> None:
    data = random_blob(SIZE, 1)
    digest = hashlib.sha256()
    async with run_peer(udtpeer, "listen", "0", "--recv", str(SIZE)) as peer, conduit.open_pool() as pool:
        port = int((await peer.line()).split()[1])
        conn = await pool.connect(f"udt://127.0.0.1:{port}")
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                await conn.send_all(data)
                await conn.aclose()

            nursery.start_soon(send)
            got = await peer.stdout_into(digest.update)
        report = await peer.report()
    assert got == SIZE == report["bytes"]
    assert digest.digest() == hashlib.sha256(data).digest()
    assert peer.proc.returncode == 0


async def test_stream_libudt_to_ours_64mib(udtpeer: Path) -> None:
    data = random_blob(SIZE, 2)
    digest = hashlib.sha256()
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")
        port = str(listener.address.port)
        async with run_peer(udtpeer, "connect", "127.0.0.1", port, "--send", str(SIZE)) as peer:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(peer.feed, data)
                conn = await listener.accept()
                got = 0
                while chunk := await conn.receive_some():
                    digest.update(chunk)
                    got += len(chunk)
            assert "connected" in await peer.rest_of_stderr()
        assert peer.proc.returncode == 0
    assert got == SIZE
    assert digest.digest() == hashlib.sha256(data).digest()
    # libudt closed after its data was acknowledged: we saw its shutdown as the end of the stream
    assert conn.session.close_reason is not None


# ---------------------------------------------------------------------------
# message mode
# ---------------------------------------------------------------------------


def split_messages(data: bytes, seed: int, largest: int = 300_000) -> list[bytes]:
    rng = random.Random(seed)
    out, off = [], 0
    while off < len(data):
        n = rng.randint(1, largest)
        out.append(data[off : off + n])
        off += n
    return out


async def test_message_ours_to_libudt_64mib(udtpeer: Path) -> None:
    data = random_blob(SIZE, 3)
    msgs = split_messages(data, 3)
    received = bytearray()
    async with (
        run_peer(udtpeer, "listen", "0", "--mode", "message", "--recv", str(SIZE)) as peer,
        conduit.open_pool() as pool,
    ):
        port = int((await peer.line()).split()[1])
        conn = await pool.connect(f"udt://127.0.0.1:{port}?mode=message")
        async with trio.open_nursery() as nursery:

            async def send() -> None:
                for m in msgs:
                    await conn.send(m)
                await conn.aclose()

            nursery.start_soon(send)
            await peer.stdout_into(received.extend)
    # libudt wrote each message as a 4-byte length and its bytes: boundaries kept
    got, off = [], 0
    while off < len(received):
        (n,) = struct.unpack_from("!I", received, off)
        got.append(bytes(received[off + 4 : off + 4 + n]))
        off += 4 + n
    assert [len(m) for m in got] == [len(m) for m in msgs]
    assert hashlib.sha256(b"".join(got)).digest() == hashlib.sha256(data).digest()


async def test_message_libudt_to_ours_64mib(udtpeer: Path) -> None:
    data = random_blob(SIZE, 4)
    size = 100_000
    digest = hashlib.sha256()
    lengths = []
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0?mode=message")
        args = ("connect", "127.0.0.1", str(listener.address.port), "--mode", "message")
        async with (
            run_peer(udtpeer, *args, "--msg", str(size), "--send", str(SIZE)) as peer,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(peer.feed, data)
            conn = await listener.accept()
            with pytest.raises(trio.EndOfChannel):
                while True:
                    msg = await conn.receive()
                    lengths.append(len(msg))
                    digest.update(msg)
        assert peer.proc.returncode == 0
    expected = [size] * (SIZE // size) + ([SIZE % size] if SIZE % size else [])
    assert lengths == expected
    assert digest.digest() == hashlib.sha256(data).digest()


# ---------------------------------------------------------------------------
# rendezvous and rejection
# ---------------------------------------------------------------------------


async def test_rendezvous_with_libudt_both_ways(udtpeer: Path) -> None:
    ours, theirs = free_udp_ports(2)
    up, down = random_blob(4 << 20, 5), random_blob(4 << 20, 6)
    args = (
        "rendezvous",
        str(theirs),
        "127.0.0.1",
        str(ours),
        "--recv",
        str(len(up)),
        "--send",
        str(len(down)),
    )
    received = bytearray()
    async with conduit.open_pool() as pool, run_peer(udtpeer, *args) as peer, trio.open_nursery() as nursery:
        nursery.start_soon(peer.feed, down)
        conn = await pool.connect(f"udt://127.0.0.1:{theirs}?rendezvous=1", local=f"127.0.0.1:{ours}")
        assert conn.session.role == "rendezvous"

        async def read_stdout() -> None:
            await peer.stdout_into(received.extend)

        nursery.start_soon(read_stdout)
        await conn.send_all(up)
        got = bytearray()
        while len(got) < len(down):
            got += await conn.receive_some()
        await conn.aclose()
    assert bytes(received) == up
    assert bytes(got) == down
    assert peer.proc.returncode == 0
    # no data was lost to the peer's not-yet-connected socket (which drops what it gets too early)
    assert conn.stats.pkt_retrans == 0
    assert conn.stats.us_pkt_snd_period < 1000


async def test_libudt_rejected_by_our_listener_on_mode_mismatch(udtpeer: Path) -> None:
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0")  # stream
        args = (
            "connect",
            "127.0.0.1",
            str(listener.address.port),
            "--mode",
            "message",
            "--send",
            "1",
            "--gen",
        )
        async with run_peer(udtpeer, *args) as peer:
            err = await peer.rest_of_stderr()
        assert peer.proc.returncode == 2
        assert "connect" in err
        assert "rejected" in err.lower()
        assert listener.inner.multiplexer.endpoint.state_size == 0


async def test_our_client_rejected_by_libudt_on_mode_mismatch(udtpeer: Path) -> None:
    async with run_peer(udtpeer, "listen", "0", "--recv", "1") as peer, conduit.open_pool() as pool:
        port = int((await peer.line()).split()[1])
        with pytest.raises(conduit.ConnectionRefused):
            await pool.connect(f"udt://127.0.0.1:{port}?mode=message")
        peer.proc.kill()


async def test_libudt_repeated_requests_and_smaller_mss(udtpeer: Path) -> None:
    data = os.urandom(1 << 20)
    async with conduit.open_pool() as pool:
        listener = await pool.listen("udt://127.0.0.1:0?mss=1400")
        args = ("connect", "127.0.0.1", str(listener.address.port), "--mss", "1500", "--send", str(len(data)))
        async with run_peer(udtpeer, *args) as peer, trio.open_nursery() as nursery:
            nursery.start_soon(peer.feed, data)
            conn = await listener.accept()
            got = bytearray()
            while chunk := await conn.receive_some():
                got += chunk
    assert got == data
    assert conn.stats.mss == 1400
