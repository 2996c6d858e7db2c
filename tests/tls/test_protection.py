"""Server protections: handshake timeout, bad first flights answered cleanly, cancellation leaks nothing."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_conduit as conduit
from trio_conduit.tls import TLSConfig, TLSError

from ..test_cancellation import assert_cancel_safe
from .conftest import PKI
from .test_hello import openssl_hello
from .test_tls import exchange, serving


def port_of(address: conduit.Address) -> int:
    assert address.port is not None
    return address.port


async def read_all(stream: trio.SocketStream, limit: float = 5) -> bytes:
    data = b""
    with trio.fail_after(limit):
        while chunk := await stream.receive_some():
            data += chunk
    return data


async def test_stalled_client_is_closed_and_others_go_on(pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_conduit")
    timeout = 0.5
    async with (
        conduit.open_pool() as pool,
        serving(pool, pki.server_url() + f"&handshake_timeout={timeout}") as addr,
    ):
        hello = openssl_hello("stall.test")
        half = await trio.open_tcp_stream("127.0.0.1", port_of(addr))
        silent = await trio.open_tcp_stream("127.0.0.1", port_of(addr))
        start = trio.current_time()
        await half.send_all(hello[: len(hello) // 2])
        # While those two stall, other clients are served at once.
        for _ in range(3):
            conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
            assert await exchange(conn) == b"ping"
            await conn.aclose()
        assert trio.current_time() - start < timeout
        assert await read_all(half) == b""  # closed by the server, without a word
        assert await read_all(silent) == b""
        elapsed = trio.current_time() - start
        assert timeout <= elapsed < timeout + 3
        await half.aclose()
        await silent.aclose()
    timeouts = [r for r in caplog.records if "did not finish within 0.5 s" in r.getMessage()]
    assert len(timeouts) == 2


@pytest.mark.parametrize(
    ("first_flight", "answer"),
    [
        # a handshake record whose ClientHello body is cut short: decode_error alert
        (b"\x16\x03\x01\x00\x08\x01\x00\x00\x04\x03\x03\x00\x00", b"\x15\x03\x03\x00\x02\x02\x32"),
        # an SSLv2-compatible hello: protocol_version alert
        (b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + bytes(37), b"\x15\x03\x03\x00\x02\x02\x46"),
        # a ClientHello announcing 1 MiB: refused from its header
        (b"\x16\x03\x01\x00\x04\x01\x10\x00\x00", b"\x15\x03\x03\x00\x02\x02\x32"),
        # plain HTTP to a TLS port: closed (an alert would be as foreign to it as silence)
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b""),
    ],
)
async def test_bad_first_flights(
    pki: PKI, first_flight: bytes, answer: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_conduit")
    handled: list[Any] = []

    async def handler(conn: Any) -> None:
        handled.append(conn)

    async with conduit.open_pool() as pool, serving(pool, pki.server_url(), handler) as addr:
        raw = await trio.open_tcp_stream("127.0.0.1", port_of(addr))
        await raw.send_all(first_flight)
        assert await read_all(raw) == answer
        await raw.aclose()
        # the listener is fine
        conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
        await conn.aclose()
    assert len(handled) == 1
    assert any("TLS handshake failed" in r.getMessage() for r in caplog.records)


async def test_fragmented_hello_from_a_real_client_is_replayed_exactly(pki: PKI) -> None:
    """Our reader reassembles a hello cut into tiny records and slow reads, then OpenSSL gets
    exactly those bytes (replayed) and completes the handshake."""
    import ssl

    from .test_hello import records

    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        ctx = ssl.create_default_context(cafile=pki.cafile)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        flight = outgoing.read()
        message = flight[5:]
        refragmented = records(message, [7, 1, 30, 2, 100])
        stream = await trio.open_tcp_stream("127.0.0.1", port_of(addr))
        for i in range(0, len(refragmented), 13):
            await stream.send_all(refragmented[i : i + 13])
            await trio.sleep(0.001)
        with trio.fail_after(5):
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    if out := outgoing.read():
                        await stream.send_all(out)
                    data = await stream.receive_some()
                    assert data, "server closed"
                    incoming.write(data)
            if out := outgoing.read():
                await stream.send_all(out)
        assert obj.version() == "TLSv1.3"
        obj.write(b"hi")
        await stream.send_all(outgoing.read())
        with trio.fail_after(5):
            while True:
                incoming.write(await stream.receive_some())
                try:
                    assert obj.read() == b"hi"
                    break
                except ssl.SSLWantReadError:
                    continue
        await stream.aclose()


def test_default_server_config_is_strict() -> None:
    config = TLSConfig()
    assert config.handshake_timeout == 30.0
    assert config.min_version.name == "TLSv1_2"
    assert not config.allow_renegotiation
    assert config.verify


# ---------------------------------------------------------------------------
# cancellation: no descriptors or tasks left behind
# ---------------------------------------------------------------------------


@asynccontextmanager
async def server_process(pki: PKI, mode: str) -> AsyncIterator[int]:
    """Our TLS echo server in another process: the test's own tasks and descriptors are the client's."""
    script = Path(__file__).with_name("_echo_server.py")
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script), mode, pki.server.certfile, pki.server.keyfile],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(20):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some()
                assert chunk, "the server process died"
                line += chunk
        yield int(line)
    finally:
        with trio.CancelScope(shield=True):
            assert proc.stdin is not None
            await proc.stdin.aclose()
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            assert proc.stdout is not None
            await proc.stdout.aclose()


async def test_cancel_client_handshake_mid_way(pki: PKI) -> None:
    async with server_process(pki, "tls") as port:

        async def scenario() -> None:
            async with conduit.open_pool() as pool:
                conn = await pool.connect(f"tls://127.0.0.1:{port}", cafile=pki.cafile, session_cache=False)
                await exchange(conn)
                await conn.aclose()

        await assert_cancel_safe(scenario, seed=3)


async def test_cancel_start_tls_mid_way(pki: PKI) -> None:
    async with server_process(pki, "starttls") as port:

        async def scenario() -> None:
            async with conduit.open_pool() as pool:
                plain = await pool.connect(f"tcp://127.0.0.1:{port}")
                tls = await plain.start_tls(tls=pki.client_config(session_cache=False))
                await exchange(tls)

        await assert_cancel_safe(scenario, seed=4)


async def test_cancel_server_handshakes_mid_way(pki: PKI) -> None:
    """The server side: a pool serving TLS is cancelled while handshakes are in flight."""

    async def scenario() -> None:
        async with conduit.open_pool() as pool, trio.open_nursery() as nursery:
            listener = await pool.listen(pki.server_url())
            port = listener.address.port

            async def client() -> None:
                try:
                    conn = await pool.connect(
                        f"tls://127.0.0.1:{port}", cafile=pki.cafile, session_cache=False
                    )
                    await conn.aclose()
                except TLSError:
                    pass

            nursery.start_soon(client)
            nursery.start_soon(client)
            for _ in range(2):
                conn = await listener.accept()
                await conn.aclose()
            await listener.aclose()

    await assert_cancel_safe(scenario, seed=5)


async def test_max_handshakes_full_of_stalled_hellos_makes_room_for_a_new_client(pki: PKI) -> None:
    """With ``max_handshakes=1`` a client that stalls mid-hello holds the only slot; the next
    client takes it (the stalled one, still waiting for its hello, is dropped) — with timeouts
    so long that nothing else could have freed the slot."""
    url = pki.server_url() + "&handshake_timeout=3600&hello_timeout=3600&max_handshakes=1"
    async with conduit.open_pool() as pool, serving(pool, url) as addr:
        hello = openssl_hello("stall.test")
        half = await trio.open_tcp_stream("127.0.0.1", port_of(addr))
        await half.send_all(hello[: len(hello) // 2])
        with trio.fail_after(30):
            conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
            assert await exchange(conn) == b"ping"
            assert await read_all(half) == b""  # the stalled one was closed
        await conn.aclose()
        await half.aclose()


async def test_a_handshake_past_its_hello_keeps_its_slot(pki: PKI) -> None:
    """Only handshakes still waiting for their ClientHello make room: one held by a hook after
    its hello keeps the only slot, and the next client waits until it is released."""
    release = trio.Event()
    entered = trio.Event()

    class Hold:
        @conduit.hookimpl
        async def conduit_tls_client_hello(self, handshake: object, hello: object) -> None:
            if not entered.is_set():
                entered.set()
                await release.wait()

    url = pki.server_url() + "&max_handshakes=1"
    async with (
        conduit.open_pool() as pool,
        serving(pool, url, plugins=[Hold()]) as addr,
        trio.open_nursery() as nursery,
    ):
        first_done = trio.Event()

        async def first() -> None:
            conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
            first_done.set()
            await conn.aclose()

        nursery.start_soon(first)
        await entered.wait()
        second_connected = trio.Event()

        async def second() -> None:
            conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile, session_cache=False)
            second_connected.set()
            assert first_done.is_set()  # it got the slot only once the first was released
            assert await exchange(conn) == b"ping"

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not second_connected.is_set()
        release.set()
        with trio.fail_after(30):
            await second_connected.wait()


async def test_slowloris_at_default_settings_does_not_starve_a_real_client(pki: PKI) -> None:
    """More stalled hellos than ``max_handshakes`` (each sent one byte of a ClientHello and
    stopped), all at the listener's defaults: a real client still completes its handshake —
    long before ``hello_timeout`` or ``handshake_timeout`` could free a slot."""
    defaults = TLSConfig()
    stalled_count = defaults.max_handshakes + 44  # 300
    assert defaults.hello_timeout is not None
    assert defaults.hello_timeout >= 10
    async with conduit.open_pool() as pool, serving(pool, pki.server_url()) as addr:
        stalled = []
        try:
            for _ in range(stalled_count):
                peer = await trio.open_tcp_stream("127.0.0.1", port_of(addr))
                await peer.send_all(b"\x16")  # one byte of a TLS handshake record, then nothing
                stalled.append(peer)
            await trio.sleep(0.2)  # the listener has taken them all in
            # well inside hello_timeout: only making room can let this client in
            with trio.fail_after(defaults.hello_timeout / 2):
                conn = await pool.connect(f"tls://127.0.0.1:{addr.port}", cafile=pki.cafile)
                assert await exchange(conn) == b"ping"
            await conn.aclose()
        finally:
            for peer in stalled:
                await peer.aclose()
