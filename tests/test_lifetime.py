"""Connection lifetime: ``idle_timeout`` on serve / connect / spawn (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from typing import Any

import pytest
import trio

import trio_conduit as conduit

from .conftest import NetNS, _make_netns


async def _silent(conn: Any) -> None:
    await trio.sleep_forever()


async def test_serve_idle_timeout_ends_a_silent_connections_handler() -> None:
    ended = trio.Event()
    saw: list[bytes] = []

    async def handler(conn: Any) -> None:
        try:
            saw.append(await conn.receive_some())  # the peer says something once, then nothing
            await conn.receive_some()
        finally:
            ended.set()

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        addr = await nursery.start(partial(pool.serve, "tcp://127.0.0.1:0", handler, idle_timeout=0.3))
        client = await pool.connect(f"tcp://127.0.0.1:{addr.port}")
        await client.send_all(b"hello")
        with trio.fail_after(30):
            await ended.wait()
            assert saw == [b"hello"]
            assert await client.receive_some() == b""  # the server closed it: a clean EOF here
        nursery.cancel_scope.cancel()


async def test_activity_keeps_an_idle_timeout_from_firing() -> None:
    received = 0
    ended = trio.Event()

    async def handler(conn: Any) -> None:
        nonlocal received
        try:
            while data := await conn.receive_some():
                received += len(data)
        finally:
            ended.set()

    timeout = 1.0
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        addr = await nursery.start(partial(pool.serve, "tcp://127.0.0.1:0", handler, idle_timeout=timeout))
        client = await pool.connect(f"tcp://127.0.0.1:{addr.port}")
        for _ in range(12):  # 2.4 s in all, each pause a fifth of the timeout
            await client.send_all(b"x")
            await trio.sleep(timeout / 5)
        assert not ended.is_set()
        await client.aclose()
        with trio.fail_after(30):
            await ended.wait()
        assert received == 12
        nursery.cancel_scope.cancel()


async def test_connect_idle_timeout_closes_the_connection() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _silent)
        conn = await pool.connect(f"tcp://127.0.0.1:{addr.port}", idle_timeout=0.2)
        with trio.fail_after(30), pytest.raises(trio.ClosedResourceError):
            await conn.receive_some()
        assert conn not in pool.connections
        nursery.cancel_scope.cancel()


async def test_spawn_idle_timeout_cancels_the_handler() -> None:
    ended = trio.Event()

    async def handler(conn: Any) -> None:
        try:
            await conn.receive_some()
        finally:
            ended.set()

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        addr = await nursery.start(pool.serve, "tcp://127.0.0.1:0", _silent)
        pool.spawn(f"tcp://127.0.0.1:{addr.port}", handler, idle_timeout=0.2)
        with trio.fail_after(30):
            await ended.wait()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("bad", ["1", -1, 0, float("inf"), True])
async def test_bad_idle_timeouts_are_refused_at_the_call(bad: object) -> None:
    async with conduit.open_pool() as pool:
        with pytest.raises((TypeError, ValueError), match="idle_timeout"):
            await pool.serve("tcp://127.0.0.1:0", _silent, idle_timeout=bad)  # type: ignore[arg-type]
        with pytest.raises((TypeError, ValueError), match="idle_timeout"):
            await pool.connect("tcp://127.0.0.1:9", idle_timeout=bad)  # type: ignore[arg-type]
        with pytest.raises((TypeError, ValueError), match="idle_timeout"):
            pool.spawn("tcp://127.0.0.1:9", _silent, idle_timeout=bad)


# ---------------------------------------------------------------------------
# a peer that vanishes: two namespaces, a veth link, and the link cut
# ---------------------------------------------------------------------------

_SERVER = r"""
import json, sys, trio, trio_conduit as conduit
from functools import partial

async def main():
    ended = trio.Event()
    result = {"data": False}

    async def handler(conn):
        try:
            while await conn.receive_some():
                result["data"] = True
                print("data", flush=True)
        finally:
            ended.set()

    async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
        serve = partial(pool.serve, "tcp://10.77.0.1:7000", handler, idle_timeout=float(sys.argv[1]))
        await nursery.start(serve)
        print("ready", flush=True)
        with trio.move_on_after(float(sys.argv[2])):
            await ended.wait()
        result["handler_ended"] = ended.is_set()
        nursery.cancel_scope.cancel()
    print(json.dumps(result), flush=True)

trio.run(main)
"""

_CLIENT = r"""
import socket, time
s = socket.create_connection(("10.77.0.1", 7000))
s.sendall(b"hello")
print("sent", flush=True)
time.sleep(300)
"""


def _line(proc: subprocess.Popen[str], want: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line == want, (
        f"expected {want!r}, got {line!r}; stderr: {proc.stderr.read() if proc.stderr else ''}"
    )


def test_idle_timeout_ends_the_handler_of_a_peer_that_vanished(netns: NetNS) -> None:
    """Server and client in two namespaces joined by a veth pair; after one exchange the link
    is cut (no FIN, no RST ever arrives): the handler ends by ``idle_timeout``."""
    other_gen = _make_netns()
    other = next(other_gen)
    server = client = None
    try:
        subprocess.run(
            ["ip", "link", "add", "ida", "netns", netns.name, "type", "veth", "peer", "name", "idb",
             "netns", other.name],
            check=True, capture_output=True,
        )  # fmt: skip
        netns.ip("addr", "add", "10.77.0.1/24", "dev", "ida")
        other.ip("addr", "add", "10.77.0.2/24", "dev", "idb")
        netns.ip("link", "set", "ida", "up")
        other.ip("link", "set", "idb", "up")
        idle, limit = 2.0, 60.0
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns.name, sys.executable, "-c", _SERVER, str(idle), str(limit)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _line(server, "ready")
        client = subprocess.Popen(
            ["ip", "netns", "exec", other.name, sys.executable, "-c", _CLIENT],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        _line(client, "sent")
        _line(server, "data")
        cut = time.monotonic()
        other.ip("link", "set", "idb", "down")  # the peer vanishes: nothing more crosses the link
        netns.ip("link", "set", "ida", "down")
        out, err = server.communicate(timeout=limit + 30)
        took = time.monotonic() - cut
        result = json.loads(out.strip().splitlines()[-1])
        assert result["data"] is True
        assert result["handler_ended"] is True, f"the handler still ran after {took:.1f} s; {err}"
        print(f"handler ended {took:.2f} s after the link was cut (idle_timeout {idle:g} s)")
    finally:
        for proc in (client, server):
            if proc is not None:
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()  # reaped, its pipes closed
        next(other_gen, None)
