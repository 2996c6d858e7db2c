"""``dtls://``: client and server over real UDP sockets on loopback, hooks, cookies, errors, leaks."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import random
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from OpenSSL import SSL

import trio_conduit as conduit
from trio_conduit.testing import impairment_relay
from trio_conduit.tls import (
    Certificate,
    DTLSConnection,
    DTLSListener,
    TLSError,
    TLSHandshake,
    TLSHandshakeTimeout,
    TLSVerifyError,
)
from trio_conduit.tls._dtls import STALLED
from trio_conduit.tls._dtls_config import build_dtls_context
from trio_conduit.tls._dtls_engine import DTLSEngine

from ..conftest import assert_no_fd_leak, open_fds, task_count
from .conftest import PKI


async def echo(conn: Any) -> None:
    async for message in conn:
        await conn.send(message)


def server_url(pki: PKI, **query: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"dtls://127.0.0.1:0?certfile={pki.server.certfile}&keyfile={pki.server.keyfile}{extra}"


def client_url(pki: PKI, port: int, host: str = "127.0.0.1", **query: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"dtls://{host}:{port}?cafile={pki.cafile}{extra}"


@asynccontextmanager
async def serving(
    pool: conduit.Pool, url: str, handler: Callable[[Any], Awaitable[object]] = echo, **kw: Any
) -> AsyncIterator[conduit.Address]:
    async with trio.open_nursery() as nursery:
        address = await nursery.start(
            lambda task_status: pool.serve(url, handler, task_status=task_status, **kw)
        )
        yield address
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# a channel: round trips, facts, sizes, close_notify
# ---------------------------------------------------------------------------


async def test_round_trip_and_facts(pki: PKI) -> None:
    seen: list[Any] = []

    async def handler(conn: Any) -> None:
        seen.append(conn.info)
        await echo(conn)

    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki, alpn="coap,x"), handler) as addr,
        await pool.connect(client_url(pki, addr.port, host="localhost", alpn="x")) as conn,
    ):
        assert isinstance(conn, DTLSConnection)
        for message in (b"one", b"two" * 100, b"\0"):
            await conn.send(message)
            assert await conn.receive() == message
        tls = conn.info.tls
        assert tls is not None
        assert conn.info.transport == "dtls"
        assert tls.version == "DTLSv1.2"
        assert tls.alpn == "x"
        assert tls.server_name == "localhost"
        assert tls.session_reused is False
        assert tls.peer_certificate is not None
        assert tls.peer_certificate.fingerprint  # a cryptography object
        assert tls.peer_chain[0] == tls.peer_certificate
        assert tls.handshake_seconds > 0
        local = conn.info.local
    (server,) = seen
    assert server.tls.side == "server"
    assert server.tls.server_name == "localhost"
    assert server.tls.alpn == "x"
    assert server.remote == local


async def test_many_peers_on_one_socket(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, server_url(pki)) as addr:

        async def one(i: int, results: dict[int, bytes]) -> None:
            async with await pool.connect(client_url(pki, addr.port)) as conn:
                await conn.send(b"peer %d" % i)
                results[i] = await conn.receive()

        results: dict[int, bytes] = {}
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i, results)
    assert results == {i: b"peer %d" % i for i in range(8)}


async def test_message_too_large_leaves_the_association_usable(pki: PKI) -> None:
    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki, mtu=512)) as addr,
        await pool.connect(client_url(pki, addr.port, mtu=512)) as conn,
    ):
        assert isinstance(conn, DTLSConnection)
        limit = conn.max_message_size
        assert 400 < limit < 512
        with pytest.raises(conduit.MessageTooLarge):
            await conn.send(b"x" * (limit + 1))
        await conn.send(b"y" * limit)
        assert await conn.receive() == b"y" * limit


async def test_close_notify_ends_the_peers_channel(pki: PKI) -> None:
    ended = trio.Event()
    received: list[bytes] = []

    async def handler(conn: Any) -> None:
        with pytest.raises(trio.EndOfChannel):
            while True:
                received.append(await conn.receive())
        ended.set()

    async with conduit.open_pool() as pool, serving(pool, server_url(pki), handler) as addr:
        conn = await pool.connect(client_url(pki, addr.port))
        await conn.send(b"last words")
        await conn.aclose()
        with trio.fail_after(10):
            await ended.wait()
        with pytest.raises(trio.ClosedResourceError):
            await conn.send(b"after")
    assert received == [b"last words"]


async def test_server_close_notify_ends_the_clients_channel(pki: PKI) -> None:
    async def handler(conn: Any) -> None:
        await conn.send(await conn.receive())  # then the pool closes it: close_notify

    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki), handler) as addr,
        await pool.connect(client_url(pki, addr.port)) as conn,
    ):
        await conn.send(b"bye")
        assert await conn.receive() == b"bye"
        with pytest.raises(trio.EndOfChannel):
            await conn.receive()


async def test_channel_conformance(pki: PKI) -> None:
    """What a ``trio.abc.Channel`` must do: busy guards, closed errors, aclose idempotent, iteration."""
    async with conduit.open_pool() as pool, serving(pool, server_url(pki)) as addr:
        conn = await pool.connect(client_url(pki, addr.port))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await conn.receive()
            await conn.send(b"wake")
        await conn.aclose()
        await conn.aclose()  # twice is fine
        with pytest.raises(trio.ClosedResourceError):
            await conn.receive()
        with pytest.raises(trio.ClosedResourceError):
            await conn.send(b"x")
        # Cancelled receive leaves it usable.
        conn = await pool.connect(client_url(pki, addr.port))
        with trio.move_on_after(0.05):
            await conn.receive()
        await conn.send(b"still")
        assert await conn.receive() == b"still"
        await conn.aclose()


# ---------------------------------------------------------------------------
# verification
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "client_query", "code", "words"),
    [
        ("stranger", {}, 20, "unable to get local issuer certificate"),
        ("expired", {}, 10, "certificate has expired"),
        ("server", {"server_hostname": "wrong.test"}, 62, "hostname mismatch"),
    ],
)
async def test_verification_failures_say_why(
    pki: PKI, server: str, client_query: dict[str, str], code: int, words: str
) -> None:
    pair = getattr(pki, server)
    url = f"dtls://127.0.0.1:0?certfile={pair.certfile}&keyfile={pair.keyfile}"
    async with conduit.open_pool() as pool, serving(pool, url) as addr:
        with pytest.raises(TLSVerifyError) as caught:
            await pool.connect(client_url(pki, addr.port, **client_query))
    assert caught.value.verify_code == code
    assert words in str(caught.value)


async def test_verification_off_and_pins(pki: PKI) -> None:
    good = pki.server.cert.sha256.replace(":", "")
    async with conduit.open_pool() as pool, serving(pool, server_url(pki)) as addr:
        port = addr.port
        async with await pool.connect(f"dtls://127.0.0.1:{port}?verify=0&pin_sha256={good}") as conn:
            await conn.send(b"pinned")
            assert await conn.receive() == b"pinned"
        with pytest.raises(TLSVerifyError) as caught:
            await pool.connect(f"dtls://127.0.0.1:{port}?verify=0&pin_sha256={'0' * 64}")
        assert caught.value.reason == "PIN_MISMATCH"


async def test_mutual_auth(pki: PKI) -> None:
    async def handler(conn: Any) -> None:
        leaf = conn.info.tls.peer_certificate
        await conn.send(leaf.subject.rfc4514_string().encode())

    url = server_url(pki, client_auth="required", cafile=pki.cafile)
    async with conduit.open_pool() as pool, serving(pool, url, handler) as addr:
        query = {"certfile": pki.client.certfile, "keyfile": pki.client.keyfile}
        async with await pool.connect(client_url(pki, addr.port, **query)) as conn:
            assert b"alice" in await conn.receive()
        with pytest.raises(TLSError):
            async with await pool.connect(client_url(pki, addr.port)) as conn:
                await conn.receive()  # the server refused us during or right after the handshake


async def test_session_resumption(pki: PKI) -> None:
    async with conduit.open_pool() as pool, serving(pool, server_url(pki)) as addr:
        reused = []
        for _ in range(2):
            async with await pool.connect(client_url(pki, addr.port)) as conn:
                assert conn.info.tls is not None
                reused.append(conn.info.tls.session_reused)
                await conn.send(b"x")
                await conn.receive()
    assert reused == [False, True]


async def test_handshake_timeout_against_a_silent_peer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        async with conduit.open_pool() as pool:
            with pytest.raises(TLSHandshakeTimeout):
                await pool.connect(f"dtls://127.0.0.1:{port}?verify=0&handshake_timeout=1.5")
        assert silent.recv(4096)[0] == 22  # it did get our hello (and retransmissions)


# ---------------------------------------------------------------------------
# the server: cookies, spoofing, §4.2.8, hooks, errors
# ---------------------------------------------------------------------------


def _client_hello(pki: PKI, mtu: int = 1472) -> tuple[DTLSEngine, list[bytes]]:
    ssl_conn = SSL.Connection(build_dtls_context(pki.client_config(verify=False), "client"))
    ssl_conn.set_connect_state()
    engine = DTLSEngine(ssl_conn, now=0.0, mtu=mtu)
    engine.start(0.0)
    return engine, engine.datagrams_to_send()


async def hellos_get_cookies(family: int, sources: list[Any], server: Any, hello: list[bytes]) -> None:
    """A "spoofer" bound at each of ``sources`` sends ``hello`` to ``server``; each gets a
    HelloVerifyRequest (and ignores it)."""
    sockets = []
    try:
        for source in sources:
            s = trio.socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(s)
            await s.bind(source)
            for datagram in hello:
                await s.sendto(datagram, server)
        for s in sockets:
            with trio.fail_after(10):
                answer = await s.recv(4096)
            assert answer[0] == 22
            assert answer[13] == 3  # hello_verify_request
    finally:
        for s in sockets:
            s.close()


async def test_spoofed_hellos_allocate_nothing(pki: PKI) -> None:
    """Hellos from 40 source addresses that never answer the cookie: no association, no state."""
    async with conduit.open_pool() as pool:
        listener = await pool.listen(server_url(pki))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        port = listener.address.port
        _, hello = _client_hello(pki)
        await trio.testing.wait_all_tasks_blocked()  # (the udp listener's reader, its socket taken, ends)
        tasks_before = task_count()
        sources = [(f"127.0.0.{2 + i % 20}", 0) for i in range(40)]
        await hellos_get_cookies(socket.AF_INET, sources, ("127.0.0.1", port), hello)
        assert inner.cookies_sent == 40
        assert inner.associations == 0
        assert inner.reassembling == 0
        assert task_count() == tasks_before
        await listener.aclose()


async def test_access_rules_drop_denied_hellos_before_the_cookie(pki: PKI) -> None:
    """``allow=`` on ``dtls://``: a refused peer's hello gets no cookie and costs nothing
    (the gate travels with the socket the DTLS listener takes over); an admitted one gets
    its cookie and its association."""
    async with conduit.open_pool() as pool:
        listener = await pool.listen(server_url(pki), allow="127.0.0.1")
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        port = listener.address.port
        _, hello = _client_hello(pki)
        for source in ("127.0.0.2", "127.0.0.3"):
            with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                await s.bind((source, 0))
                for datagram in hello:
                    await s.sendto(datagram, ("127.0.0.1", port))
                with trio.move_on_after(0.5) as waited:
                    await s.recv(4096)
                assert waited.cancelled_caught, f"{source} was answered"
        assert listener.denied == 2
        assert inner.cookies_sent == 0
        await hellos_get_cookies(socket.AF_INET, [("127.0.0.1", 0)], ("127.0.0.1", port), hello)
        assert inner.cookies_sent == 1

        async with trio.open_nursery() as nursery:

            async def echo_one() -> None:
                conn = await listener.accept()
                await conn.send(await conn.receive())

            nursery.start_soon(echo_one)
            with trio.fail_after(10):
                client = await pool.connect(client_url(pki, port))
                await client.send(b"admitted")
                assert await client.receive() == b"admitted"
            await client.aclose()
        assert listener.denied == 2


async def test_fragmented_hello_is_reassembled(pki: PKI) -> None:
    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki)) as addr,
        await pool.connect(client_url(pki, addr.port, mtu=256)) as conn,
    ):
        await conn.send(b"small path")
        assert await conn.receive() == b"small path"


async def raw_handshake(sock: trio.socket.SocketType, engine: DTLSEngine, port: int) -> None:
    """Drive a client engine over a plain UDP socket until its handshake is done."""
    with trio.fail_after(20):
        while not engine.handshake_done:
            for datagram in engine.datagrams_to_send():
                await sock.sendto(datagram, ("127.0.0.1", port))
            deadline = engine.next_deadline()
            with trio.move_on_at(deadline if deadline is not None else trio.current_time() + 1):
                engine.receive_datagram(await sock.recv(65536), trio.current_time())
                continue
            engine.handle_timeout(trio.current_time())
        for datagram in engine.datagrams_to_send():
            await sock.sendto(datagram, ("127.0.0.1", port))


async def test_a_cookieless_hello_does_not_disturb_an_association(pki: PKI) -> None:
    """RFC 6347 §4.2.8: a (spoofed) hello from a live peer's address, without a cookie, leaves
    the association alone and is answered statelessly."""
    async with conduit.open_pool() as pool:
        listener = await pool.listen(server_url(pki))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        port = listener.address.port
        context = build_dtls_context(pki.client_config(verify=False), "client")
        engine = DTLSEngine(SSL.Connection(context), now=trio.current_time())
        engine.ssl.set_connect_state()
        engine.start(trio.current_time())
        with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.1", 0))
            async with trio.open_nursery() as nursery:
                accepted: list[Any] = []

                async def accept() -> None:
                    accepted.append(await listener.accept())

                nursery.start_soon(accept)
                await raw_handshake(sock, engine, port)
            (server_side,) = accepted
            assert inner.associations == 1
            cookies = inner.cookies_sent
            _, hello = _client_hello(pki)
            for datagram in hello:  # a new, cookieless hello from the same address
                await sock.sendto(datagram, ("127.0.0.1", port))
            with trio.fail_after(10):
                answer = await sock.recv(65536)
            assert answer[13] == 3  # a HelloVerifyRequest, made from no state
            assert inner.cookies_sent == cookies + 1
            engine.send(b"still here")
            for datagram in engine.datagrams_to_send():
                await sock.sendto(datagram, ("127.0.0.1", port))
            with trio.fail_after(10):
                assert await server_side.receive() == b"still here"
            assert inner.associations == 1
            await server_side.aclose()
        await listener.aclose()


class SlowName:
    """An async servername hook that holds the handshake for ``slow.test`` until released."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.waiting = trio.Event()
        self.names: list[str] = []

    @conduit.hookimpl
    async def conduit_tls_servername(self, handshake: TLSHandshake, server_name: str) -> None:
        self.names.append(server_name)
        if server_name == "slow.test":
            self.waiting.set()
            await self.release.wait()


async def test_an_async_servername_hook_pauses_only_its_own_handshake(pki: PKI) -> None:
    hook = SlowName()
    async with conduit.open_pool() as pool, serving(pool, server_url(pki), plugins=[hook]) as addr:
        slow_done = trio.Event()

        async def slow_named() -> None:
            async with await pool.connect(
                f"dtls://127.0.0.1:{addr.port}?verify=0&server_hostname=slow.test"
            ) as conn:
                await conn.send(b"slow")
                assert await conn.receive() == b"slow"
            slow_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow_named)
            await hook.waiting.wait()
            # While slow.test's handshake waits in its hook, another completes.
            async with await pool.connect(client_url(pki, addr.port, server_hostname="b.test")) as conn:
                await conn.send(b"fast")
                assert await conn.receive() == b"fast"
            assert not slow_done.is_set()
            hook.release.set()
        assert slow_done.is_set()
        assert hook.names[:2] == ["slow.test", "b.test"]


class ByName:
    @conduit.hookimpl
    async def conduit_tls_certificate(self, handshake: TLSHandshake, server_name: str | None) -> Certificate:
        await trio.lowlevel.checkpoint()
        return self.cert

    def __init__(self, cert: Certificate) -> None:
        self.cert = cert


async def test_certificate_hook_chooses_the_certificate(pki: PKI) -> None:
    other = pki.issue("hooked", "hooked.test")
    url = "dtls://127.0.0.1:0"  # no certificate: the hook gives one
    async with (
        conduit.open_pool() as pool,
        serving(pool, url, plugins=[ByName(other.cert)]) as addr,
        await pool.connect(client_url(pki, addr.port, server_hostname="hooked.test")) as conn,
    ):
        assert conn.info.tls is not None
        assert conn.info.tls.peer_certificate == other.cert.leaf


async def test_a_handlers_error_is_logged_and_the_server_goes_on(
    pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def handler(conn: Any) -> None:
        nonlocal calls
        calls += 1
        message = await conn.receive()
        if message == b"boom":
            raise RuntimeError("handler failed on purpose")
        await conn.send(message)

    caplog.set_level(logging.WARNING)
    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki), handler) as addr,
        await pool.connect(client_url(pki, addr.port)) as conn,
    ):
        await conn.send(b"boom")
        with pytest.raises(trio.EndOfChannel):
            await conn.receive()  # the failed handler's association was closed (close_notify)
        async with await pool.connect(client_url(pki, addr.port)) as conn:
            await conn.send(b"fine")
            assert await conn.receive() == b"fine"
    assert calls == 2
    assert "handler failed on purpose" in caplog.text


# ---------------------------------------------------------------------------
# impairment and cancellation
# ---------------------------------------------------------------------------


def _records(datagram: bytes) -> list[tuple[int, int, int]]:
    """(content type, epoch, sequence number) of each DTLS record in a datagram."""
    found = []
    while len(datagram) >= _RECORD_HEADER.size:
        kind, _version, epoch, seq, length = _RECORD_HEADER.unpack_from(datagram)
        found.append((kind, epoch, int.from_bytes(seq, "big")))
        datagram = datagram[_RECORD_HEADER.size + length :]
    return found


_RECORD_HEADER = struct.Struct("!BHH6sH")


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_lossy_network_handshake_and_intact_messages(pki: PKI, seed: int) -> None:
    """Through a seeded relay that loses, duplicates and reorders: the handshake completes, and
    every application message whose datagram the network did not drop arrives, intact, once.

    DTLS does not retransmit application data, so a message whose datagram was dropped cannot
    arrive: the delivered messages are among those not dropped. The relay reports what it
    dropped; counting the application-data records in it (handshake records are retransmitted
    and do not count), exactly as many messages as were not dropped must arrive — all of them.
    """
    received: list[bytes] = []

    async def handler(conn: Any) -> None:
        async for message in conn:
            received.append(message)  # noqa: PERF401 - as they come (the close may be lost)

    async def answer_retransmissions(conn: Any) -> None:
        # The client's last flight may be lost: the server retransmits its own, and the
        # client answers it when it processes received datagrams, i.e. in receive().
        with contextlib.suppress(trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
            await conn.receive()

    sent = [b"%04d:" % i + bytes(random.Random(i).randbytes(200)) for i in range(60)]
    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki), handler) as addr,
        impairment_relay(addr.port, seed=seed, loss=0.2, dup=0.1, reorder=0.1, delay=0.002) as relay,
    ):
        with trio.fail_after(60):
            conn = await pool.connect(client_url(pki, relay.port, server_hostname="localhost"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_retransmissions, conn)
            for message in sent:
                await conn.send(message)
                await trio.sleep(0.002)
            await relay.stop()  # what is queued is delivered; nothing more goes through
            lost = [r for d in relay.drops["to_target"] for r in _records(d) if r[0] == 23]
            assert relay.drop_counts["to_target"] == len(relay.drops["to_target"])  # all kept
            expected = len(sent) - len(lost)
            with trio.fail_after(10):
                while len(received) < expected:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        await conn.aclose()
    assert 0 < len(lost) < len(sent)  # the seed dropped some messages, not all
    assert len(received) == expected  # every message not dropped arrived, none twice:
    assert len(set(received)) == len(received)  # (duplicates were dropped: replay protection)
    assert set(received) <= set(sent)  # and intact


async def test_cancellation_at_random_points_leaves_nothing(pki: PKI) -> None:
    before = open_fds()
    async with conduit.open_pool() as pool:
        listener = await pool.listen(server_url(pki, handshake_timeout=2))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        port = listener.address.port
        tasks = task_count()
        rng = random.Random(7)
        for _ in range(15):
            with trio.move_on_after(rng.uniform(0, 0.01)):
                conn = await pool.connect(client_url(pki, port))
                await conn.aclose()
        with trio.fail_after(10):
            while inner.associations:
                await trio.sleep(0.01)  # handshakes whose client vanished time out or finish
                # (finished ones wait for accept: take them)
                with trio.move_on_after(0.01):
                    c = await listener.accept()
                    await c.aclose()
        assert task_count() <= tasks + 1
        await listener.aclose()
    assert_no_fd_leak(before)


class HandshakeLedger:
    """Server-side handshakes: each one's connection when it starts and how often its ``close``
    hook fired; a ``servername`` hook that awaits a little, so cancellations land in hooks too."""

    def __init__(self, seed: int) -> None:
        self.started: dict[int, Any] = {}
        self.closed: dict[int, int] = {}
        self.rng = random.Random(seed)

    @conduit.hookimpl
    async def conduit_tls_start(self, handshake: TLSHandshake) -> None:
        if handshake.side == "server":
            self.started[handshake.conn.id] = handshake.conn

    @conduit.hookimpl
    async def conduit_tls_servername(self, handshake: TLSHandshake, server_name: str) -> None:
        if handshake.side == "server":
            await trio.sleep(self.rng.uniform(0, 0.004))

    @conduit.hookimpl
    async def conduit_tls_close(self, handshake: TLSHandshake, exc: BaseException | None) -> None:
        if handshake.side == "server":
            self.closed[handshake.conn.id] = self.closed.get(handshake.conn.id, 0) + 1

    async def assert_all_closed(self) -> None:
        assert self.started  # handshakes were in flight
        assert self.closed == dict.fromkeys(self.started, 1)  # each closed, once
        for conn in self.started.values():
            with pytest.raises(trio.ClosedResourceError):
                await conn.send(b"anyone there?")


async def _client_until_cancelled(pool: conduit.Pool, url: str) -> None:
    ended = (conduit.ConduitError, trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError)
    with contextlib.suppress(*ended):
        async with await pool.connect(url) as conn:
            await conn.send(b"ping")
            await conn.receive()
            await trio.sleep_forever()


@pytest.mark.parametrize("how", ["cancel serve()", "close the listener"])
async def test_cancelling_the_server_mid_handshake_leaves_nothing(pki: PKI, how: str) -> None:
    """Six clients handshake at once; the server is cancelled (its ``serve()``), or its listener
    closed, at a random moment: in a hook, waiting on a peer, queued for accept, in a handler.
    Every server-side association is closed (its ``close`` hook fired once, ``send`` refuses),
    the listener holds none, and no task or descriptor is left."""
    ledger = HandshakeLedger(seed=5)
    rng = random.Random(13)
    async with conduit.open_pool(plugins=[ledger]) as pool:
        await trio.testing.wait_all_tasks_blocked()
        tasks, before = task_count(), open_fds()
        for _ in range(30):
            url = server_url(pki, handshake_timeout=3)
            async with trio.open_nursery() as clients:
                async with trio.open_nursery() as server:
                    if how == "cancel serve()":
                        addr = await server.start(functools.partial(pool.serve, url, echo))
                        listener = None
                    else:
                        listener = await pool.listen(url)
                        addr = listener.address
                        server.start_soon(_accept_and_echo, listener)
                    for _ in range(6):
                        clients.start_soon(_client_until_cancelled, pool, client_url(pki, addr.port))
                    await trio.sleep(rng.uniform(0, 0.03))
                    inner = None
                    if listener is not None:
                        inner = listener.inner
                        assert isinstance(inner, DTLSListener)
                        await listener.aclose()  # (its accepted associations break: handlers end)
                    else:
                        server.cancel_scope.cancel()
                if inner is not None:
                    assert inner.associations == 0
                    assert inner.reassembling == 0
                clients.cancel_scope.cancel()
        await ledger.assert_all_closed()
        await trio.testing.wait_all_tasks_blocked()
        assert task_count() == tasks
        assert_no_fd_leak(before)


async def _accept_and_echo(listener: Any, idle: float = math.inf) -> None:
    """Accept and echo; a connection is closed once it has lived ``idle`` seconds (a vanished
    client's association lives until its owner closes it, as on any datagram listener)."""
    async with trio.open_nursery() as nursery:
        while True:
            try:
                conn = await listener.accept()
            except trio.ClosedResourceError:
                return
            nursery.start_soon(_echo_and_close, conn, idle)


async def _echo_and_close(conn: Any, idle: float) -> None:
    async with conn:
        broken = (trio.BrokenResourceError, trio.ClosedResourceError)
        with trio.move_on_after(idle), contextlib.suppress(*broken):
            await echo(conn)


async def test_cancelling_clients_mid_handshake_leaves_nothing(pki: PKI) -> None:
    """Eight clients at once, each cancelled at its own random moment, ten times over: the server's
    associations all end (finished ones are accepted and closed, the others time out), every
    server-side handshake is closed once, and neither side leaves a task or a descriptor."""
    ledger = HandshakeLedger(seed=9)
    rng = random.Random(17)
    async with conduit.open_pool(plugins=[ledger]) as pool:
        await trio.testing.wait_all_tasks_blocked()
        tasks, before = task_count(), open_fds()
        listener = await pool.listen(server_url(pki, handshake_timeout=1))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        async with trio.open_nursery() as server:
            server.start_soon(_accept_and_echo, listener, 2.0)
            for _ in range(10):
                async with trio.open_nursery() as clients:
                    for _ in range(8):

                        async def one(delay: float = rng.uniform(0, 0.03)) -> None:
                            with trio.move_on_after(delay):
                                await _client_until_cancelled(pool, client_url(pki, listener.address.port))

                        clients.start_soon(one)
            # The handshakes whose client vanished time out (1 s); accepted ones are closed (2 s).
            with trio.fail_after(15):
                while inner.associations:
                    await trio.sleep(0.05)
            await listener.aclose()
        await ledger.assert_all_closed()
        await trio.testing.wait_all_tasks_blocked()
        assert task_count() == tasks
        assert_no_fd_leak(before)


# ---------------------------------------------------------------------------
# the hook catalogue
# ---------------------------------------------------------------------------


async def test_every_tls_hook_fires_for_dtls_in_order(pki: PKI) -> None:
    from .test_hooks import SERVER_HOOKS, Recorder

    rec = Recorder()
    url = server_url(pki, client_auth="required", cafile=pki.cafile, alpn="coap")
    query = {"certfile": pki.client.certfile, "keyfile": pki.client.keyfile, "alpn": "coap"}
    async with (
        conduit.open_pool(plugins=[rec]) as pool,
        serving(pool, url) as addr,
        await pool.connect(client_url(pki, addr.port, host="localhost", **query)) as conn,
    ):
        await conn.send(b"hooked")
        assert await conn.receive() == b"hooked"
    with trio.fail_after(5):
        while ("server", "close") not in rec.calls:
            await trio.sleep(0.01)
    assert [name for side, name in rec.calls if side == "server"] == SERVER_HOOKS
    # (DTLS sessions are pyOpenSSL's, not ssl.SSLSession: the session hooks do not fire.)
    client_hooks = ["outbound_start", "verify_peer", "handshake_done", "close"]
    assert [name for side, name in rec.calls if side == "client"] == client_hooks
    assert [c.subject.rfc4514_string() for c in rec.chains["server"]] == ["CN=alice", "CN=conduit test CA"]
    assert rec.close_exc == [None, None]


async def test_mtu_falls_back_when_the_path_drops_large_datagrams(pki: PKI) -> None:
    """A path that drops every datagram over 700 bytes: the server's first flight (one
    1024-byte datagram) is lost twice, the MTU steps down to 576 and the handshake completes."""
    accepted: list[Any] = []

    async def handler(conn: Any) -> None:
        accepted.append(conn)
        await echo(conn)

    async with (
        conduit.open_pool() as pool,
        serving(pool, server_url(pki, mtu=1024), handler) as addr,
        trio.open_nursery() as nursery,
    ):
        relay_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await relay_sock.bind(("127.0.0.1", 0))
        dropped = 0

        async def relay_loop() -> None:
            nonlocal dropped
            client = None
            with relay_sock:
                while True:
                    data, source = await relay_sock.recvfrom(65536)
                    if len(data) > 700:
                        dropped += 1
                        continue
                    if source[1] == addr.port:
                        if client is not None:
                            await relay_sock.sendto(data, client)
                    else:
                        client = source
                        await relay_sock.sendto(data, ("127.0.0.1", addr.port))

        nursery.start_soon(relay_loop)
        port = relay_sock.getsockname()[1]
        with trio.fail_after(30):
            conn = await pool.connect(client_url(pki, port, host="localhost", mtu=1024))
            await conn.send(b"through a narrow path")
            assert await conn.receive() == b"through a narrow path"
        (server_side,) = accepted
        assert isinstance(server_side, DTLSConnection)
        assert server_side.mtu == 576
        assert dropped >= 2
        await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_max_handshakes_drops_hellos_beyond_it_until_one_finishes(pki: PKI) -> None:
    hook = SlowName()
    async with conduit.open_pool(plugins=[hook]) as pool:
        listener = await pool.listen(server_url(pki, max_handshakes=1))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        port = listener.address.port
        done: list[bytes] = []

        async def serve() -> None:
            while True:
                conn = await listener.accept()
                async with conn:
                    await conn.send(await conn.receive())

        async def client(name: str) -> None:
            url = f"dtls://127.0.0.1:{port}?verify=0&server_hostname={name}"
            async with await pool.connect(url) as conn:
                await conn.send(name.encode())
                done.append(await conn.receive())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(client, "slow.test")
            await hook.waiting.wait()  # the one handshake allowed is held in its hook
            nursery.start_soon(client, "b.test")
            with trio.fail_after(10):
                while inner.dropped == 0:  # b.test's hello with a cookie found no room
                    await trio.sleep(0.01)
            assert done == []
            hook.release.set()  # then b.test's retransmitted hello gets its turn
            with trio.fail_after(20):
                while len(done) < 2:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert sorted(done) == [b"b.test", b"slow.test"]
        await listener.aclose()


async def stalled_peer(pki: PKI, port: int) -> trio.socket.SocketType:
    """A real DTLS client (OpenSSL, through our engine) that passes the cookie exchange, so the
    server starts its handshake, and then never says another word. Its socket is returned open."""
    ssl = SSL.Connection(build_dtls_context(pki.client_config(verify=False), "client"))
    ssl.set_connect_state()
    ssl.set_app_data({})
    engine = DTLSEngine(ssl, now=0.0)
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await sock.connect(("127.0.0.1", port))
    engine.start(0.0)
    for datagram in engine.datagrams_to_send():  # the first hello
        await sock.send(datagram)
    engine.receive_datagram(await sock.recv(65536), 0.0)  # the HelloVerifyRequest
    for datagram in engine.datagrams_to_send():  # the hello with its cookie: then silence
        await sock.send(datagram)
    return sock


async def test_stalled_peers_give_their_slots_to_a_new_client(pki: PKI) -> None:
    """Peers that pass the cookie exchange and then stall hold every max_handshakes slot; a new
    client still gets through, in the slot of the one silent longest."""
    async with conduit.open_pool() as pool:
        listener = await pool.listen(server_url(pki, max_handshakes=2))
        inner = listener.inner
        assert isinstance(inner, DTLSListener)
        port = listener.address.port
        stalled = [await stalled_peer(pki, port) for _ in range(2)]
        try:
            with trio.fail_after(10):
                while inner.associations < 2:  # both handshakes started, both waiting on their peer
                    await trio.sleep(0.01)
            await trio.sleep(STALLED + 0.2)

            async def echo() -> None:
                conn = await listener.accept()
                async with conn:
                    await conn.send(await conn.receive())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(echo)
                with trio.fail_after(10):
                    conn = await pool.connect_channel(client_url(pki, port, server_hostname="localhost"))
                    await conn.send(b"still served")
                    assert await conn.receive() == b"still served"
                    await conn.aclose()
            assert inner.evicted == 1  # one slot was enough
        finally:
            for sock in stalled:
                sock.close()
        await listener.aclose()
