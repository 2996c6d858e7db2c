"""``conduit connect --proxy URL`` (repeatable) and ``conduit listen --socks5``.

``conduit listen --socks5`` runs as its own process; ``conduit connect`` and
ncat (``--proxy-type socks5 / socks4 / http``, a real client of each
protocol) go through it to an echo server in this process.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import trio_conduit as conduit

from ..conftest import free_tcp_port

CONDUIT = [sys.executable, "-m", "trio_conduit"]


async def echo(conn: Any) -> None:
    while data := await conn.receive_some():
        await conn.send_all(data)
    await conn.send_eof()


@asynccontextmanager
async def socks5_server(*extra: str) -> AsyncIterator[str]:
    """``conduit listen --socks5 tcp://127.0.0.1:0``: its host:port, from the announce line."""
    proc = await trio.lowlevel.open_process(
        [*CONDUIT, "listen", "--socks5", *extra, "tcp://127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        seen = b""
        with trio.fail_after(15):
            while b"\n" not in seen:
                data = await proc.stderr.receive_some()
                assert data, f"conduit listen --socks5 ended: {seen!r}"
                seen += data
        line = seen.split(b"\n")[0].decode()
        assert line.startswith("conduit: listening on tcp://127.0.0.1:"), line
        yield line.rsplit("//", 1)[1]
    finally:
        with trio.CancelScope(shield=True):
            proc.terminate()
            await proc.wait()
            if proc.stderr is not None:
                await proc.stderr.aclose()


async def run(argv: list[str], data: bytes) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(argv, stdin=data, capture_stdout=True, capture_stderr=True, check=False)


async def test_connect_through_a_chain_to_listen_socks5() -> None:
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery, socks5_server() as proxy:
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        result = await run(
            [*CONDUIT, "connect", "--proxy", f"socks5://{proxy}", "--proxy", f"http://{proxy}", str(target)],
            b"through two hops\n",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"through two hops\n"

        closed = free_tcp_port()
        result = await run(
            [
                *CONDUIT,
                "connect",
                "--timeout",
                "5",
                "--proxy",
                f"socks5://{proxy}",
                f"tcp://127.0.0.1:{closed}",
            ],
            b"",
        )
        assert result.returncode == 1
        line = result.stderr.decode().strip()
        assert line.startswith(f"conduit: proxy hop 1 (socks5://{proxy}): SOCKS5 reply 5: connection refused")
        assert len(line.splitlines()) == 1

        result = await run([*CONDUIT, "connect", "--proxy", "gopher://x:1", str(target)], b"")
        assert result.returncode == 2  # a usage error, as a bad URL is
        assert "unknown proxy scheme 'gopher'" in result.stderr.decode()
        nursery.cancel_scope.cancel()


NCAT = shutil.which("ncat")


@pytest.mark.interop
@pytest.mark.skipif(NCAT is None, reason="ncat is not installed (the nox tests session installs it)")
@pytest.mark.parametrize("proxy_type", ["socks5", "socks4", "http"])
async def test_ncat_as_a_client_of_listen_socks5(proxy_type: str) -> None:
    """A real client of each protocol against our server: ncat --proxy-type socks5 / socks4 / http."""
    assert NCAT is not None
    async with conduit.open_pool() as pool, trio.open_nursery() as nursery, socks5_server() as proxy:
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        payload = bytes(range(256)) * 64
        result = await run(
            [NCAT, "--proxy", proxy, "--proxy-type", proxy_type, "127.0.0.1", str(target.port)], payload
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == payload
        nursery.cancel_scope.cancel()


async def test_listen_socks5_takes_max_conns() -> None:
    async with (
        conduit.open_pool() as pool,
        trio.open_nursery() as nursery,
        socks5_server("--max-conns", "2") as proxy,
    ):
        target = await nursery.start(pool.serve, "tcp://127.0.0.1:0", echo)
        conn = await pool.connect(str(target), proxies=[f"socks4a://{proxy}"], timeout=10)
        async with conn:
            await conn.send_all(b"ok")
            assert await conn.receive_some() == b"ok"
        nursery.cancel_scope.cancel()
